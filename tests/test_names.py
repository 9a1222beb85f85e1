"""The one set of rules for service names, hosts and ports (daemon, agent and tools)."""

import pytest

from hacheck.names import InvalidName, check_host, check_service_name, parse_port


@pytest.mark.parametrize("text, port", [("80", 80), ("0080", 80), ("65535", 65535), ("1", 1)])
def test_ports_in_ascii_decimal(text, port):
    assert parse_port(text) == port


@pytest.mark.parametrize("text", ["0", "65536", "8_0", " 80", "80 ", "+80", "\u00b9", "\uff18\uff10", "", "0x50",
                                  "9" * 5000])
def test_what_no_url_can_hold_is_not_a_port(text):
    with pytest.raises(InvalidName, match="ports go from 1 to 65535"):
        parse_port(text)


def test_port_zero_where_it_means_every_port():
    assert parse_port("0", minimum=0) == 0


@pytest.mark.parametrize("name", ["web", "my.web_service-2", "all", "A" * 255])
def test_service_names(name):
    assert check_service_name(name) == name


@pytest.mark.parametrize("name, why", [("web app", "use only letters"), ("Web+1", "use only letters"),
                                       ("café", "use only letters"), ("", "use only letters"),
                                       ("..", "are not service names"), ("a" * 256, "longer than 255 bytes")])
def test_what_no_url_can_name_is_not_a_service_name(name, why):
    with pytest.raises(InvalidName, match=why):
        check_service_name(name)


@pytest.mark.parametrize("host", ["10.0.0.1", "::1", "fe80::1%eth0", "db-1.example.com", "db_1"])
def test_hosts(host):
    assert check_host(host) == host


@pytest.mark.parametrize("host", ["not_a_host!", "10.0.0.256", "a b", "", "-x.example"])
def test_what_is_not_a_host(host):
    with pytest.raises(InvalidName, match="invalid host"):
        check_host(host)
