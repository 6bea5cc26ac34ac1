#!/usr/bin/env python3
"""jwks_server.py JWKS_FILE PORT_FILE -- a tiny JWKS-over-HTTP peer for the token specs.

Serves JWKS_FILE at /jwks.json, re-reading it on every request so a spec can
rotate keys by rewriting the file. Binds 127.0.0.1 on a free port and writes
the port number to PORT_FILE once listening; after every /jwks.json hit it
writes the hit count to PORT_FILE.hits (also served at /hits). /status/500
answers 500 for failure tests. While a file JWKS_FILE.delay exists, each
/jwks.json answer waits that many seconds first (a slow authorization
server; other requests are served meanwhile). Exits when killed."""
import http.server
import os
import sys
import threading
import time

jwks_path, port_path = sys.argv[1], sys.argv[2]
hits = 0
lock = threading.Lock()


def write_atomically(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class Handler(http.server.BaseHTTPRequestHandler):
    def _send(self, status, body, ctype="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        global hits
        if self.path == "/jwks.json":
            with lock:
                hits += 1
                write_atomically(port_path + ".hits", "%d\n" % hits)
            try:
                with open(jwks_path + ".delay") as f:
                    time.sleep(float(f.read()))
            except OSError:
                pass
            try:
                with open(jwks_path, "rb") as f:
                    body = f.read()
            except OSError:
                return self._send(404, b"{}")
            return self._send(200, body)
        if self.path == "/hits":
            return self._send(200, b"%d" % hits, "text/plain")
        if self.path == "/status/500":
            return self._send(500, b"{}")
        return self._send(404, b"{}")

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
write_atomically(port_path, "%d\n" % server.server_address[1])
server.serve_forever()
