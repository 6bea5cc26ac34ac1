#!/usr/bin/env python3
"""cwork_probe.py HOST:PORT TOKEN_FILE ATTACKERS -- the latency_probe.py config
of the Lua-work attack on tests/fixtures/policies/cwork.lua.

Why it exists: tests/spec/policy/budget_spec.lua asserts what the attack
must not do (pass a rule's byte budget, reach its time budget) and bench/run
measures the honest requests' p99 beside it; both must send the same attack.
ATTACKERS connections cycle through cwork.lua's careless rules, each given a
60 KB string to repeat 100,000 times (string.rep, gsub, format, concat,
upper, load, utf8, tostring); one honest connection calls its static rule
`ok` every 5 ms for 2 s, after 0.3 s of warm-up. Prints the config as JSON.
"""
import json
import sys

RULES = ("rep", "gsub", "format", "concat", "upper", "load", "utf8", "tostring")


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    with open(sys.argv[2]) as f:
        token = f.read().strip()
    attackers = int(sys.argv[3])

    def call(tool, args):
        return {"headers": {"Content-Type": "application/json",
                            "Accept": "application/json, text/event-stream",
                            "Authorization": "Bearer " + token},
                "body": json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                    "params": {"name": tool, "arguments": args}})}

    attack = {"s": "a" * 60000, "n": 100000, "width": 64}
    print(json.dumps({"host": host, "port": int(port), "path": "/mcp", "attackers": attackers,
                      "duration": 2, "interval": 0.005, "warmup": 0.3,
                      "honest": call("ok", {"note": "hello"}),
                      "attacks": [call(rule, attack) for rule in RULES]}))


if __name__ == "__main__":
    main()
