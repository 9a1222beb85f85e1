"""The benchmark script runs on a tiny load and reports every figure the performance issue asks for.

This does not judge the figures (the suite does not time things): it checks that
``bench/run.py --tiny`` finishes, prints its table and writes complete JSON.
"""

import json
import subprocess
import sys

from tests.conftest import REPO_ROOT, require_command, tool_env

SCENARIOS = ("spool check", "cached http check", "cached tcp check", "uncached http check")
MODES = ("keep-alive", "close")
LOAD_FIGURES = ("rps", "p50_ms", "p99_ms", "errors", "requests")


def test_tiny_benchmark_reports_every_figure(tmp_path):
    require_command("wrk")
    output_path = tmp_path / "figures.json"
    finished = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "run.py"), "--tiny", "--json", str(output_path)],
        capture_output=True, text=True, timeout=240, env=tool_env(), cwd=str(tmp_path),
    )
    assert finished.returncode == 0, finished.stderr
    assert "bare Tornado ceiling" in finished.stdout
    assert "targets:" in finished.stdout
    figures = json.loads(output_path.read_text())

    for mode in MODES:
        ceiling = figures["ceiling"][mode]
        for name in LOAD_FIGURES:
            assert name in ceiling, (mode, name)
        assert ceiling["requests"] > 0
        for scenario in SCENARIOS:
            measured = figures["scenarios"][scenario][mode]
            for name in LOAD_FIGURES + ("ratio",):
                assert name in measured, (scenario, mode, name)
            assert measured["requests"] > 0
            assert measured["ratio"] > 0

    scaling = figures["scaling"]
    assert scaling["n1"]["rps"] > 0 and scaling["n2"]["rps"] > 0 and scaling["ratio"] > 0

    coalescing = figures["coalescing"]
    assert coalescing["concurrent_checks"] > 1
    assert isinstance(coalescing["upstream_requests"], int)

    memory = figures["memory"]
    for name in ("rss_start_mb", "rss_loaded_mb", "rss_after_expiry_mb", "rss_growth_after_expiry_mb",
                 "keys_requested", "cache_size_loaded", "cache_size_after_expiry"):
        assert name in memory, name
    assert memory["rss_start_mb"] > 0

    assert figures["startup_seconds"] > 0
    assert isinstance(figures["machine"]["pinned"], bool)
    assert set(figures["targets"]) == {
        "cached http ratio >= 0.85 (both modes)", "spool ratio >= 0.85 (both modes)",
        "-n 2 over -n 1 >= 1.5", "1 upstream request for the concurrent cold checks",
        "RSS after expiry <= start + 20 MB", "no failed requests",
    }
    assert set(figures["targets"].values()) <= {"met", "MISSED"}
