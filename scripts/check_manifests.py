#!/usr/bin/env python3
"""Checks manifests/*.yaml: valid YAML, well-formed Kubernetes objects, and a DaemonSet that
matches what weave-router reads (every env var it sets is one the router knows)."""
import pathlib
import re
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "manifests"
ROUTER_CONFIG = ROOT / "router" / "src" / "config.rs"

errors = []


def fail(msg):
    errors.append(msg)


def check_daemonset(ds, known_env):
    spec = ds["spec"]["template"]["spec"]
    if spec.get("hostNetwork") is not True:
        fail("DaemonSet: hostNetwork must be true")
    if spec.get("serviceAccountName") != "weave-router":
        fail("DaemonSet: serviceAccountName must be weave-router")
    (container,) = spec["containers"]
    if container.get("securityContext", {}).get("privileged") is not True:
        fail("DaemonSet: container must be privileged")
    env = {e["name"]: e for e in container.get("env", [])}
    for name in env:
        if name not in known_env:
            fail(f"DaemonSet: env {name} is not read by weave-router ({ROUTER_CONFIG.name})")
    for name in ["WEAVE_PORT", "WEAVE_HTTP_ADDR", "WEAVE_METRICS_ADDR", "CONN_LIMIT", "KUBE_PEERS",
                 "IPALLOC_RANGE", "IPALLOC_INIT", "WEAVE_MTU", "WEAVE_PASSWORD", "WEAVE_NO_FASTDP"]:
        if name not in env:
            fail(f"DaemonSet: env {name} missing")
    node = env.get("NODE_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
    if node != "spec.nodeName":
        fail("DaemonSet: NODE_NAME must come from spec.nodeName (the downward API)")
    secret = env.get("WEAVE_PASSWORD", {}).get("valueFrom", {}).get("secretKeyRef")
    if not secret or secret.get("optional") is not True:
        fail("DaemonSet: WEAVE_PASSWORD must come from an optional Secret")
    if env.get("WEAVE_METRICS_ADDR", {}).get("value") != "0.0.0.0:6782":
        fail("DaemonSet: WEAVE_METRICS_ADDR must be 0.0.0.0:6782")
    inits = spec.get("initContainers", [])
    if not any(c.get("command", [])[1:2] == ["install"] for c in inits):
        fail("DaemonSet: an init container must run `weave-cni install`")
    mounts = {v["name"]: v.get("hostPath", {}).get("path") for v in spec.get("volumes", [])}
    if "/var/lib/weave" not in mounts.values():
        fail("DaemonSet: /var/lib/weave must be a hostPath volume (the IPAM store)")
    if "livenessProbe" not in container:
        fail("DaemonSet: liveness probe missing")
    probe = container.get("readinessProbe", {}).get("httpGet", {})
    if (probe.get("host"), probe.get("port"), probe.get("path")) != ("127.0.0.1", 6784, "/status"):
        fail(f"DaemonSet: readiness probe must GET 127.0.0.1:6784/status, is {probe}")


def main():
    known_env = set(re.findall(r"\b(?:WEAVE_[A-Z_]+|IPALLOC_[A-Z_]+|CONN_LIMIT|KUBE_PEERS|NODE_NAME)\b", ROUTER_CONFIG.read_text()))
    kinds = {}
    files = sorted(MANIFESTS.glob("*.yaml"))
    if not files:
        fail("no manifests found")
    for path in files:
        try:
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        except yaml.YAMLError as e:
            fail(f"{path.name}: invalid YAML: {e}")
            continue
        for doc in docs:
            for key in ("apiVersion", "kind", "metadata"):
                if key not in doc:
                    fail(f"{path.name}: object without {key}")
            name = doc.get("metadata", {}).get("name")
            if not name:
                fail(f"{path.name}: {doc.get('kind')} without metadata.name")
            kinds.setdefault(doc.get("kind"), []).append(doc)
    for kind in ["DaemonSet", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap"]:
        if kind not in kinds:
            fail(f"no {kind} in manifests/")
    for ds in kinds.get("DaemonSet", []):
        check_daemonset(ds, known_env)
    for kind in ["Role", "RoleBinding"]:
        if kind not in kinds:
            fail(f"no {kind} in manifests/")

    def verbs(role, resource, name=None):
        return {v for r in role.get("rules", []) if resource in r.get("resources", [])
                and (name in r["resourceNames"] if "resourceNames" in r else name is None)
                for v in r.get("verbs", [])}

    # Least privilege: exactly what the router calls.
    for role in kinds.get("ClusterRole", []):
        if verbs(role, "nodes") != {"get", "list", "watch"}:
            fail("ClusterRole: must allow exactly get/list/watch on nodes")
        if verbs(role, "nodes/status") != {"patch"}:
            fail("ClusterRole: must allow exactly patch on nodes/status")
        extra = {res for r in role.get("rules", []) for res in r.get("resources", [])} - {"nodes", "nodes/status"}
        if extra:
            fail(f"ClusterRole: grants more than the router uses: {sorted(extra)}")
    for role in kinds.get("Role", []):
        if role["metadata"].get("namespace") != "kube-system":
            fail("Role: must be in kube-system")
        if verbs(role, "configmaps", "weave-net") != {"get", "update"}:
            fail("Role: must allow exactly get/update on the configmap weave-net")
        if verbs(role, "configmaps") != {"create"}:
            fail("Role: must allow create on configmaps (the first router creates weave-net)")
    for msg in errors:
        print(f"check_manifests: {msg}", file=sys.stderr)
    count = sum(len(v) for v in kinds.values())
    print(f"check_manifests: {count} objects in {len(files)} files, {len(errors)} problems")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
