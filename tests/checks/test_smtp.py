"""The smtp check against a real aiosmtpd server and raw listeners that get SMTP wrong."""

import re
import time

import pytest

from hacheck.checks import smtp
from hacheck.checks.base import Target, run_check
from tests.checks.conftest import ScriptedServer
from tests.conftest import require, unused_port


@pytest.fixture
def smtp_server():
    """A real SMTP server (aiosmtpd, in its own thread) on an unused loopback port."""
    try:
        from aiosmtpd.controller import Controller
        from aiosmtpd.handlers import Sink
    except ImportError:
        require(False, "aiosmtpd is not installed")
    port = unused_port()
    controller = Controller(Sink(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield Target("127.0.0.1", port)
    finally:
        controller.stop()


def answer_quit_with(reply: bytes):
    return lambda line: reply if line.strip().upper() == b"QUIT" else None


@pytest.mark.gen_test
async def test_a_real_smtp_server_is_up(smtp_server, make_context):
    result = await run_check(smtp.check, smtp_server, "", make_context())
    assert result.code == 200, result
    assert re.fullmatch(r"Connected in \d+\.\d\ds", result.message), result.message


@pytest.mark.gen_test
async def test_multiline_greeting_and_goodbye(scripted_server, make_context):
    server = scripted_server(
        greeting=b"220-mail.example ESMTP\r\n220-second line\r\n220 ready\r\n",
        answer=answer_quit_with(b"221-bye\r\n221 closing\r\n"),
    )
    result = await run_check(smtp.check, server.target, "", make_context())
    assert result.code == 200, result


@pytest.mark.gen_test
async def test_a_wrong_answer_to_quit_is_503_with_what_the_server_said(scripted_server, make_context):
    server = scripted_server(greeting=b"220 ready\r\n", answer=answer_quit_with(b"250 sure, whatever\r\n"))
    result = await run_check(smtp.check, server.target, "", make_context())
    assert result.code == 503
    assert "221" in result.message
    assert "250 sure, whatever" in result.message


@pytest.mark.gen_test
async def test_a_refusing_greeting_is_503_with_the_greeting(scripted_server, make_context):
    server = scripted_server(greeting=b"554 no service for you\r\n")
    result = await run_check(smtp.check, server.target, "", make_context())
    assert result.code == 503
    assert "554 no service for you" in result.message


@pytest.mark.gen_test
async def test_a_server_hanging_up_after_quit_without_answer(scripted_server, make_context):
    server = scripted_server(greeting=b"220 ready\r\n", answer=lambda line: ScriptedServer.HANG_UP)
    result = await run_check(smtp.check, server.target, "", make_context(healthcheck_timeout=5))
    assert result.code == 503
    assert "closed the connection" in result.message
    assert "QUIT" in result.message


@pytest.mark.gen_test
async def test_closed_port_is_503_at_once(closed_port, make_context):
    started = time.monotonic()
    result = await run_check(smtp.check, closed_port, "", make_context())
    assert result.code == 503
    assert "refused" in result.message
    assert time.monotonic() - started < 2


@pytest.mark.gen_test
async def test_a_silent_server_costs_at_most_the_timeout(hang_probe):
    await hang_probe(smtp.check)
