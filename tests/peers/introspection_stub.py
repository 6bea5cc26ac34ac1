#!/usr/bin/env python3
"""introspection_stub.py DIR -- a scriptable authorization server for tests/spec/authserver_spec.lua.

Why it exists: oidc-provider (tests/interop/authserver.test.mjs) only gives well-formed answers.
The spec also needs the ones a broken or hostile server gives (active as a string, a refresh
token, a foreign audience, duplicate members, HTTP 500, not JSON) and metadata at chosen places
(RFC 8414 path insertion, the OpenID Connect fallback, a wrong issuer). Python standard library
only; binds 127.0.0.1 on a free port and writes it to DIR/port once listening.

Everything is read from DIR on every request, so the spec steers it by writing files:
  DIR/metadata.json  {"PATH": DOCUMENT, ...}: GET PATH answers DOCUMENT (JSON); other paths 404.
                     The text "ISSUER" inside a document is replaced by http://127.0.0.1:PORT.
  DIR/client         "basic ID SECRET" or "post ID SECRET": the credentials POST /introspect
                     requires (RFC 6749 2.3.1: Basic with form-encoded parts, or form fields);
                     anything else is answered 401.
  DIR/answers.json   {"TOKEN": {"status": N, "body": TEXT}, ...}: the answer for a token;
                     unknown tokens get {"active": false}.
Every POST /introspect appends one line to DIR/calls: "<auth method> <token length>".
"""
import base64
import http.server
import json
import os
import sys
import urllib.parse

state = sys.argv[1]


def read(name, default):
    try:
        with open(os.path.join(state, name)) as f:
            return f.read()
    except FileNotFoundError:
        return default


class Handler(http.server.BaseHTTPRequestHandler):
    def _send(self, status, body, ctype="application/json"):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        docs = json.loads(read("metadata.json", "{}"))
        doc = docs.get(self.path)
        if doc is None:
            self._send(404, '{"error":"not found"}')
            return
        issuer = "http://127.0.0.1:%d" % self.server.server_address[1]
        self._send(200, json.dumps(doc).replace("ISSUER", issuer))

    def do_POST(self):
        if self.path != "/introspect":
            self._send(404, "{}")
            return
        n = int(self.headers.get("Content-Length", "0"))
        form = urllib.parse.parse_qs(self.rfile.read(n).decode(), keep_blank_values=True)
        method, cid, secret = (read("client", "basic id secret").strip().split(" ", 2) + ["", ""])[:3]
        got = None
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            user, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
            got = ("basic", urllib.parse.unquote_plus(user), urllib.parse.unquote_plus(pw))
        elif "client_id" in form:
            got = ("post", form["client_id"][0], form.get("client_secret", [""])[0])
        token = form.get("token", [""])[0]
        with open(os.path.join(state, "calls"), "a") as f:
            f.write("%s %d\n" % (got[0] if got else "none", len(token)))
        if got != (method, cid, secret):
            self._send(401, '{"error":"invalid_client"}')
            return
        answers = json.loads(read("answers.json", "{}"))
        a = answers.get(token, {"status": 200, "body": '{"active":false}'})
        self._send(a.get("status", 200), a["body"])

    def log_message(self, *args):
        pass


srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
tmp = os.path.join(state, "port.tmp")
with open(tmp, "w") as f:
    f.write(str(srv.server_address[1]))
os.replace(tmp, os.path.join(state, "port"))
srv.serve_forever()
