"""Compares rendered Kubernetes objects semantically: parsed, keyed by
(kind, namespace, name), order-insensitive. Used by charts/test."""

import sys
from pathlib import Path

import yaml


def objects(path):
    docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
    keyed = {}
    for d in docs:
        key = (d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"])
        if key in keyed:
            sys.exit(f"{path}: {key} twice")
        keyed[key] = d
    return keyed


def diff(a, b, path=""):
    """The first differences between two parsed values, as readable lines."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                out.append(f"{path}/{k}: only in {'helm' if k in a else 'kustomize'}")
            else:
                out += diff(a[k], b[k], f"{path}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [line for i, (x, y) in enumerate(zip(a, b)) for line in diff(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: helm {a!r} != kustomize {b!r}"]


def same(helm, kustomize, without=()):
    h, k = objects(helm), objects(kustomize)
    for key in without:
        k.pop(key)
    problems = [f"{key}: only in helm" for key in h.keys() - k.keys()]
    problems += [f"{key}: only in kustomize" for key in k.keys() - h.keys()]
    for key in sorted(h.keys() & k.keys()):
        problems += [f"{key} {line}" for line in diff(h[key], k[key])]
    if problems:
        sys.exit(f"{helm} differs from {kustomize}:\n  " + "\n  ".join(problems))
    return h


def main(tmp):
    t = Path(tmp)
    namespace = ("Namespace", "", "kubelet-guard")
    # Defaults: everything but the Namespace, which helm install needs first.
    same(t / "helm-default.yaml", t / "kustomize.yaml", without=[namespace])
    same(t / "helm-namespace.yaml", t / "kustomize.yaml")
    same(t / "helm-csr.yaml", t / "kustomize-csr.yaml")
    # The switch works: no metrics listener, no Service.
    off = objects(t / "helm-nometrics.yaml")
    assert ("Service", "kubelet-guard", "kubelet-guard") not in off, "metrics off still renders the Service"
    ds = off[("DaemonSet", "kubelet-guard", "kubelet-guard")]
    args = ds["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not any(a.startswith("--metrics-listen-address") for a in args), args


if __name__ == "__main__":
    main(sys.argv[1])
