"""Inside the container: GET each URL line of stdin from hacheck on 127.0.0.1:3333.

URL lines are ``PATH [HEADER: VALUE]``. Prints one JSON object: for each line,
[status, content type, body] exactly as answered.
"""

import http.client
import json
import sys

answers = {}
for line in sys.stdin.read().splitlines():
    path, _, header = line.partition(" ")
    headers = dict([header.split(": ", 1)]) if header else {}
    connection = http.client.HTTPConnection("127.0.0.1", 3333, timeout=20)
    connection.request("GET", path, headers=headers)
    response = connection.getresponse()
    answers[line] = [response.status, response.getheader("Content-Type"), response.read().decode("latin-1")]
    connection.close()
print(json.dumps(answers, sort_keys=True))
