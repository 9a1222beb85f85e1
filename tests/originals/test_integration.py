"""Yelp/hacheck/tests/test_integration.py and uber/hacheck/tests/test_integration.py ("the whole
shebang"), black-box.

The originals added their test handlers to hacheck's own application and checked it
through itself; here the handlers are a separate upstream and a real ``hacheck`` checks
it (``test_selfie`` still has hacheck check its own port).
"""

import re

import pytest
import tornado.web

from tests.e2e.support import operator_tool
from tests.originals.support import ORIGINALS_DISAGREE, deliberate, tornado_upstream


class PingHandler(tornado.web.RequestHandler):
    """Answers PONG, or what ``settings["ping"]`` says."""

    def get(self):
        ping = self.settings["ping"]
        if ping["succeed"]:
            self.write(ping["message"])
        else:
            self.set_status(503)
            self.write(b"FAIL")


class ArgBarHandler(tornado.web.RequestHandler):
    def get(self):
        self.write(self.get_argument("bar"))


@pytest.fixture
def upstream():
    """Yields (port, ping settings): change ``ping["message"]``/``ping["succeed"]`` to change the answer."""
    ping = {"message": b"PONG", "succeed": True}
    with tornado_upstream([("/pinged", PingHandler), ("/arg_bar", ArgBarHandler)], settings={"ping": ping}) as port:
        yield port, ping


@pytest.fixture
def daemon(hacheck_daemon):
    """A fresh daemon per test, as the originals configured a fresh cache and spool per test."""
    return hacheck_daemon()


def test_selfie(daemon):
    """Yelp/hacheck/tests/test_integration.py::test_selfie and uber (same): hacheck checking its own /status."""
    assert daemon.get(f"/http/self/{daemon.port}/status")[0] == 200


def test_ping(daemon, upstream):
    """Yelp/hacheck/tests/test_integration.py::test_ping and uber (same)."""
    port, _ = upstream
    assert daemon.get(f"/http/test_app/{port}/pinged")[:2] == (200, "PONG")


def test_ping_fail(daemon, upstream):
    """Yelp/hacheck/tests/test_integration.py::test_ping_fail and uber (same)."""
    port, ping = upstream
    ping["succeed"] = False
    assert daemon.get(f"/http/test_app/{port}/pinged")[:2] == (503, "FAIL")


def down_then_up(daemon, port):
    """The answer while test_app is down (``hadown -r TESTING``); it is up again afterwards."""
    operator_tool("hadown", daemon.spool_root, "-r", "TESTING", "test_app")
    code, body, _ = daemon.get(f"/http/test_app/{port}/pinged")
    operator_tool("haup", daemon.spool_root, "test_app")
    return code, body


def test_down_and_up(daemon, upstream):
    """Yelp/hacheck/tests/test_integration.py::test_down_and_up: 503 with since and the reason,
    then PONG again once up."""
    port, _ = upstream
    code, body = down_then_up(daemon, port)
    assert code == 503
    assert re.fullmatch(r"Service test_app in down state since (\d|\.)*: TESTING", body), body
    assert daemon.get(f"/http/test_app/{port}/pinged")[1] == "PONG"


@deliberate(ORIGINALS_DISAGREE)
def test_down_and_up_uber(daemon, upstream):
    """uber/hacheck/tests/test_integration.py::test_down_and_up: uber's body had no since."""
    port, _ = upstream
    assert down_then_up(daemon, port) == (503, "Service test_app in down state: TESTING")


def test_caching(daemon, upstream):
    """Yelp/hacheck/tests/test_integration.py::test_caching and uber (same): the cached answer,
    Pragma: no-cache replacing it, and the replaced answer kept."""
    port, ping = upstream
    url = f"/http/test_app/{port}/pinged"
    assert daemon.get(url)[:2] == (200, "PONG")
    ping["message"] = b"dinged"
    assert daemon.get(url)[:2] == (200, "PONG")
    assert daemon.get(url, headers={"Pragma": "no-cache"})[:2] == (200, "dinged")
    assert daemon.get(url)[:2] == (200, "dinged")


def test_query_parameters(daemon, upstream):
    """Yelp/hacheck/tests/test_integration.py::test_query_parameters_bad and ::test_query_parameters_good,
    uber (same): the query string reaches the service."""
    port, _ = upstream
    assert daemon.get(f"/http/test_app/{port}/arg_bar")[0] == 400
    assert daemon.get(f"/http/test_app/{port}/arg_bar?bar=baz")[:2] == (200, "baz")
