#!/usr/bin/env python3
"""echo_upstream.py -- a scriptable MCP upstream for scopegate's black-box tests.

Python 3 standard library only. It answers JSON-RPC over Streamable HTTP and puts
what it received (method, path, request headers, body) inside the result, so a
test can see exactly what the gateway forwarded (e.g. that Authorization was
stripped). The test picks a behaviour per request with the tool name of a
tools/call (or the JSON-RPC method "echo/<mode>"):

  (default)        application/json result echoing the request
  sse              text/event-stream: retry:, then events with id: lines, the
                   response last, with a short pause between events
  slow             sleeps arguments.seconds (default 3) before answering
  die              closes the connection without any response
  die_mid_stream   starts an SSE response, sends one event, then drops the socket
  garbage          sends bytes that are not HTTP, then closes
  big              a JSON result of arguments.bytes bytes (default 2 MiB)
  status           answers with HTTP status arguments.status and a JSON-RPC error

  add_tool         adds tool arguments.name (with arguments.annotations) to
                   tools/list and answers with an SSE stream that carries
                   notifications/tools/list_changed before the response
                   (arguments.pause seconds between the two events; none: one write)

tools/list, prompts/list, resources/list and resources/templates/list
answer fixed lists, alone or inside a batch (with
nextCursor "next-page"; the cursor "next-page" gets a second page with
the tools added by add_tool and no nextCursor); a cursor of "sse" makes
the answer an SSE stream (a notification event first). Any request whose
params._meta.raw is {"type": CONTENT_TYPE, "body": TEXT[, "status": N]}
is answered with exactly that body (UTF-8), so a test can script a
malformed or unusual upstream answer byte for byte. Notifications and responses get 202 with no body. initialize answers with an
Mcp-Session-Id header. GET opens a short SSE stream (one event, then ends);
DELETE answers 200.

Usage: echo_upstream.py [--port N] [--host 127.0.0.1]; prints
"listening on HOST:PORT" on stdout once ready.
"""
import argparse
import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOOLS = [
    {"name": "echo", "description": "Echo", "inputSchema": {"type": "object"},
     "annotations": {"readOnlyHint": True}},
    {"name": "write", "inputSchema": {"type": "object"}},
    {"name": "both", "inputSchema": {"type": "object"}},
    {"name": "ping", "inputSchema": {"type": "object"}},
    {"name": "secret", "inputSchema": {"type": "object"}},
]
LISTS = {
    "tools/list": ("tools", TOOLS),
    "prompts/list": ("prompts", [{"name": "summarize"}, {"name": "hidden"}]),
    "resources/list": ("resources", [{"uri": "echo://docs/1", "name": "doc"},
                                     {"uri": "echo://private/2", "name": "private"}]),
    "resources/templates/list": ("resourceTemplates",
                                 [{"uriTemplate": "echo://docs/{id}", "name": "docs"},
                                  {"uriTemplate": "echo://private/{id}", "name": "private"}]),
}

MODES = {"sse", "slow", "die", "die_mid_stream", "garbage", "big", "status", "close_after",
         "add_tool", "empty", "speak_after"}
