#!/usr/bin/env python3
"""k8s_manifests.py -- checks examples/kubernetes/*.yaml without a cluster.

Used by tests/spec/product/kubernetes_spec.lua. Every document must parse (PyYAML,
Debian's python3-yaml) and the set must hold what docs/operations.md
promises: a Deployment whose scopegate container runs non-root with a
read-only root file system, no capabilities, no privilege escalation and
the RuntimeDefault seccomp profile, with resource requests and limits,
readiness on /readyz and liveness on /healthz of the admin port, the
policy from a ConfigMap mounted as a directory (no subPath, so the `..data`
swap reaches it) and keys from a Secret; Prometheus scrape annotations
naming the admin port; a Service that exposes the MCP port and not the
admin one.

Then it lays the ConfigMap and Secret out under ROOT the way the kubelet
does (ROOT/<mountPath>/..<stamp>/<file>, `..data` -> ..<stamp>, <file> ->
..data/<file>) and prints what the spec needs, one fact per line:
  arg <container argument>            (in order)
  mount <mountPath>                   (each volume mount)
  ready <path> <port>  live <path> <port>  scrape <path> <port>
Exit status 1 with a message on stderr when a check fails.

Usage: k8s_manifests.py MANIFEST_DIR ROOT
"""
import glob
import os
import sys

import yaml


def fail(msg):
    sys.stderr.write("k8s_manifests: %s\n" % msg)
    sys.exit(1)


def need(cond, msg):
    if not cond:
        fail(msg)


def main():
    mdir, root = sys.argv[1], sys.argv[2]
    docs = []
    for path in sorted(glob.glob(os.path.join(mdir, "*.yaml"))):
        with open(path) as f:
            try:
                loaded = [d for d in yaml.safe_load_all(f) if d is not None]
            except yaml.YAMLError as e:
                fail("%s does not parse: %s" % (path, e))
        for d in loaded:
            need(isinstance(d, dict) and d.get("apiVersion") and d.get("kind"),
                 "%s: a document without apiVersion and kind" % path)
            need(d.get("metadata", {}).get("name"), "%s: a %s without a name" % (path, d["kind"]))
        docs += loaded
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    for kind in ("Deployment", "Service", "ConfigMap", "Secret"):
        need(len(by_kind.get(kind, [])) == 1, "exactly one %s expected" % kind)
    dep, svc = by_kind["Deployment"][0], by_kind["Service"][0]
    cms = {c["metadata"]["name"]: c for c in by_kind["ConfigMap"]}
    secrets = {s["metadata"]["name"]: s for s in by_kind["Secret"]}

    pod = dep["spec"]["template"]
    need(dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items(),
         "the Deployment's selector does not match its pods")
    need(svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items(),
         "the Service's selector does not match the pods")
    spec = pod["spec"]
    psc = spec.get("securityContext", {})
    need(psc.get("runAsNonRoot") is True, "pod: runAsNonRoot must be true")
    need(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
         "pod: seccompProfile RuntimeDefault")
    containers = [c for c in spec["containers"] if c["name"] == "scopegate"]
    need(len(containers) == 1, "one container named scopegate")
    c = containers[0]
    csc = c.get("securityContext", {})
    need(csc.get("readOnlyRootFilesystem") is True, "container: readOnlyRootFilesystem")
    need(csc.get("allowPrivilegeEscalation") is False, "container: allowPrivilegeEscalation false")
    need(csc.get("capabilities", {}).get("drop") == ["ALL"], "container: capabilities drop ALL")
    res = c.get("resources", {})
    for part in ("requests", "limits"):
        need(res.get(part, {}).get("cpu") and res.get(part, {}).get("memory"),
             "container: resources.%s cpu and memory" % part)
    need(c["command"][-1] == "serve", "the container runs scopegate serve")

    ports = {p["name"]: p["containerPort"] for p in c["ports"]}

    def port_of(p):
        return ports[p] if isinstance(p, str) else p

    ready, live = c["readinessProbe"]["httpGet"], c["livenessProbe"]["httpGet"]
    need(ready["path"] == "/readyz" and live["path"] == "/healthz", "probes: /readyz and /healthz")
    ann = pod["metadata"].get("annotations", {})
    need(ann.get("prometheus.io/scrape") == "true", "prometheus.io/scrape annotation")
    scrape_port = int(ann["prometheus.io/port"])
    scrape_path = ann.get("prometheus.io/path", "/metrics")
    args = c["args"]
    admin = [a.split("=", 1)[1] for a in args if a.startswith("--admin-listen=")]
    need(len(admin) == 1, "one --admin-listen=HOST:PORT argument")
    admin_port = int(admin[0].rsplit(":", 1)[1])
    need(port_of(ready["port"]) == admin_port and port_of(live["port"]) == admin_port and
         scrape_port == admin_port, "probes and the scrape annotation name the admin port")
    exposed = [port_of(p["targetPort"]) for p in svc["spec"]["ports"]]
    need(admin_port not in exposed, "the Service must not expose the admin port")

    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = c["volumeMounts"]
    kinds = set()
    for m in mounts:
        need("subPath" not in m, "%s: no subPath (updates never reach a subPath mount)" % m["name"])
        v = volumes[m["name"]]
        if "configMap" in v:
            files = cms[v["configMap"]["name"]]["data"]
            kinds.add("configMap")
        elif "secret" in v:
            s = secrets[v["secret"]["secretName"]]
            files = dict(s.get("stringData", {}))
            kinds.add("secret")
        else:
            fail("volume %s: only ConfigMap and Secret volumes are expected" % m["name"])
        # As the kubelet lays it out: the files in a timestamped directory,
        # `..data` pointing at it, each visible name a symlink through ..data.
        target = os.path.join(root, m["mountPath"].lstrip("/"))
        stamp = os.path.join(target, "..2026_01_01_00_00_00.000000001")
        os.makedirs(stamp)
        for name, text in files.items():
            with open(os.path.join(stamp, name), "w") as f:
                f.write(text)
            os.symlink(os.path.join("..data", name), os.path.join(target, name))
        os.symlink(os.path.basename(stamp), os.path.join(target, "..data"))
        print("mount %s" % m["mountPath"])
    need(kinds == {"configMap", "secret"}, "the policy from a ConfigMap, the keys from a Secret")
    for a in args:
        print("arg %s" % a)
    print("ready %s %d" % (ready["path"], port_of(ready["port"])))
    print("live %s %d" % (live["path"], port_of(live["port"])))
    print("scrape %s %d" % (scrape_path, scrape_port))


if __name__ == "__main__":
    main()
