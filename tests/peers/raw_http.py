#!/usr/bin/env python3
"""raw_http.py -- send raw bytes to an HTTP server and report what came back.

Why it exists: the framing attacks (bare LF, obs-fold, two Content-Lengths, ...)
cannot be sent with curl or any HTTP client library, which all normalise them.
Usage: raw_http.py HOST:PORT WAIT_S FILE...
Each FILE's bytes go over a connection of their own, one connection after
the other, in one write (or in pieces: "<<PAUSE 2.5>>" in the input waits
that many seconds between the bytes before and after it). Each connection is
read until the server closes it or WAIT_S seconds pass without data. For
each FILE, in order, it prints one line
  statuses=400,200 closed=1 reset=0 bytes=123
followed by exactly that many bytes of raw answer. `statuses` lists every
status line found (so a smuggled second response shows); closed is 1 when
the server ended the connection (reset: with a TCP reset).
Many requests per process, because starting Python costs a third of a second
on a small VM: a spec sends all its cases in one run.
"""
import re
import socket
import sys
import time


def exchange(host, port, wait, data):
    s = socket.create_connection((host, port), timeout=5)
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
    return out, closed, reset


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    wait = float(sys.argv[2])
    for name in sys.argv[3:]:
        with open(name, "rb") as f:
            data = f.read()
        out, closed, reset = exchange(host, int(port), wait, data)
        statuses = re.findall(rb"HTTP/1\.[01] (\d{3}) ", out)
        sys.stdout.buffer.write(b"statuses=%s closed=%d reset=%d bytes=%d\n" %
                                (b",".join(statuses), closed, reset, len(out)))
        sys.stdout.buffer.write(out)


if __name__ == "__main__":
    main()
