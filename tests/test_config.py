"""Configuration (docs/daemon.md, "Configuration"): every key, its default, wrong types, unknown keys, empty files."""

import pytest

from hacheck.config import Config, ConfigError

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
    ("max_clients", "0"),
    ("max_clients", "2.5"),
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
