"""Through the real daemon: every input of a check is in its key, no client can multiply upstream work
or make another client's answer, and the daemon's tables and warnings stay bounded."""

import http.client
import json
import threading
import time

from tests.checks.conftest import haproxy_with_stats
from tests.e2e.support import threaded_upstream

# A second loopback address stands for another client (Linux answers all of 127.0.0.0/8 on lo).
OTHER_CLIENT = "127.0.0.2"


def request(port, path, headers=None, source="127.0.0.1", timeout=15.0, method="GET", body=None):
    """(status, body) of one request from ``source``."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout, source_address=(source, 0))
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        connection.close()


def test_a_request_with_another_host_header_cannot_change_the_cached_answer(hacheck_daemon):
    with threaded_upstream() as (port, upstream):
        upstream.only_host = "web.example"
        daemon = hacheck_daemon(config={"cache_time": 60})
        path = f"/http/web/{port}/health"
        assert request(daemon.port, path, {"Host": "web.example"})[0] == 200
        # An attacker's fresh check with its own Host: its own answer, not stored for the others.
        assert request(daemon.port, path, {"Host": "evil", "Pragma": "no-cache"})[0] == 503
        assert request(daemon.port, path, {"Host": "web.example"})[0] == 200
        assert request(daemon.port, path, {"Host": "evil"})[0] == 503
        assert request(daemon.port, path, {"Host": "web.example"})[0] == 200
        # Each Host was checked once: the rest came from the cache.
        assert sorted(headers["Host"] for _, headers in upstream.requests) == ["evil", "web.example"]


def test_haproxy_check_is_keyed_per_backend(hacheck_daemon, tmp_path):
    daemon = hacheck_daemon(config={"cache_time": 60})
    with haproxy_with_stats(tmp_path, "/") as stats_port:
        for _ in range(2):  # the second round comes from the cache: still one answer per backend
            assert request(daemon.port, f"/haproxy/web_up/{stats_port}") == (200, "web_up is UP")
            assert request(daemon.port, f"/haproxy/nosuch/{stats_port}") == (500, "nosuch is not found")
            assert request(daemon.port, f"/haproxy/web_down/{stats_port}/") == (500, "web_down is DOWN")


def test_haproxy_check_reads_the_stats_path_from_the_query(hacheck_daemon, tmp_path):
    daemon = hacheck_daemon()
    with haproxy_with_stats(tmp_path, "/stats") as stats_port:
        assert request(daemon.port, f"/haproxy/web_up/{stats_port}/stats") == (200, "web_up is UP")
        assert request(daemon.port, f"/haproxy/web_down/{stats_port}/stats") == (500, "web_down is DOWN")
        # Without a query the stats are read at /;csv, which this HAProxy does not serve.
        status, body = request(daemon.port, f"/haproxy/web_up/{stats_port}")
        assert status == 503
        assert f"http://127.0.0.1:{stats_port}/;csv answered" in body


def test_no_cache_floods_share_one_check_and_leave_slots_for_other_services(hacheck_daemon):
    timeout = 3.0
    with threaded_upstream() as (slow_port, slow), threaded_upstream() as (fast_port, fast):
        slow.delay = 1.0
        daemon = hacheck_daemon(config={"healthcheck_timeout": timeout, "cache_time": 60})
        stop = threading.Event()
        flood_answers = []

        def flood(n):
            # 20 clients asking the same check with Pragma: no-cache, and distinct query strings besides.
            while not stop.is_set():
                flood_answers.append(request(daemon.port, f"/http/slow/{slow_port}/health",
                                             {"Pragma": "no-cache"}, source=OTHER_CLIENT)[0])
                flood_answers.append(request(daemon.port, f"/http/slow/{slow_port}/health?n={n}-{time.time()}",
                                             {"Pragma": "no-cache"}, source=OTHER_CLIENT)[0])
                time.sleep(0.02)

        threads = [threading.Thread(target=flood, args=(n,), daemon=True) for n in range(20)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(0.5)
            answers = []
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline:
                started = time.monotonic()
                status, _ = request(daemon.port, f"/http/fast/{fast_port}/ok", {"Pragma": "no-cache"})
                answers.append((status, time.monotonic() - started))
                time.sleep(0.1)
        finally:
            stop.set()
            for thread in threads:
                thread.join(15)
        assert answers and all(status == 200 for status, _ in answers), answers
        assert max(elapsed for _, elapsed in answers) < timeout, answers
        assert len(fast.requests) == len(answers)  # every one of them a real check
        # The slow upstream saw each key at most once at a time, however many asked for it.
        assert max(slow.max_in_flight.values()) == 1, slow.max_in_flight
        assert slow.max_in_flight["/health"] == 1
        assert set(flood_answers) <= {200, 503} and 200 in flood_answers
        # The distinct query strings ran at most max_checks_per_target (default 4) at a time.
        assert max(slow.max_in_flight_total, 1) <= 4, slow.max_in_flight_total
        assert json.loads(request(daemon.port, "/status")[1])["cache"]["coalesced"] > 0


def test_cache_and_access_counts_hold_their_caps(hacheck_daemon):
    with threaded_upstream() as (port, _):
        daemon = hacheck_daemon(config={"cache_max_entries": 50, "access_counts_max_pairs": 20})
        for n in range(200):
            assert request(daemon.port, f"/http/svc{n}/{port}/health?n={n}")[0] == 200
        status = json.loads(request(daemon.port, "/status")[1])
        assert status["cache"]["size"] == 50
        assert status["cache"]["max_entries"] == 50
        assert status["cache"]["evictions"] == 150
        assert status["access_counts"] == {"pairs": 20, "max_pairs": 20, "overflow_service": "(overflow)",
                                           "overflow_requests": 180}
        counts = json.loads(request(daemon.port, "/status/count")[1])["service_access_counts"]
        assert len(counts) == 21
        assert counts["(overflow)"] == {"(any)": 180}
        # The newest entries are the ones kept: the last key is answered from the cache.
        before = json.loads(request(daemon.port, "/status")[1])["cache"]["hits"]
        request(daemon.port, f"/http/svc199/{port}/health?n=199")
        assert json.loads(request(daemon.port, "/status")[1])["cache"]["hits"] == before + 1


def test_repeated_refusals_log_a_few_lines(hacheck_daemon):
    daemon = hacheck_daemon(config={"check_host_allowed_networks": ["10.0.0.0/8"],
                                    "allow_remote_spool_changes": True,
                                    "remote_spool_allowed_networks": ["10.0.0.0/8"]})
    for _ in range(200):
        assert request(daemon.port, "/tcp/web/80", {"X-Nerve-Check-IP": "192.0.2.1"})[0] == 403
        assert request(daemon.port, "/spool/web/0/", method="POST", body="status=down",
                       headers={"Content-Type": "application/x-www-form-urlencoded"})[0] == 403
    output = daemon.output()
    assert 1 <= output.count("outside check_host_allowed_networks") <= 2, output
    assert 1 <= output.count("outside remote_spool_allowed_networks") <= 2, output
