"""The workloads: small GET, handshakes, streaming, idle streams, memory
after a peak, the cold burst, start-up. Each appends records for
report.py."""

import json
import os
import re
import ssl
import time

from procs import LOAD_CPU, Sampler, listening, log, resumes_sessions, run_tool, wait_tls
from targets import Targets


class Bench(Targets):
    """The workloads, one method each; main() runs them in order."""

    def small_get(self):
        conc = [16, 64] if self.quick else [1, 16, 64]
        if os.environ.get("BENCH_CONC"):
            # Development: only these -c (e.g. 1, in a quick run).
            conc = [int(c) for c in os.environ["BENCH_CONC"].split(",")]
        seconds = 2 if self.quick else 8
        reps = 1 if self.quick else 3
        try:
            targets = self.all_started()
            # Warm-up: handshakes, upstream pools, caches (and the SAR).
            for target in targets:
                for http2 in (False, True):
                    self.oha(target.port, 16, 1, http2=http2)
            # Targets take turns on every configuration, so that a change in
            # the machine's background load hits them all alike.
            for rep in range(reps):
                for http2 in (False, True):
                    for c in conc:
                        for target in targets:
                            r = self.measured(
                                target, lambda: self.oha(target.port, c, seconds, http2=http2)
                            )
                            if r["ok"] and "cpu_s" in r:
                                r["cpu_us_per_req"] = r["cpu_s"] / r["ok"] * 1e6
                            self.record(workload="small_get", target=target.name,
                                        proto="h2" if http2 else "h1", c=c, rep=rep, **r)
                            log(f"small GET {target.name} {'h2' if http2 else 'h1'} -c {c}: "
                                f"{r['rps']:.0f} req/s p99 {r['p99_us']:.0f} µs "
                                f"cpu {r.get('cpu_us_per_req', 0):.1f} µs/req "
                                f"(errors {r['errors']}, non-200 {r['non200']})")
                # Cross-check with ab on one configuration (when measured).
                for target in targets if 16 in conc else []:
                    r = self.measured(target, lambda: self.ab(target.port, 16, seconds))
                    self.record(workload="ab", target=target.name, proto="h1", c=16, rep=rep, **r)
                    log(f"ab -k {target.name} -c 16: {r['rps']:.0f} req/s p99 {r['p99_us']:.0f} µs "
                        f"(failed {r['failed']})")
        finally:
            self.stop_targets()

    def ab(self, port, conc, seconds):
        argv = [
            self.args.ab, "-k", "-q", "-t", str(seconds), "-n", "100000000", "-c", str(conc),
            "-E", self.certs.path("client-combined.pem"), "-f", "TLS1.3",
            f"https://127.0.0.1:{port}/pods",
        ]
        out = run_tool(argv, timeout=seconds + 60)
        rps = float(re.search(r"Requests per second:\s+([\d.]+)", out).group(1))
        failed = int(re.search(r"Failed requests:\s+(\d+)", out).group(1))
        non2xx = re.search(r"Non-2xx responses:\s+(\d+)", out)
        complete = int(re.search(r"Complete requests:\s+(\d+)", out).group(1))
        p50 = re.search(r"^\s+50%\s+(\d+)", out, re.M)
        p99 = re.search(r"^\s+99%\s+(\d+)", out, re.M)
        return {
            "rps": rps,
            "ok": complete - failed - (int(non2xx.group(1)) if non2xx else 0),
            "failed": failed + (int(non2xx.group(1)) if non2xx else 0),
            # ab reports whole milliseconds.
            "p50_us": int(p50.group(1)) * 1000 if p50 else None,
            "p99_us": int(p99.group(1)) * 1000 if p99 else None,
        }

    def handshakes(self):
        seconds = 2 if self.quick else 8
        reps = 1 if self.quick else 3
        try:
            targets = self.all_started()
            for target in targets:
                try:
                    reused = resumes_sessions(self.ctx, target.port)
                except (OSError, ssl.SSLError) as e:
                    reused = f"unknown ({e})"
                self.record(workload="resumption", target=target.name, rep=0, reused=reused)
                self.oha(target.port, 16, 1, keepalive=False)
            for rep in range(reps):
                for target in targets:
                    r = self.measured(
                        target, lambda: self.oha(target.port, 16, seconds, keepalive=False)
                    )
                    if r["ok"] and "cpu_s" in r:
                        r["cpu_us_per_req"] = r["cpu_s"] / r["ok"] * 1e6
                    self.record(workload="handshake", target=target.name, c=16, rep=rep, **r)
                    log(f"handshakes {target.name}: {r['rps']:.0f}/s (errors {r['errors']})")
        finally:
            self.stop_targets()

    def bulk(self, port, mode, nbytes):
        c = self.certs
        # "lines": the log shape with 1,000-byte chunks each flushed, as the
        # kubelet writes a followed log (one chunk per line).
        tool_mode, extra = ("get", ["--chunk", "1000"]) if mode == "lines" else (mode, [])
        argv = [
            self.args.kgbench, "bulk", "--addr", f"127.0.0.1:{port}", "--mode", tool_mode,
            "--bytes", str(nbytes), "--cacert", c.path("ca.crt"),
            "--cert", c.path("apiserver-client.crt"), "--key", c.path("apiserver-client.key"),
        ] + extra
        return json.loads(run_tool(argv, timeout=600))

    def streaming(self):
        nbytes = (256 << 20) if self.quick else (2 << 30)
        reps = 1 if self.quick else 3
        try:
            targets = self.all_started()
            for target in targets:
                for mode in ("get", "push", "pull", "lines"):
                    self.bulk(target.port, mode, 16 << 20)  # warm-up
            for rep in range(reps):
                for mode in ("get", "push", "pull", "lines"):
                    # Line-sized chunks move far fewer bytes per second.
                    size = nbytes // 8 if mode == "lines" else nbytes
                    for target in targets:
                        r = self.measured(target, lambda: self.bulk(target.port, mode, size))
                        if "cpu_s" in r:
                            r["cpu_s_per_gb"] = r["cpu_s"] / (r["bytes"] / 1e9)
                        self.record(workload="stream", target=target.name, mode=mode, rep=rep, **r)
                        log(f"stream {mode} {target.name}: {r['mb_per_s']:.0f} MB/s "
                            f"cpu {r.get('cpu_s_per_gb', 0):.2f} s/GB")
        finally:
            self.stop_targets()

    def idle_streams(self):
        # Each stream through a proxy holds two descriptors there.
        # Leave room for listeners, logs and nginx's idle upstream keep-alive
        # connections (128), which also count against worker_connections.
        largest = min(10000, (self.args.nofile - 400) // 2 // 100 * 100)
        if largest < 10000:
            self.notes.append(
                f"idle streams: 10,000 would need more than {self.args.nofile} open files "
                f"in the proxy (2 per stream); the hard RLIMIT_NOFILE here is {self.args.nofile} "
                f"and cannot be raised, so the largest N is {largest}"
            )
        counts = [200] if self.quick else sorted({1000, 5000, largest})
        if os.environ.get("BENCH_IDLE_N"):
            # Development: only these N (e.g. the largest, in a quick run).
            counts = [min(int(n), largest) for n in os.environ["BENCH_IDLE_N"].split(",")]
        reps = 1 if self.quick else 3
        c = self.certs
        ping = 5.0
        proxies = [t for t in self.targets if t.proxy]
        for rep in range(reps):
            for n in counts:
                for target in proxies:
                    target.start()
                    try:
                        streams_argv = lambda count, hold: [
                            self.args.kgbench, "streams", "--addr", f"127.0.0.1:{target.port}",
                            "--n", str(count), "--hold", str(hold), "--ping-interval", str(ping),
                            "--cacert", c.path("ca.crt"), "--cert", c.path("apiserver-client.crt"),
                            "--key", c.path("apiserver-client.key"),
                        ]
                        # Warm-up: a few streams, so one-time set-up is not counted.
                        run_tool(streams_argv(10, 0), timeout=60)
                        time.sleep(0.5)
                        before = target.proc.rss_kib()
                        r = self.hold_streams(target, streams_argv(n, ping + 3), ping)
                        r.pop("n", None)
                        r["rss_before_kib"] = before
                        r["delta_per_stream_kib"] = (r["rss_kib"] - before) / max(r["opened"], 1)
                        self.record(workload="idle_streams", target=target.name, n=n, rep=rep, **r)
                        log(f"idle streams {target.name} N={n}: {r['opened']} open, "
                            f"{r['delta_per_stream_kib']:.1f} KiB/stream "
                            f"(failed {r['failed']}, ping errors {r.get('ping_errors')})")
                    finally:
                        target.stop()

    def hold_streams(self, target, argv, ping):
        """Starts the streams tool, waits until all are open plus one ping
        round, samples the proxy's RSS, then lets the tool finish."""
        tool = self.spawn(f"streams-{target.name}", argv, LOAD_CPU)
        try:
            ready = None
            deadline = time.monotonic() + 300
            while ready is None:
                if time.monotonic() > deadline:
                    raise RuntimeError("streams tool did not get ready")
                if not tool.alive():
                    raise RuntimeError(f"streams tool exited:\n{tool.tail()}")
                with open(tool.log_path) as f:
                    for line in f:
                        if line.startswith("READY "):
                            ready = json.loads(line[6:])
                time.sleep(0.1)
            time.sleep(ping + 0.5)
            rss = target.proc.rss_kib()
            tool.popen.wait(timeout=120)
            final = None
            with open(tool.log_path) as f:
                for line in f:
                    if line.startswith("{"):
                        final = json.loads(line)
            result = final or ready
            result["rss_kib"] = rss
            return result
        finally:
            tool.stop()

    def peak_memory(self):
        """RSS after a peak: each proxy, started fresh and warmed, takes
        1,000 keep-alive connections of small GETs (10 per connection); once
        they close, its RSS is sampled every second for 30 s. The targets
        take their peaks one after the other while the earlier ones are
        still being watched, so the 30 s windows overlap."""
        conns = 1000
        requests_per_conn = 3 if self.quick else 10
        watch = 30.0
        reps = 1 if self.quick else 3
        proxies = [t for t in self.targets if t.proxy]
        for rep in range(reps):
            samples = {}  # target name -> [(seconds since its peak ended, rss KiB)]
            peaks = {}
            try:
                for target in proxies:
                    target.start()
                for target in proxies:
                    self.oha(target.port, 16, 1)  # warm-up: pools, caches, the SAR
                time.sleep(1)
                pre = {t.name: t.proc.rss_kib() for t in proxies}
                closed = {}
                for target in proxies:
                    sampler = Sampler(target.proc)
                    # Every connection opens and sends a few requests.
                    r = self.oha(target.port, conns, 120, requests=conns * requests_per_conn)
                    peaks[target.name] = (max(sampler.stop(), target.proc.rss_kib()), r)
                    closed[target.name] = time.monotonic()
                    samples[target.name] = []
                    # Sample the ones already done while the next one peaks.
                    self._sample_after_peak(proxies, closed, samples)
                end = max(closed.values()) + watch
                while time.monotonic() < end + 0.5:
                    self._sample_after_peak(proxies, closed, samples, watch)
                    time.sleep(1)
                for target in proxies:
                    trace = samples[target.name]
                    before = pre[target.name]
                    at_30 = [rss for t, rss in trace if t <= watch]
                    back = next((t for t, rss in trace if rss <= 2 * before), None)
                    peak, r = peaks[target.name]
                    rec = dict(
                        workload="peak_memory", target=target.name, rep=rep, conns=conns,
                        requests_per_conn=requests_per_conn,
                        rss_before_kib=before, rss_peak_kib=peak,
                        rss_after_kib=at_30[-1] if at_30 else None,
                        back_within_2x_s=back, trace=trace, ok=r["ok"],
                        errors=r["errors"] + r["non200"],
                    )
                    self.record(**rec)
                    log(f"peak memory {target.name}: {before / 1024:.1f} → {peak / 1024:.1f} → "
                        f"{(rec['rss_after_kib'] or 0) / 1024:.1f} MiB after {watch:.0f} s "
                        f"({r['ok']} responses, errors {rec['errors']})")
            finally:
                self.stop_targets()

    def _sample_after_peak(self, proxies, closed, samples, watch=30.0):
        now = time.monotonic()
        for target in proxies:
            if target.name in closed and now - closed[target.name] <= watch + 0.5:
                samples[target.name].append((round(now - closed[target.name], 1),
                                             target.proc.rss_kib()))

    def cold_burst(self):
        reps = 1 if self.quick else 3
        c = self.certs
        for rep in range(reps):
            proc, port = self.gateway_proc("sar", name="gateway-sar-burst")
            try:
                wait_tls(proc, self.ctx, port)
                before = self.sar_count()
                out = json.loads(run_tool([
                    self.args.kgbench, "burst", "--addr", f"127.0.0.1:{port}", "--n", "1000",
                    "--path", "/pods", "--cacert", c.path("ca.crt"),
                    "--cert", c.path("apiserver-client.crt"), "--key", c.path("apiserver-client.key"),
                ], timeout=300))
                sars = self.sar_count() - before
                self.record(workload="cold_burst", target="gateway-sar", rep=rep, sars=sars,
                            outcomes=out["outcomes"], secs=out["secs"])
                log(f"cold burst: {sars} SAR(s) for {out['n']} requests, outcomes {out['outcomes']}")
            finally:
                proc.stop()

    def startup(self):
        reps = 3 if self.quick else 5
        for rep in range(reps):
            proc, port = self.gateway_proc("static", name="gateway-startup")
            try:
                secs = wait_tls(proc, self.ctx, port, interval=0.001)
            finally:
                proc.stop()
            # A second instance, never connected to: idle RSS.
            proc, port = self.gateway_proc("static", name="gateway-idle")
            try:
                deadline = time.monotonic() + 30
                while not listening(proc.pid, port):
                    if time.monotonic() > deadline or not proc.alive():
                        raise RuntimeError(f"gateway did not listen:\n{proc.tail()}")
                    time.sleep(0.005)
                time.sleep(2)
                rss, anon = proc.rss_kib(), proc.rss_anon_kib()
            finally:
                proc.stop()
            self.record(workload="startup", target="gateway-static", rep=rep,
                        startup_ms=secs * 1000, idle_rss_kib=rss, idle_rss_anon_kib=anon)
            log(f"gateway start-up {secs * 1000:.1f} ms, idle RSS {rss / 1024:.1f} MiB "
                f"(anonymous {anon / 1024:.1f} MiB)")
        for target in [t for t in self.targets if t.proxy and not t.name.startswith("gateway")]:
            target.start()
            try:
                time.sleep(2)
                self.record(workload="idle_rss", target=target.name, rep=0,
                            idle_rss_kib=target.proc.rss_kib(),
                            idle_rss_anon_kib=target.proc.rss_anon_kib())
            finally:
                target.stop()
