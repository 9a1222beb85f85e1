"""One address flooding slow checks cannot keep another client's check from its outbound slot.

With ``max_clients: 2``, a load balancer at 127.0.0.2 sends eight uncached checks
(``Pragma: no-cache``) to a service that takes 2.5 s to answer; a moment later a
load balancer at 127.0.0.3 asks about a healthy service. First come first served,
its check would wait behind six of the flood's and answer 503 "not run". The
slot freed first goes to the client holding none.
"""

import http.client
import threading
import time

from tests.conftest import start_hacheck
from tests.e2e.support import threaded_upstream

FLOOD = 8


def ask(port: int, path: str, source: str, results: list) -> None:
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
    try:
        connection.request("GET", path, headers={"Pragma": "no-cache"})
        response = connection.getresponse()
        results.append((response.status, response.read().decode(), time.monotonic() - started))
    finally:
        connection.close()


def test_a_flood_from_one_address_leaves_the_next_free_slot_to_another(tmp_path):
    config = {"max_clients": 2, "healthcheck_timeout": 4, "max_checks_per_target": 100,
              "max_checks_per_client": FLOOD}
    daemon = start_hacheck(tmp_path, config=config)
    try:
        with threaded_upstream() as (slow_port, slow), threaded_upstream() as (healthy_port, _):
            slow.delay = 2.5
            flood_results, other_results = [], []
            flood = [threading.Thread(target=ask, args=(daemon.port, f"/http/slow/{slow_port}/health?n={number}",
                                                        "127.0.0.2", flood_results))
                     for number in range(FLOOD)]
            for thread in flood:
                thread.start()
            deadline = time.monotonic() + 5
            while slow.max_in_flight_total < 2 and time.monotonic() < deadline:
                time.sleep(0.02)  # both slots taken by the flood, the rest of it queued
            time.sleep(0.3)
            ask(daemon.port, f"/http/web/{healthy_port}/health", "127.0.0.3", other_results)
            for thread in flood:
                thread.join(timeout=30)
    finally:
        daemon.stop()
    [(code, body, seconds)] = other_results
    assert (code, body) == (200, "healthy"), f"the other client got {code} {body!r} after {seconds:.1f} s"
    assert seconds < 4
    # The flood itself was held up, not favoured: some of its checks found no slot in time.
    assert len(flood_results) == FLOOD
    assert any(code == 503 and "not run: no free outbound connection" in body
               for code, body, _ in flood_results), flood_results
