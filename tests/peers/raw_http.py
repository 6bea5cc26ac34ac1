#!/usr/bin/env python3
"""raw_http.py -- send raw bytes to an HTTP server and report what came back.

Why it exists: the framing attacks (bare LF, obs-fold, two Content-Lengths, ...)
cannot be sent with curl or any HTTP client library, which all normalise them.
Usage: raw_http.py HOST:PORT [WAIT_S] < request-bytes
Sends stdin's bytes in one write (or in pieces: "<<PAUSE 2.5>>" in the input
waits that many seconds between the bytes before and after it), reads until the server closes or WAIT_S
(default 2) seconds pass without data, and prints one line
  statuses=400,200 closed=1 reset=0
followed by the raw answer. `statuses` lists every status line found (so a
smuggled second response shows); closed is 1 when the server ended the
connection (reset: with a TCP reset).
"""
import re
import socket
import sys
import time


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    wait = float(sys.argv[2]) if len(sys.argv) > 2 else 2.0
    data = sys.stdin.buffer.read()
    s = socket.create_connection((host, int(port)), timeout=5)
    pieces = re.split(rb"<<PAUSE ([0-9.]+)>>", data)
    for i, piece in enumerate(pieces):
        if i % 2:
            time.sleep(float(piece))
        elif piece:
            s.sendall(piece)
    s.settimeout(wait)
    out, closed, reset = b"", False, False
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                closed = True
                break
            out += chunk
    except socket.timeout:
        pass
    except ConnectionResetError:
        closed = reset = True
    s.close()
    statuses = re.findall(rb"HTTP/1\.[01] (\d{3}) ", out)
    sys.stdout.buffer.write(b"statuses=%s closed=%d reset=%d\n" % (b",".join(statuses), closed, reset))
    sys.stdout.buffer.write(out)


if __name__ == "__main__":
    main()
