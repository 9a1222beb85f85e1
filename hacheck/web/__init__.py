"""The HTTP surface: the application and its thin handlers, the HTTP server and its connection bounds,
the metrics, /mutornadomon, and HAProxy's agent-check port."""
