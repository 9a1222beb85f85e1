"""A real HAProxy health-checking a backend through a real hacheck (docs/haproxy.md, as deployed).

HAProxy checks every 200ms with ``fall 2 rise 2``; its view of the server is
read from its stats socket (``show stat``) until a deadline.
"""

from tests.conftest import unused_port
from tests.e2e.haproxy_support import backend, haproxy
from tests.e2e.support import operator_tool, threaded_upstream


def test_hadown_haup_and_upstream_errors_drive_haproxy(tmp_path, hacheck_daemon):
    with threaded_upstream() as (port, upstream):
        daemon = hacheck_daemon(config={"cache_time": 0.2})
        backends = {"be_web": backend("be_web", f"/http/web/{port}/health", port, daemon.port)}
        with haproxy(tmp_path, backends) as lb:
            lb.wait_for("be_web", "srv", "UP", "L7OK")
            assert any(path == "/health" for path, _ in upstream.requests)

            operator_tool("hadown", daemon.spool_root, "-r", "haproxy test", "web")
            row = lb.wait_for("be_web", "srv", "DOWN", "L7STS")
            assert row["check_code"] == "503"

            operator_tool("haup", daemon.spool_root, "web")
            lb.wait_for("be_web", "srv", "UP", "L7OK")

            upstream.code = 500
            row = lb.wait_for("be_web", "srv", "DOWN", "L7STS")
            assert row["check_code"] == "500"

            upstream.code = 200
            lb.wait_for("be_web", "srv", "UP", "L7OK")

        # HAProxy's checks show in the daemon's Prometheus metrics, by protocol and answer.
        answered = http_requests_by_code(daemon.get("/metrics")[1])
        assert answered.get("200", 0) >= 2
        assert answered.get("503", 0) >= 2
        assert answered.get("500", 0) >= 2


def http_requests_by_code(metrics_text):
    """``hacheck_requests_total`` for protocol http, by answered code, read with the client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    counts = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "hacheck_requests_total" and sample.labels.get("protocol") == "http":
                counts[sample.labels["code"]] = counts.get(sample.labels["code"], 0) + sample.value
    return counts


def test_send_state_port_is_honoured(tmp_path, hacheck_daemon):
    """The URL names a port where nothing listens; only the state header's port=<server port> can be UP."""
    dead_port = unused_port()
    with threaded_upstream() as (port, upstream):
        daemon = hacheck_daemon()
        backends = {
            "be_state": backend("be_state", f"/http/state/{dead_port}/health", port, daemon.port,
                                extra="http-check send-state"),
            "be_plain": backend("be_plain", f"/http/plain/{dead_port}/health", port, daemon.port),
        }
        with haproxy(tmp_path, backends) as lb:
            lb.wait_for("be_state", "srv", "UP", "L7OK")
            row = lb.wait_for("be_plain", "srv", "DOWN", "L7STS")
            assert row["check_code"] == "503"
