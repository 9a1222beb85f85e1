"""The benchmark scripts run on a tiny load and report every figure they promise.

This does not judge the figures (the suite does not time things): it checks that
``bench/run.py --tiny`` and a small ``bench/burst.py`` finish, print their tables
and write complete JSON.
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


def test_tiny_burst_benchmark_reports_the_probe_for_both_servers(tmp_path):
    output_path = tmp_path / "burst.json"
    finished = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "burst.py"), "--checks", "20", "--rounds", "1",
         "--timeout", "0.5", "--json", str(output_path)],
        capture_output=True, text=True, timeout=120, env=tool_env(), cwd=str(tmp_path),
    )
    assert finished.returncode == 0, finished.stderr
    assert "hacheck / ceiling:" in finished.stdout
    figures = json.loads(output_path.read_text())
    assert set(figures["rounds"]) == {"bare Tornado + client", "hacheck"}
    for name, (measured,) in figures["rounds"].items():
        # The upstream never answers: every check is a 503 at the timeout, and the probe kept answering.
        assert (measured["answers_503"], measured["other_answers"]) == (20, 0), (name, measured)
        assert measured["last_answer_s"] >= 0.5, (name, measured)
        assert measured["samples"] > 0 and measured["probe_not_200"] == 0, (name, measured)
        assert measured["slowest_ms"] > 0
    assert figures["hacheck_over_ceiling"] > 0
