"""A real HAProxy driven by hacheck's agent-check port and by draining downtimes (issue 8).

HAProxy checks every 200ms; its view of each server is read from its stats
socket (``show stat``) until a deadline, with the helpers of haproxy_support.py.
"""

import contextlib
import socket
import socketserver
import threading
import time

from tests.conftest import unused_port
from tests.e2e.haproxy_support import DEADLINE, run_haproxy
from tests.e2e.support import operator_tool, threaded_upstream


def wait_for_agent(lb, backend, server, status):
    """Wait until HAProxy shows ``status`` (HAProxy 2.6 writes "DRAIN (agent)" for the agent's drain)."""
    deadline = time.monotonic() + DEADLINE
    row = None
    while time.monotonic() < deadline:
        row = lb.server(backend, server)
        if row["status"] in (status, f"{status} (agent)"):
            return row
        time.sleep(0.1)
    raise AssertionError(f"{backend}/{server} did not become {status} within {DEADLINE}s: "
                         f"status={row and row['status']} agent={row and row.get('agent_status')} "
                         f"desc={row and row.get('agent_desc')}")


def test_agent_check_puts_servers_in_maint_and_drain(tmp_path, hacheck_daemon):
    """-A with -S: hadown is MAINT, --drain is DRAIN, haup is UP, and a failing service is DOWN."""
    agent_port = unused_port()
    with threaded_upstream() as (port, upstream):
        daemon = hacheck_daemon(config={"cache_time": 0.1}, args=["-A", str(agent_port), "-S"])

        def server(name, agent_send):
            return (f"server {name} 127.0.0.1:{port} check port {daemon.port} inter 200ms fall 2 rise 2 "
                    f'agent-check agent-port {agent_port} agent-send "{agent_send}\\n" agent-inter 200ms')
        sections = f"""
defaults
    mode http
    timeout connect 2s
    timeout client 5s
    timeout server 5s
    timeout check 2s

backend be_agent
    option httpchk GET /http/web/{port}/health
    {server("srv", "web")}
    {server("garbled", "not a service!")}
"""
        with run_haproxy(tmp_path, sections) as lb:
            lb.wait_for("be_agent", "srv", "UP", "L7OK")
            lb.wait_for("be_agent", "garbled", "UP", "L7OK")

            operator_tool("hadown", daemon.spool_root, "-r", "deploy 42", "web")
            row = wait_for_agent(lb, "be_agent", "srv", "MAINT")
            # -S: the HTTP check itself still passes; only the agent took the server out.
            assert daemon.get(f"/http/web/{port}/health")[:2] == (200, "healthy")
            # A request naming no valid service gets a description only, which changes nothing.
            garbled = lb.server("be_agent", "garbled")
            # ("* CHECKED" while an agent check is in progress)
            assert (garbled["status"], garbled["agent_status"].lstrip("* ")) == ("UP", "CHECKED")

            operator_tool("hadown", daemon.spool_root, "--drain", "-r", "deploy 42", "web")
            wait_for_agent(lb, "be_agent", "srv", "DRAIN")

            operator_tool("haup", daemon.spool_root, "web")
            wait_for_agent(lb, "be_agent", "srv", "UP")

            operator_tool("hadown", daemon.spool_root, "--drain", "-r", "slow", "web")
            wait_for_agent(lb, "be_agent", "srv", "DRAIN")
            operator_tool("hadown", daemon.spool_root, "-r", "now", "web")
            wait_for_agent(lb, "be_agent", "srv", "MAINT")
            operator_tool("haup", daemon.spool_root, "web")
            wait_for_agent(lb, "be_agent", "srv", "UP")

            # A failing service is DOWN, never MAINT: the two stay apart in HAProxy's view.
            upstream.code = 500
            row = lb.wait_for("be_agent", "srv", "DOWN", "L7STS")
            assert row["check_code"] == "500"
            upstream.code = 200
            lb.wait_for("be_agent", "srv", "UP", "L7OK")


class NamedEchoServer(socketserver.ThreadingTCPServer):
    """A backend that greets with its name and echoes lines prefixed with it, for as long as the client stays."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, name):
        self.name = name
        super().__init__(("127.0.0.1", 0), NamedEchoHandler)


class NamedEchoHandler(socketserver.StreamRequestHandler):
    def handle(self):
        name = self.server.name.encode()
        self.wfile.write(name + b"\n")
        for line in self.rfile:
            self.wfile.write(name + b":" + line)


@contextlib.contextmanager
def named_echo_server(name):
    server = NamedEchoServer(name)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


class Client:
    """One TCP connection through HAProxy's frontend; ``name`` is the backend that took it."""

    def __init__(self, port):
        self.connection = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.reader = self.connection.makefile("rb")
        self.name = self.reader.readline().strip().decode()

    def echo(self, text):
        self.connection.sendall(text.encode() + b"\n")
        return self.reader.readline().strip().decode()

    def close(self):
        self.reader.close()
        self.connection.close()


def backend_names(frontend_port, count):
    names = []
    for _ in range(count):
        client = Client(frontend_port)
        names.append(client.name)
        client.close()
    return names


def test_disable_on_404_drain_keeps_established_connections_and_takes_no_new_ones(tmp_path, hacheck_daemon):
    frontend_port = unused_port()
    with named_echo_server("a") as port_a, named_echo_server("b") as port_b:
        daemon = hacheck_daemon(config={"cache_time": 0.1})
        # send-state tells hacheck each server's port: the tcp check and the spool key follow it.
        sections = f"""
defaults
    mode tcp
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout check 2s

frontend fe
    bind 127.0.0.1:{frontend_port}
    default_backend be

backend be
    balance roundrobin
    option httpchk GET /tcp/web/1
    http-check send-state
    http-check disable-on-404
    server a 127.0.0.1:{port_a} check port {daemon.port} inter 200ms fall 2 rise 1
    server b 127.0.0.1:{port_b} check port {daemon.port} inter 200ms fall 2 rise 1
"""
        with run_haproxy(tmp_path, sections) as lb:
            lb.wait_for("be", "a", "UP", "L7OK")
            lb.wait_for("be", "b", "UP", "L7OK")

            held, spare = None, []
            for _ in range(6):  # roundrobin: one of the first few lands on a
                client = Client(frontend_port)
                if client.name == "a" and held is None:
                    held = client
                else:
                    spare.append(client)
            for client in spare:
                client.close()
            assert held is not None, "no connection reached server a"
            assert held.echo("before") == "a:before"

            operator_tool("hadown", daemon.spool_root, "--drain", "-r", "draining a", "-P", str(port_a), "web")
            row = lb.wait_for("be", "a", "NOLB")
            assert row["check_code"] == "404"
            assert lb.server("be", "b")["status"] == "UP"

            # The established connection still works; every new one goes to b.
            assert held.echo("during") == "a:during"
            assert int(lb.server("be", "a")["scur"]) == 1
            assert backend_names(frontend_port, 8) == ["b"] * 8
            assert held.echo("still") == "a:still"
            held.close()

            operator_tool("haup", daemon.spool_root, "-P", str(port_a), "web")
            lb.wait_for("be", "a", "UP", "L7OK")
            assert "a" in backend_names(frontend_port, 4)
