"""Activity: seen services, per-client counts, last statuses, and its memory bound."""

from hacheck.activity import Activity


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_counts_per_service_and_client():
    activity = Activity()
    activity.record("web", "10.0.0.1")
    activity.record("web", "10.0.0.1")
    activity.record("web", "10.0.0.2")
    activity.record("db", "10.0.0.1")
    assert activity.access_counts() == {"web": {"10.0.0.1": 2, "10.0.0.2": 1}, "db": {"10.0.0.1": 1}}


def test_recent_is_sorted_and_bounded_by_threshold():
    clock = Clock()
    activity = Activity(clock=clock)
    activity.record("zeta", "a", 200)
    clock.now += 100
    activity.record("alpha", "b")
    assert activity.recent(600) == [("alpha", None), ("zeta", {"code": 200, "remote_ip": "a", "ts": 1000.0})]
    assert activity.recent(50) == [("alpha", None)]


def test_last_status_keeps_the_checks_own_code():
    activity = Activity()
    activity.record("web", "a", 599)
    assert activity.last_status("web")["code"] == 599


def test_memory_is_bounded():
    activity = Activity(max_services=3, max_pairs=5)
    for n in range(10):
        activity.record(f"service{n}", "a", 200)
    assert [name for name, _ in activity.recent(600)] == ["service7", "service8", "service9"]
    assert set(activity.access_counts()) == {"service7", "service8", "service9"}
    for client in ("c1", "c2", "c3", "c4"):
        activity.record("service9", client)
    counts = activity.access_counts()
    assert counts["service9"] == {"a": 1, "c1": 1, "c2": 1}
    assert counts["(overflow)"] == {"(any)": 2}


def test_a_million_distinct_pairs_stay_within_the_cap():
    from tests.checks.test_cache import MILLION_KEYS_RSS_BOUND, rss_bytes

    activity = Activity(max_pairs=10000)
    before = rss_bytes()
    for n in range(1_000_000):
        activity.record(f"service{n % 5000}", f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}")
    counts = activity.access_counts()
    assert sum(len(clients) for service, clients in counts.items() if service != "(overflow)") == 10000
    assert counts["(overflow)"] == {"(any)": 990_000}
    assert activity.stats()["pairs"] == 10000
    assert rss_bytes() - before < MILLION_KEYS_RSS_BOUND
