"""The checked upstream inside the container (Debian's python3, no hacheck).

GET /need/<header>/... answers 200 when the request carries that header, else
404: a reloaded ``service_name_header`` shows at once. Anything else: 200.
"""

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        parts = self.path.split("/")
        code = 200
        if len(parts) > 2 and parts[1] == "need" and parts[2] not in self.headers:
            code = 404
        body = f"upstream {code}\n".encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
