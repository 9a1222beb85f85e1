"""Configuration (docs/daemon.md, "Configuration"): every key, its default, wrong types, unknown keys, empty files."""

import shlex

import pytest
import yaml

from hacheck.config import CACHE_SHAPING_KEYS, KEYS, RESTART_KEYS, Config, ConfigError, default_text, markdown_table
from tests.conftest import REPO_ROOT

DEFAULTS = {
    "cache_time": 10.0,
    "service_name_header": None,
    "log_path": "stderr",
    "mysql_username": None,
    "mysql_password": None,
    "rlimit_nofile": None,
    "allow_remote_spool_changes": False,
    "http_headers_to_copy": ("Host",),
    "healthcheck_timeout": 10.0,
    "max_clients": 10,
    "request_header_timeout": 10.0,
    "request_body_timeout": 10.0,
    "idle_connection_timeout": 60.0,
    "max_request_line_bytes": 8192,
    "max_request_header_bytes": 16384,
    "max_request_body_bytes": 65536,
    "refused_request_linger": 1.0,
    "max_reason_chars": 200,
    "cache_max_entries": 10000,
    "access_counts_max_pairs": 10000,
    "max_checks_per_target": 4,
    "max_checks_per_client": 8,
    "log_repeat_interval": 10.0,
    "agent_request_timeout": 1.0,
    "agent_write_timeout": 5.0,
    "max_agent_request_bytes": 1024,
    "stop_grace": 1.0,
    "max_upstream_body_bytes": 65536,
    "restart_limit_burst": 5,
    "restart_limit_interval": 10.0,
    "lb_view_window": 60.0,
    "lb_view_max_entries": 10000,
    "postgresql_username": None,
    "postgresql_password": None,
    "postgresql_database": "postgres",
    "metrics_per_service": False,
    "remote_spool_allowed_networks": None,
    "check_host_allowed_networks": None,
}

GOOD_VALUES = [
    ("cache_time", "2.5", 2.5),
    ("cache_time", "0", 0.0),
    ("service_name_header", "X-Service", "X-Service"),
    ("log_path", "stdout", "stdout"),
    ("log_path", "/var/log/hacheck.log", "/var/log/hacheck.log"),
    ("mysql_username", "monitor", "monitor"),
    ("mysql_password", "'s3cret'", "s3cret"),
    ("mysql_password", "12345", "12345"),  # YAML reads a number; it was meant as text
    ("rlimit_nofile", "max", "max"),
    ("rlimit_nofile", "4096", 4096),
    ("allow_remote_spool_changes", "true", True),
    ("http_headers_to_copy", "[Host, X-Trace]", ("Host", "X-Trace")),
    ("http_headers_to_copy", "[]", ()),
    ("healthcheck_timeout", "0.5", 0.5),
    ("max_clients", "3", 3),
    ("request_header_timeout", "2.5", 2.5),
    ("idle_connection_timeout", "5", 5.0),
    ("max_request_body_bytes", "1024", 1024),
    ("refused_request_linger", "0", 0.0),
    ("max_reason_chars", "80", 80),
    ("cache_max_entries", "50", 50),
    ("access_counts_max_pairs", "20", 20),
    ("max_checks_per_target", "1", 1),
    ("max_checks_per_client", "2", 2),
    ("log_repeat_interval", "0", 0.0),
    ("agent_request_timeout", "0.2", 0.2),
    ("agent_write_timeout", "2", 2.0),
    ("max_agent_request_bytes", "256", 256),
    ("stop_grace", "0", 0.0),
    ("max_upstream_body_bytes", "1048576", 1048576),
    ("restart_limit_burst", "20", 20),
    ("restart_limit_interval", "2.5", 2.5),
    ("lb_view_window", "3", 3.0),
    ("lb_view_max_entries", "100", 100),
]

BAD_VALUES = [
    ("cache_time", "soon"),
    ("cache_time", "-1"),
    ("service_name_header", "[a, b]"),
    ("log_path", "['x']"),
    ("mysql_username", "{a: b}"),
    ("mysql_password", "[x]"),
    ("rlimit_nofile", "lots"),
    ("rlimit_nofile", "0"),
    ("allow_remote_spool_changes", "'yes please'"),
    ("http_headers_to_copy", "Host"),
    ("healthcheck_timeout", "0"),
    ("healthcheck_timeout", "ten"),
    ("cache_max_entries", "0"),
    ("access_counts_max_pairs", "many"),
    ("max_checks_per_target", "0"),
    ("max_checks_per_client", "1.5"),
    ("log_repeat_interval", "-1"),
    ("max_clients", "0"),
    ("max_clients", "2.5"),
    ("request_body_timeout", "0"),
    ("max_request_header_bytes", "16k"),
    ("max_request_line_bytes", "0"),
    ("agent_request_timeout", "0"),
    ("agent_write_timeout", "soon"),
    ("max_agent_request_bytes", "1k"),
    ("stop_grace", "-1"),
    ("max_upstream_body_bytes", "0"),
    ("restart_limit_burst", "0"),
    ("restart_limit_interval", "0"),
    ("lb_view_window", "0"),
    ("lb_view_max_entries", "0"),
]


def write(tmp_path, text):
    path = tmp_path / "hacheck.yaml"
    path.write_text(text)
    return str(path)


def test_defaults_without_a_file():
    config, warnings = Config.load(None)
    assert warnings == []
    for key, value in DEFAULTS.items():
        assert getattr(config, key) == value, key


def test_every_documented_key_is_known():
    assert set(DEFAULTS) <= {field for field in Config.__dataclass_fields__}


