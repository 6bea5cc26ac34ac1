#!/usr/bin/env python3
"""bench/drive.py -- a fixed number of requests, one after another, on one
keep-alive connection: the load for counting a gateway's instructions per
request (bench/instructions), where a fixed amount of work matters and
speed does not.

Usage: drive.py URL TOKEN_FILE COUNT EXPECT_STATUS [BODY]
Request i carries line (i mod lines) of TOKEN_FILE as its bearer token.
Every answer must have EXPECT_STATUS; exits 1 naming the first that does
not. Prints "drive: COUNT requests, all STATUS"."""
import http.client
import sys
import urllib.parse

BODY = ('{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search_notes",'
        '"arguments":{"query":"bench"}}}')


def main():
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    url = urllib.parse.urlsplit(sys.argv[1])
    with open(sys.argv[2]) as f:
        tokens = [line.strip() for line in f if line.strip()]
    count, want = int(sys.argv[3]), int(sys.argv[4])
    body = (sys.argv[5] if len(sys.argv) > 5 else BODY).encode()
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    for i in range(count):
        conn.request("POST", url.path, body=body, headers={
            "Authorization": "Bearer " + tokens[i % len(tokens)],
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream"})
        resp = conn.getresponse()
        resp.read()
        if resp.status != want:
            sys.exit("drive: request %d answered %d, not %d" % (i, resp.status, want))
    conn.close()
    print("drive: %d requests, all %d" % (count, want))


if __name__ == "__main__":
    main()
