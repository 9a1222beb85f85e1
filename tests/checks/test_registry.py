"""The registry: each protocol's declared inputs are its cache key and all its check sees of the request."""

import pytest
import tornado.httputil

from hacheck.checks import REGISTRY, check_context, check_key
from hacheck.checks.base import SharedResources, Target
from hacheck.config import Config

TARGET = Target("127.0.0.1", 8080)


def key(name, config=Config(), service="web", query="health", query_string="a=1", host="web.example"):
    headers = tornado.httputil.HTTPHeaders({"Host": host})
    return check_key(name, REGISTRY[name], config, TARGET, service, query, query_string, headers)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_an_input_changes_the_key_exactly_when_the_protocol_declares_it(name):
    protocol = REGISTRY[name]
    base = key(name)
    assert (key(name, query="other") != base) is protocol.uses_query
    assert (key(name, query_string="a=2") != base) is protocol.uses_query_string
    assert (key(name, host="evil") != base) is protocol.sends_headers
    assert (key(name, service="db") != base) is protocol.uses_service
    named = Config(service_name_header="X-Service")
    assert (key(name, named, service="db") != key(name, named)) is (protocol.uses_service or protocol.sends_headers)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_a_check_sees_only_what_its_key_holds(name):
    protocol = REGISTRY[name]
    config = Config()
    resources = SharedResources(config)
    try:
        headers = tornado.httputil.HTTPHeaders({"Host": "web.example"})
        context = check_context(protocol, config, resources, "web", "a=1", headers)
    finally:
        resources.close()
    assert context.query_string == ("a=1" if protocol.uses_query_string else "")
    assert dict(context.headers) == ({"Host": "web.example"} if protocol.sends_headers else {})


def test_the_haproxy_check_is_keyed_by_backend_and_stats_path():
    assert REGISTRY["haproxy"].uses_service and REGISTRY["haproxy"].uses_query
    assert key("haproxy", service="be_a") != key("haproxy", service="be_b")
