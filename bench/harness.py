#!/usr/bin/env python3
"""Runs the kubelet-guard benchmark. Called by bench/run, which installs and
builds everything first; see bench/README.md.

Every process it starts is in a process group of its own and its pid is
appended to --pidfile, so bench/run's trap can end exactly those if this
script dies; on a normal exit (or SIGINT/SIGTERM) it stops them itself.
Results go to OUT/results.json; report.py turns them into RESULTS.md and the
chart.
"""

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import time

from procs import PINNING_TEXT, Interrupted, Proc, log, on_signal
from workloads import Bench


def versions(args):
    def cmd(argv):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            out = (r.stdout + r.stderr).strip()
            return out.splitlines()[0] if out else ""
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"unavailable ({e})"

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rev = cmd(["git", "-C", repo, "rev-parse", "--short=12", "HEAD"])
    dirty = cmd(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no", "--", "src", "Cargo.toml", "Cargo.lock"])
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "pinning": PINNING_TEXT,
        "cpu": cpu,
        "kernel": platform.release(),
        "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kubelet_guard": rev + (" (with uncommitted changes in src/)" if dirty else ""),
        "kubelet_guard_binary": args.gateway,
        "nginx": cmd([args.nginx, "-v"]).replace("nginx version: ", ""),
        "kube_rbac_proxy": args.krp_version if args.krp else f"not measured ({args.krp_skip_reason})",
        "oha": cmd([args.oha, "--version"]),
        "ab": cmd([args.ab, "-V"]),
        "rustc": cmd(["rustc", "--version"]),
        "nofile": args.nofile,
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--pidfile", required=True)
    p.add_argument("--gateway", required=True)
    p.add_argument("--kgbench", required=True)
    p.add_argument("--oha", required=True)
    p.add_argument("--ab", required=True)
    p.add_argument("--nginx", required=True)
    p.add_argument("--krp", default="")
    p.add_argument("--krp-version", default="")
    p.add_argument("--krp-skip-reason", default="")
    p.add_argument("--nofile", type=int, required=True)
    p.add_argument("--only", default="", help="comma-separated workloads (for development)")
    p.add_argument("--variant", action="append", default=[],
                   help="NAME=BINARY: also measure this gateway binary in static mode (development)")
    args = p.parse_args()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    started = time.monotonic()
    bench = Bench(args)
    meta = versions(args)
    meta["quick"] = args.quick
    meta["load_before"] = os.getloadavg()
    workloads = {
        "small_get": bench.small_get,
        "handshake": bench.handshakes,
        "stream": bench.streaming,
        "idle_streams": bench.idle_streams,
        "peak_memory": bench.peak_memory,
        "cold_burst": bench.cold_burst,
        "startup": bench.startup,
    }
    only = [w for w in args.only.split(",") if w]
    failures = []
    try:
        bench.setup()
        for name, fn in workloads.items():
            if only and name not in only:
                continue
            log(f"--- {name}")
            try:
                fn()
            except Interrupted:
                raise
            except Exception as e:  # one workload failing must not lose the others
                failures.append(f"{name}: {e}")
                log(f"workload {name} FAILED: {e}")
    except Interrupted as e:
        log(f"interrupted ({e}); stopping everything")
        Proc.stop_all()
        return 130
    finally:
        Proc.stop_all()
    meta["load_after"] = os.getloadavg()
    meta["duration_s"] = time.monotonic() - started
    meta["notes"] = bench.notes
    meta["failures"] = failures
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"meta": meta, "records": bench.records}, f, indent=1)
    log(f"raw results in {os.path.join(args.out, 'results.json')} ({meta['duration_s']:.0f} s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
