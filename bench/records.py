"""The benchmark's records as report.py and chart.py read them: the
targets and their labels, picking records, medians with min and max.
Standard library only."""

import statistics

TARGET_ORDER = ["direct", "gateway-static", "gateway-sar", "nginx", "kube-rbac-proxy"]
LABELS = {
    "direct": "direct upstream (TLS)",
    "gateway-static": "kubelet-guard (static rule)",
    "gateway-sar": "kubelet-guard (cached SAR)",
    "nginx": "nginx",
    "kube-rbac-proxy": "kube-rbac-proxy",
}
COLORS = {
    "direct": "#9e9e9e",
    "gateway-static": "#1565c0",
    "gateway-sar": "#64b5f6",
    "nginx": "#2e7d32",
    "kube-rbac-proxy": "#ef6c00",
}
GATEWAYS = ["gateway-static", "gateway-sar"]


class Stat:
    """Median with min and max of some repetitions."""

    def __init__(self, values):
        self.values = [v for v in values if v is not None]

    def __bool__(self):
        return bool(self.values)

    @property
    def med(self):
        return statistics.median(self.values) if self.values else None

    def fmt(self, digits=0, scale=1.0):
        if not self.values:
            return "—"
        m, lo, hi = (x * scale for x in (self.med, min(self.values), max(self.values)))
        if len(self.values) == 1:
            return f"{m:,.{digits}f}"
        return f"{m:,.{digits}f} ({lo:,.{digits}f}–{hi:,.{digits}f})"


def pick(records, **match):
    return [r for r in records if all(r.get(k) == v for k, v in match.items())]


def stat(records, field, **match):
    return Stat([r.get(field) for r in pick(records, **match)])


def ratio(a, b, digits=2):
    if not a or not b or not b.med:
        return "—"
    return f"{a.med / b.med:.{digits}f}×"


class Labels(dict):
    """LABELS, plus the development variants of the gateway (harness.py
    --variant NAME=BINARY: target "gateway-static+NAME")."""

    def __missing__(self, target):
        return f"kubelet-guard (static rule, {variant(target)})" if variant(target) else target


def variant(target):
    return target.split("+", 1)[1] if target.startswith("gateway-static+") else None


class Colors(dict):
    def __missing__(self, target):
        return "#7e57c2"


LABELS = Labels(LABELS)
COLORS = Colors(COLORS)


def is_gw(target):
    return target in GATEWAYS or variant(target) is not None


def targets_in(records):
    present = {r["target"] for r in records}
    order = TARGET_ORDER[:3] + sorted(t for t in present if variant(t)) + TARGET_ORDER[3:]
    return [t for t in order if t in present]
