#!/usr/bin/env python3
"""latency_probe.py CONFIG_JSON -- an honest client's latency while others attack.

Python 3 standard library only. CONFIG_JSON names a file holding
  {"host": "127.0.0.1", "port": 8080, "path": "/mcp",
   "honest": {"headers": {...}, "body": "..."},     one request, repeated
   "attacks": [{"headers": {...}, "body": "..."}],  cycled by every attacker
   "attackers": 4, "requests": 400, "warmup": 0.3, "duration": 0, "interval": 0}
Each attacker is a process of its own (no shared interpreter lock with the
honest client) that sends its requests back to back on one keep-alive
connection until told to stop. The honest client waits `warmup` seconds,
then sends `requests` requests one after another on its own keep-alive
connection (or, with `duration`, as many as fit in that many seconds),
starting one every `interval` seconds when that is set (so the samples are
spread over the whole run whatever the latency), and times each (send to
last byte). Prints one JSON line:
  {"p50_ms":..,"p99_ms":..,"max_ms":..,"honest_status":{code:count},
   "attack_status":{code:count},"attacks":N}"""
import json
import multiprocessing
import socket
import sys
import time


class Conn:
    """One keep-alive HTTP/1.1 connection: each request leaves in one send
    (TCP_NODELAY, so no Nagle/delayed-ACK pause is measured) and each answer
    is read by its Content-Length or chunked framing."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.sock = socket.create_connection((cfg["host"], cfg["port"]), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def close(self):
        self.sock.close()

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise OSError("connection closed")
        self.buf += data

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _take(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def exchange(self, req):
        body = req["body"].encode()
        head = "POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Length: %d\r\n" % (
            self.cfg["path"], self.cfg["host"], self.cfg["port"], len(body))
        head += "".join("%s: %s\r\n" % kv for kv in req["headers"].items())
        self.sock.sendall(head.encode() + b"\r\n" + body)
        status = int(self._line().split()[1])
        headers = {}
        while True:
            line = self._line()
            if not line:
                break
            k, _, v = line.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                n = int(self._line().split(b";")[0], 16)
                self._take(n + 2)
                if n == 0:
                    break
        else:
            self._take(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            raise OSError("closed by the server")
        return status


def attacker(cfg, stop, out):
    conn = Conn(cfg)
    counts, i = {}, 0
    while not stop.is_set():
        req = cfg["attacks"][i % len(cfg["attacks"])]
        i += 1
        try:
            s = conn.exchange(req)
        except (OSError, ValueError, IndexError):
            conn.close()
            conn = Conn(cfg)
            s = "error"
        counts[str(s)] = counts.get(str(s), 0) + 1
    out.put(counts)


def main():
    with open(sys.argv[1]) as f:
        cfg = json.load(f)
    stop = multiprocessing.Event()
    out = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=attacker, args=(cfg, stop, out))
             for _ in range(cfg.get("attackers", 4))]
    for p in procs:
        p.start()
    time.sleep(cfg.get("warmup", 0.3))
    conn = Conn(cfg)
    conn.exchange(cfg["honest"])  # connect outside the timing
    lat, status = [], {}
    n, duration = cfg.get("requests", 400), cfg.get("duration", 0)
    end = time.perf_counter() + duration
    interval, next_start = cfg.get("interval", 0), time.perf_counter()
    while (len(lat) < n) if not duration else (time.perf_counter() < end):
        if interval:
            next_start += interval
            pause = next_start - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
        t0 = time.perf_counter()
        s = conn.exchange(cfg["honest"])
        lat.append((time.perf_counter() - t0) * 1000)
        status[str(s)] = status.get(str(s), 0) + 1
    stop.set()
    attack_status = {}
    for _ in procs:
        for k, v in out.get(timeout=60).items():
            attack_status[k] = attack_status.get(k, 0) + v
    for p in procs:
        p.join()
    lat.sort()
    pick = lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 3)
    print(json.dumps({"p50_ms": pick(0.5), "p99_ms": pick(0.99), "max_ms": round(lat[-1], 3),
                      "honest_status": status, "attack_status": attack_status,
                      "attacks": sum(attack_status.values())}))


if __name__ == "__main__":
    main()