@pytest.mark.parametrize("text", ["", "# nothing but a comment\n", "---\n"])
def test_empty_file_means_defaults(tmp_path, text):
    config, warnings = Config.load(write(tmp_path, text))
    assert warnings == []
    for key, value in DEFAULTS.items():
        assert getattr(config, key) == value, key


@pytest.mark.parametrize("key, yaml_value, expected", GOOD_VALUES)
def test_each_key_is_read(tmp_path, key, yaml_value, expected):
    config, warnings = Config.load(write(tmp_path, f"{key}: {yaml_value}\n"))
    assert getattr(config, key) == expected
    assert warnings == []


@pytest.mark.parametrize("key, yaml_value", BAD_VALUES)
def test_wrong_type_names_key_and_file(tmp_path, key, yaml_value):
    path = write(tmp_path, f"{key}: {yaml_value}\n")
    with pytest.raises(ConfigError) as raised:
        Config.load(path)
    assert key in str(raised.value)
    assert path in str(raised.value)


def test_unknown_key_is_a_warning(tmp_path):
    path = write(tmp_path, "cache_time: 3\nfrobnicate: 1\n")
    config, warnings = Config.load(path)
    assert config.cache_time == 3.0
    assert len(warnings) == 1
    assert "frobnicate" in warnings[0] and path in warnings[0]


@pytest.mark.parametrize("text", ["- a list\n", "just a string\n", "key: [unclosed\n"])
def test_not_a_mapping_or_not_yaml(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        Config.load(path)
    assert path in str(raised.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as raised:
        Config.load(str(tmp_path / "nope.yaml"))
    assert "nope.yaml" in str(raised.value)


def test_unknown_key_close_to_a_known_one_is_suggested(tmp_path):
    path = write(tmp_path, "cach_time: 3\nfrobnicate: 1\n")
    _, warnings = Config.load(path)
    assert warnings == [f"{path}: unknown configuration key 'cach_time' ignored (did you mean 'cache_time'?)",
                        f"{path}: unknown configuration key 'frobnicate' ignored"]


def test_yaml_syntax_error_names_line_and_column(tmp_path):
    path = write(tmp_path, "cache_time: 3\nlog_path: stderr\n  max_clients: 5\n")
    with pytest.raises(ConfigError) as raised:
        Config.load(path)
    assert str(raised.value) == f"{path}: not a valid YAML file: line 3, column 14: " \
                                "mapping values are not allowed here"


@pytest.mark.parametrize("quoted", ['"true"', "'false'", "'yes'"])
def test_quoted_boolean_is_called_a_string(tmp_path, quoted):
    path = write(tmp_path, f"allow_remote_spool_changes: {quoted}\n")
    with pytest.raises(ConfigError) as raised:
        Config.load(path)
    assert f"got the string {quoted.strip(chr(34)).strip(chr(39))!r}: write it without quotes" in str(raised.value)


# --- one declaration per key: the docs come from it, or are checked against it ------------------


def test_every_key_is_declared_once_with_its_default():
    assert list(KEYS) == [name for name in Config.__dataclass_fields__ if name != "source"]
    assert set(KEYS) == set(DEFAULTS)


def test_the_reload_policy_comes_from_the_declarations():
    assert RESTART_KEYS == {"metrics_per_service"}
    assert "cache_time" in CACHE_SHAPING_KEYS and "max_clients" not in CACHE_SHAPING_KEYS


def test_the_docs_table_is_made_from_the_declarations():
    """docs/daemon.md's table of keys is what `python3 -m hacheck.config` prints; change the
    declaration in hacheck/config.py and paste the table again."""
    daemon_page = (REPO_ROOT / "docs" / "daemon.md").read_text(encoding="utf-8")
    start = daemon_page.index("| key | type | default | meaning |")
    assert daemon_page[start:daemon_page.index("\n\n", start) + 1] == markdown_table()


def _troff_words(line: str) -> str:
    """A man page's ``.BR`` line as read: its arguments (bold and roman in turn) joined."""
    return "".join(shlex.split(line[len(".BR "):])).replace("\\-", "-")


def _manual_page_definitions() -> dict:
    """hacheck.yaml(5)'s key definitions: name -> what its ``.BR`` line reads, e.g. ``(number of seconds,
    > 0; default 10)`` (a line may define two keys: ``.BR mysql_username ", " mysql_password " (...)"``)."""
    page = (REPO_ROOT / "man" / "hacheck.yaml.5").read_text(encoding="utf-8")
    definitions = {}
    for line in page.splitlines():
        text = _troff_words(line) if line.startswith(".BR ") else ""
        if "; default " in text:
            names, _, rest = text.partition(" (")
            definitions.update({name: f"({rest}" for name in names.split(", ")})
    return definitions


@pytest.mark.parametrize("name", list(KEYS))
def test_the_manual_page_gives_each_key_its_declared_kind_and_default(name):
    kind = KEYS[name].kind.text.replace("`", "")
    default = default_text(name).replace("`", "")
    assert _manual_page_definitions().get(name) == f"({kind}; default {default})"


@pytest.mark.parametrize("name", list(KEYS))
def test_the_debian_conffile_shows_each_declared_default(name):
    lines = (REPO_ROOT / "debian" / "hacheck.yaml").read_text(encoding="utf-8").splitlines()
    first = next(index for index, line in enumerate(lines) if line.startswith(f"#{name}:"))
    value = lines[first].split(":", 1)[1].strip()
    items = []
    for line in lines[first + 1:]:
        if not line.startswith("#  - "):
            break
        items.append(line[len("#  - "):])
    shown = yaml.safe_load(value) if value else (items or None)
    default = Config.__dataclass_fields__[name].default
    assert shown == (list(default) if isinstance(default, tuple) else default)