ADDED_TOOLS = []  # tools/list's second page: what add_tool added


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in separate writes: without TCP_NODELAY the
    # body waits for the gateway's delayed ACK (40 ms), which latency specs
    # would measure.
    disable_nagle_algorithm = True

    def log_message(self, fmt, *args):  # keep test output quiet
        pass

    def _headers_dict(self):
        out = {}
        for k, v in self.headers.items():
            k = k.lower()
            out[k] = v if k not in out else out[k] + ", " + v
        return out

    def _send_json(self, status, obj, extra=None):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _chunk(self, text):
        data = text.encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _start_sse(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()

    def _drop(self):
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.close_connection = True

    def do_GET(self):
        self._start_sse()
        self._chunk("retry: 2000\n\n")
        note = {"jsonrpc": "2.0", "method": "notifications/message",
                "params": {"level": "info", "data": {"headers": self._headers_dict()}}}
        self._chunk("id: get-1\nevent: message\ndata: %s\n\n" % json.dumps(note))
        self._chunk("")
        self.close_connection = True

    def do_DELETE(self):
        self._send_json(200, {"deleted": True, "headers": self._headers_dict()})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw)
        except ValueError:
            self._send_json(400, {"jsonrpc": "2.0", "id": None,
                                  "error": {"code": -32700, "message": "Parse error"}})
            return
        msgs = body if isinstance(body, list) else [body]
        requests = [m for m in msgs if isinstance(m, dict) and "method" in m and "id" in m]
        if not requests:
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        first = requests[0]
        method = first.get("method")
        params = first.get("params") or {}
        args = params.get("arguments") or {} if isinstance(params, dict) else {}
        mode = None
        if method == "tools/call" and params.get("name") in MODES:
            mode = params.get("name")
        elif isinstance(method, str) and method.startswith("echo/") and method[5:] in MODES:
            mode = method[5:]
        echo = {"method": method, "path": self.path, "headers": self._headers_dict(),
                "body": raw.decode("utf-8", "replace")}

        def response(m):
            if m.get("method") in LISTS:  # a list request inside a batch
                key, items = LISTS[m.get("method")]
                return {"jsonrpc": "2.0", "id": m.get("id"),
                        "result": {key: items, "nextCursor": "next-page"}}
            return {"jsonrpc": "2.0", "id": m.get("id"), "result": {"echo": echo}}

        meta = params.get("_meta") if isinstance(params, dict) else None
        raw_answer = meta.get("raw") if isinstance(meta, dict) else None
        if isinstance(raw_answer, dict):
            data = str(raw_answer.get("body", "")).encode("utf-8")
            self.send_response(int(raw_answer.get("status", 200)))
            self.send_header("Content-Type", raw_answer.get("type", "application/json"))
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
            return
        if mode == "die":
            self._drop()
            return
        if mode == "garbage":
            self.wfile.write(b"\x00\x01garbage that is not HTTP\r\n\r\n")
            self.wfile.flush()
            self._drop()
            return
        if mode == "empty" or (method in LISTS and isinstance(params, dict)
                               and params.get("cursor") == "empty"):
            self.send_response(200)  # a 200 with an empty body
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if mode == "slow":
            time.sleep(float(args.get("seconds", 3)))
        if mode == "status":
            code = int(args.get("status", 500))
            self._send_json(code, {"jsonrpc": "2.0", "id": first.get("id"),
                                   "error": {"code": -32000, "message": "status %d" % code}})
            return
        if mode in ("sse", "die_mid_stream"):
            self._start_sse()
            self._chunk("retry: 1500\n\n")
            note = {"jsonrpc": "2.0", "method": "notifications/progress",
                    "params": {"progressToken": 1, "progress": 1}}
            self._chunk("id: ev-1\nevent: message\ndata: %s\n\n" % json.dumps(note))
            if mode == "die_mid_stream":
                time.sleep(0.2)
                self._drop()
                return
            time.sleep(float(args.get("pause", 0.3)))
            out = [response(m) for m in requests]
            for i, r in enumerate(out):
                self._chunk("id: ev-%d\nevent: message\ndata: %s\n\n" % (i + 2, json.dumps(r)))
            self._chunk("")
            return
        if mode == "add_tool":
            ADDED_TOOLS.append({"name": args.get("name", "added"), "inputSchema": {"type": "object"},
                                "annotations": args.get("annotations") or {}})
            note = {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}
            events = ("event: message\ndata: %s\n\n" % json.dumps(note),
                      "data: %s\n\n" % json.dumps(response(first)))
            if float(args.get("pause", 0)) > 0:  # streamed: the gateway relays piece by piece
                self._start_sse()
                self._chunk(events[0])
                time.sleep(float(args["pause"]))
                self._chunk(events[1])
                self._chunk("")
            else:  # head and body in one write: the gateway has the whole answer at once
                body = (events[0] + events[1]).encode()
                self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                self.wfile.flush()
            return
        if mode == "big":
            size = int(args.get("bytes", 2 * 1024 * 1024))
            result = {"jsonrpc": "2.0", "id": first.get("id"), "result": {"blob": "x" * size}}
            self._send_json(200, result)
            return
        if (method == "tools/list" and len(requests) == 1 and isinstance(params, dict)
                and params.get("cursor") == "next-page"):
            resp = {"jsonrpc": "2.0", "id": first.get("id"), "result": {"tools": ADDED_TOOLS}}
            self._send_json(200, resp)
            return
        if method in LISTS and len(requests) == 1:
            key, items = LISTS[method]
            result = {key: items, "nextCursor": "next-page"}
            resp = {"jsonrpc": "2.0", "id": first.get("id"), "result": result}
            if isinstance(params, dict) and params.get("cursor") in ("sse", "sse-primed"):
                self._start_sse()
                if params.get("cursor") == "sse-primed":  # a resumability priming event
                    self._chunk("id: p-0\ndata: \n\n")
                self._chunk("retry: 500\n\n")
                note = {"jsonrpc": "2.0", "method": "notifications/message",
                        "params": {"level": "info", "data": "listing"}}
                self._chunk("id: l-1\nevent: message\ndata: %s\n\n" % json.dumps(note))
                self._chunk("id: l-2\nevent: message\ndata: %s\n\n" % json.dumps(resp))
                self._chunk("")
            else:
                self._send_json(200, resp)
            return
        if mode == "close_after":  # answer, then drop the kept-alive connection unannounced
            self._send_json(200, response(first))
            self.close_connection = True
            return
        if mode == "speak_after":
            # Answer, then, 100 ms later and unasked, write a whole second
            # answer on the kept-alive connection: a gateway that reused it
            # would hand that to the next request sent on it.
            self._send_json(200, response(first))
            late = {"jsonrpc": "2.0", "id": args.get("next_id"),
                    "result": {"content": [{"type": "text", "text": "UNASKED"}]}}
            data = json.dumps(late).encode()
            raw = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
            wfile = self.wfile

            def speak():
                time.sleep(0.1)
                try:
                    wfile.write(raw)
                    wfile.flush()
                except OSError:
                    pass
            threading.Thread(target=speak, daemon=True).start()
            return
        extra = {}
        if method == "initialize":
            extra["Mcp-Session-Id"] = "sess-echo-1"
        out = [response(m) for m in requests]
        self._send_json(200, out if isinstance(body, list) else out[0], extra)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"), help="serve https")
    a = ap.parse_args()
    srv = ThreadingHTTPServer((a.host, a.port), Handler)
    srv.daemon_threads = True
    if a.tls:
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.tls[0], a.tls[1])
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    print("listening on %s:%d" % srv.server_address[:2], flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
