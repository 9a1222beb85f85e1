"""Real things on loopback for the check tests: Tornado upstreams, raw TCP listeners,
self-signed TLS certificates, and a CheckContext with its shared resources."""

import asyncio
import contextlib
import datetime
import gzip
import json
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.web import Application, RequestHandler

from hacheck.checks.base import CheckContext, SharedResources
from hacheck.config import Config
from tests.conftest import require, require_command


@contextlib.contextmanager
def checking(config: Optional[Config] = None, service: str = "web", query_string: str = "",
             headers=None) -> Iterator[CheckContext]:
    """A CheckContext as the daemon builds one; its shared resources are closed afterwards."""
    config = config or Config()
    resources = SharedResources(config)
    try:
        yield CheckContext(service=service, config=config, resources=resources,
                           query_string=query_string, headers=headers or {})
    finally:
        resources.close()


# --- Tornado upstreams -------------------------------------------------------------


class UpstreamHandler(RequestHandler):
    def initialize(self, upstream: "Upstream") -> None:
        self.upstream = upstream


class EchoHandler(UpstreamHandler):
    """Answers with what it received: the request URI and headers, as JSON."""

    def get(self, *args):
        self.upstream.requests.append(self.request.uri)
        self.write({"uri": self.request.uri, "headers": dict(self.request.headers)})


class StatusHandler(UpstreamHandler):
    """``/status/<code>`` answers with that code and the body ``status <code>``."""

    def get(self, code):
        self.upstream.requests.append(self.request.uri)
        self.set_status(int(code))
        if int(code) in (301, 302, 307):
            self.set_header("Location", "/moved-here")
        if int(code) not in (204, 304):
            self.write(f"status {code}")


class GzipHandler(UpstreamHandler):
    """A gzip-encoded body, sent only to clients that asked for gzip."""

    def get(self):
        if "gzip" not in self.request.headers.get("Accept-Encoding", ""):
            self.set_status(406)
            return
        self.set_header("Content-Encoding", "gzip")
        self.set_header("Content-Type", "text/plain")
        self.write(gzip.compress(b"healthy " * 100))


class BytesHandler(UpstreamHandler):
    """A body that is not valid UTF-8."""

    def get(self):
        self.set_header("Content-Type", "application/octet-stream")
        self.write(b"ok \xff\xfe end")


class EndlessHandler(UpstreamHandler):
    """A 200 whose body never ends (until the client hangs up)."""

    async def get(self):
        try:
            while True:
                self.write(b"x" * 8192)
                await self.flush()
        except Exception:  # the client hung up: that is the point
            self.upstream.hung_up = True


class SlowHandler(UpstreamHandler):
    """Takes a while to answer and counts how many requests are in flight at once."""

    async def get(self):
        upstream = self.upstream
        upstream.in_flight += 1
        upstream.max_in_flight = max(upstream.max_in_flight, upstream.in_flight)
        try:
            await asyncio.sleep(0.25)
            self.write("slow ok")
        finally:
            upstream.in_flight -= 1


class Upstream:
    """What a running upstream saw; handlers reach it as ``self.upstream``."""

    def __init__(self, port: int):
        self.port = port
        self.requests: List[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.hung_up = False


ROUTES = [
    (r"/status/(\d+)", StatusHandler),
    (r"/gzip", GzipHandler),
    (r"/bytes", BytesHandler),
    (r"/endless", EndlessHandler),
    (r"/slow", SlowHandler),
    (r"/(.*)", EchoHandler),
]


@contextlib.asynccontextmanager
async def http_upstream(ssl_context: Optional[ssl.SSLContext] = None):
    """A real Tornado server on 127.0.0.1 serving ``ROUTES`` (over TLS with ``ssl_context``)."""
    sock, port = bind_unused_port()
    upstream = Upstream(port)
    routes = [(pattern, handler, {"upstream": upstream}) for pattern, handler in ROUTES]
    server = HTTPServer(Application(routes), ssl_options=ssl_context)
    server.add_sockets([sock])
    try:
        yield upstream
    finally:
        server.stop()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(server.close_all_connections(), 2)


# --- raw TCP -----------------------------------------------------------------------


@contextlib.contextmanager
def silent_listener() -> Iterator[int]:
    """A port where the kernel accepts connections but nobody ever reads or answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


@contextlib.contextmanager
def full_backlog_listener() -> Iterator[int]:
    """A port whose accept queue is full, so new connection attempts hang (SYNs dropped).

    Linux keeps backlog+1 unaccepted connections; fill them until a connect times out.
    """
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(16):
            filler = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            filler.settimeout(0.3)
            try:
                filler.connect(("127.0.0.1", port))
            except socket.timeout:
                break
        else:
            require(False, "could not fill a listen backlog on loopback to make connects hang")
        yield port


@contextlib.asynccontextmanager
async def tcp_server(handle):
    """An asyncio TCP server on 127.0.0.1 calling ``handle(reader, writer)`` per connection."""
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def accepting(host: str = "127.0.0.1"):
    """A TCP listener on ``host`` that accepts each connection and closes it; yields its port."""
    async def hang_up(reader, writer):
        writer.close()
    server = await asyncio.start_server(hang_up, host, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


# --- TLS ---------------------------------------------------------------------------


def self_signed_cert(directory: Path) -> Tuple[str, str]:
    """Write a self-signed certificate for 127.0.0.1 and its key; returns (certfile, keyfile)."""
    certfile, keyfile = str(directory / "cert.pem"), str(directory / "key.pem")
    try:
        from cryptography import x509  # noqa: F401
    except ImportError:
        openssl = require_command("openssl")
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", "/CN=hacheck-test", "-keyout", keyfile, "-out", certfile],
            check=True, capture_output=True, timeout=60,
        )
        return certfile, keyfile
    _write_cert_with_cryptography(certfile, keyfile)
    return certfile, keyfile


def _write_cert_with_cryptography(certfile: str, keyfile: str) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hacheck-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .sign(key, hashes.SHA256())
    )
    Path(certfile).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    Path(keyfile).write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))


def tls_server_context(directory: Path) -> ssl.SSLContext:
    """A server-side TLS context with a fresh self-signed certificate."""
    certfile, keyfile = self_signed_cert(directory)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certfile, keyfile)
    return context


def decode_echo(message: str) -> dict:
    return json.loads(message)
