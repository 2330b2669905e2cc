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
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request

CLK_TCK = os.sysconf("SC_CLK_TCK")
PROXY_CPU = "0"
LOAD_CPU = "1"
CLIENT_CN = "kube-apiserver-kubelet-client"


class Interrupted(Exception):
    pass


def on_signal(signum, _frame):
    raise Interrupted(f"signal {signum}")


def log(message):
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- processes


class Proc:
    """A process we started, pinned to a CPU, in its own process group."""

    registry = []
    pidfile = None
    started_count = 0

    def __init__(self, name, argv, cpu, workdir, pidfile, quiet_stdout=False):
        self.name = name
        # A log file of its own for every process started: a tool's output
        # is read back, and must not be mistaken for an earlier run's.
        Proc.started_count += 1
        self.log_path = os.path.join(workdir, f"{name}-{Proc.started_count}.log")
        self.log = open(self.log_path, "wb")
        self.started = time.monotonic()
        self.popen = subprocess.Popen(
            ["taskset", "-c", cpu] + argv,
            # The gateway's access log (stdout) goes to /dev/null like
            # nginx's: formatted and written, but not kept.
            stdout=subprocess.DEVNULL if quiet_stdout else self.log,
            stderr=self.log if quiet_stdout else subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.pid = self.popen.pid
        Proc.pidfile = pidfile
        Proc.registry.append(self)
        Proc.save()

    @classmethod
    def save(cls):
        """Keeps the pid file listing exactly the processes still running,
        for bench/run's trap."""
        with open(cls.pidfile, "w") as f:
            f.write("".join(f"{p.pid}\n" for p in cls.registry))

    def alive(self):
        return self.popen.poll() is None

    def pids(self):
        """The process and its children (nginx's workers)."""
        pids = [self.pid]
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
                pids += [int(p) for p in f.read().split()]
        except OSError:
            pass
        return pids

    def cpu_seconds(self):
        total = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            # utime and stime are fields 14 and 15 of stat(5); fields[0] is 3.
            total += int(fields[11]) + int(fields[12])
        return total / CLK_TCK

    def rss_kib(self):
        return self._sum_kib("smaps_rollup", "Rss:")

    def rss_anon_kib(self):
        """Anonymous resident memory (heap, stacks), without the mapped binary."""
        return self._sum_kib("status", "RssAnon:")

    def _sum_kib(self, proc_file, key):
        """The `key` line (in kB) of /proc/<pid>/<proc_file>, summed over
        the process and its children."""
        total = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/{proc_file}") as f:
                    for line in f:
                        if line.startswith(key):
                            total += int(line.split()[1])
            except OSError:
                continue
        return total

    def tail(self, lines=15):
        try:
            with open(self.log_path, "rb") as f:
                return b"".join(f.readlines()[-lines:]).decode(errors="replace")
        except OSError:
            return ""

    def stop(self):
        if self.alive():
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait()
        self.log.close()
        if self in Proc.registry:
            Proc.registry.remove(self)
            Proc.save()

    @classmethod
    def stop_all(cls):
        for proc in list(reversed(cls.registry)):
            proc.stop()


class Sampler:
    """Samples a process's RSS every 100 ms in a thread, for the peak."""

    def __init__(self, proc):
        self.proc = proc
        self.peak = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.done.wait(0.1):
            self.peak = max(self.peak, self.proc.rss_kib())

    def stop(self):
        self.done.set()
        self.thread.join()
        return self.peak


def run_tool(argv, cpu=LOAD_CPU, timeout=None):
    """Runs a load tool pinned to `cpu`; returns stdout. Fails loudly."""
    result = subprocess.run(
        ["taskset", "-c", cpu] + argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{os.path.basename(argv[0])} failed ({result.returncode}): "
            f"{result.stderr.strip()[-2000:]}"
        )
    return result.stdout


# ---------------------------------------------------------------- TLS probes


class Certs:
    def __init__(self, root):
        self.root = root

    def path(self, name):
        return os.path.join(self.root, name)


def tls_context(certs):
    ctx = ssl.create_default_context(cafile=certs.path("ca.crt"))
    ctx.load_cert_chain(certs.path("apiserver-client.crt"), certs.path("apiserver-client.key"))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    return ctx


def tls_handshake_ok(ctx, port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1"):
                return True
    except (OSError, ssl.SSLError):
        return False


def resumes_sessions(ctx, port):
    """Whether `port` lets a client resume a TLS session (a ticket from one
    connection accepted on the next)."""
    request = b"GET /pods HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            s.sendall(request)
            while s.recv(65536):
                pass
            session = s.session
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1", session=session) as s:
            s.sendall(request)
            while s.recv(65536):
                pass
            return s.session_reused


def wait_tls(proc, ctx, port, timeout=30.0, interval=0.002):
    """Waits until `port` completes a TLS handshake; returns seconds since
    the process was started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
        if tls_handshake_ok(ctx, port):
            return time.monotonic() - proc.started
        time.sleep(interval)
    raise RuntimeError(f"{proc.name} did not accept TLS on {port} in {timeout}s:\n{proc.tail()}")


def listening(pid, port):
    """Whether process `pid` has a TCP socket listening on `port` (read from
    its /proc/net/tcp: no connection needed, so no traffic)."""
    try:
        with open(f"/proc/{pid}/net/tcp") as f:
            next(f)
            for line in f:
                fields = line.split()
                if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A":
                    return True
    except OSError:
        pass
    return False


# ---------------------------------------------------------------- targets


class Target:
    """How to start one target. `proxy` is False for the upstream itself."""

    def __init__(self, name, label, proxy, start):
        self.name = name
        self.label = label
        self.proxy = proxy
        self._start = start
        self.proc = None
        self.port = None

    def start(self):
        self.proc, self.port = self._start()
        return self

    def stop(self):
        if self.proc is not None:
            self.proc.stop()
        self.proc = None


class Bench:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.work = args.work
        self.out = args.out
        self.pidfile = args.pidfile
        self.records = []
        self.notes = []
        self.certs = Certs(os.path.join(self.work, "certs"))
        self.upstream = None
        self.fakeapi = None

    # -- setup

    def spawn(self, name, argv, cpu, quiet_stdout=False):
        return Proc(name, argv, cpu, self.work, self.pidfile, quiet_stdout)

    def setup(self):
        subprocess.run(
            [
                self.args.gateway, "certs", "dev", "--out", self.certs.root,
                "--node-name", "bench-node", "--ip", "127.0.0.1",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        c = self.certs
        # ab wants certificate and key in one file.
        with open(c.path("client-combined.pem"), "w") as out:
            for name in ("apiserver-client.crt", "apiserver-client.key"):
                with open(c.path(name)) as f:
                    out.write(f.read())
        self.ctx = tls_context(c)

        self.upstream_plain = free_port()
        self.upstream_tls = free_port()
        self.upstream = self.spawn(
            "upstream",
            [
                self.args.kgbench, "upstream",
                "--plain", f"127.0.0.1:{self.upstream_plain}",
                "--tls", f"127.0.0.1:{self.upstream_tls}",
                "--cert", c.path("kubelet.crt"), "--key", c.path("kubelet.key"),
                "--client-ca", c.path("ca.crt"),
            ],
            LOAD_CPU,
        )
        wait_tls(self.upstream, self.ctx, self.upstream_tls)

        self.fakeapi_port = free_port()
        self.fakeapi = self.spawn(
            "fakeapi",
            [
                self.args.kgbench, "fakeapi", "--listen", f"127.0.0.1:{self.fakeapi_port}",
                "--cert", c.path("kubelet.crt"), "--key", c.path("kubelet.key"),
                "--delay-ms", "20",
            ],
            LOAD_CPU,
        )
        wait_tls(self.fakeapi, ssl.create_default_context(cafile=c.path("ca.crt")), self.fakeapi_port)
        with open(c.path("sa-token"), "w") as f:
            # No newline: the kube client sends the file as it is.
            f.write("bench-token")
        with open(c.path("kubeconfig"), "w") as f:
            f.write(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: bench\n  cluster:\n"
                f"    server: https://127.0.0.1:{self.fakeapi_port}\n"
                f"    certificate-authority: {c.path('ca.crt')}\n"
                f"users:\n- name: gateway\n  user:\n    tokenFile: {c.path('sa-token')}\n"
                "contexts:\n- name: bench\n  context:\n    cluster: bench\n    user: gateway\n"
                "current-context: bench\n"
            )

        self.targets = [
            Target("direct", "direct (TLS)", False, self.start_direct),
            Target("gateway-static", "kubelet-guard, static rule", True,
                   lambda: self.start_gateway("static")),
            Target("gateway-sar", "kubelet-guard, cached SAR", True,
                   lambda: self.start_gateway("sar")),
            Target("nginx", "nginx", True, self.start_nginx),
        ]
        # Development variants of the gateway binary (before/after a change,
        # allocator candidates), static mode, measured beside the others.
        for spec in self.args.variant:
            name, _, binary = spec.partition("=")
            self.targets.insert(3, Target(
                f"gateway-static+{name}", f"kubelet-guard, static rule, {name}", True,
                lambda binary=binary, name=name: self.start_gateway(
                    "static", binary=binary, name=f"gateway-static+{name}")))
        if self.args.krp:
            self.targets.append(Target("kube-rbac-proxy", "kube-rbac-proxy", True, self.start_krp))
        else:
            self.notes.append(f"kube-rbac-proxy not measured: {self.args.krp_skip_reason}")

    def sar_count(self):
        ctx = ssl.create_default_context(cafile=self.certs.path("ca.crt"))
        with urllib.request.urlopen(
            f"https://127.0.0.1:{self.fakeapi_port}/count", context=ctx, timeout=5
        ) as r:
            return int(r.read())

    # -- target start-up

    def start_direct(self):
        return None, self.upstream_tls

    def gateway_config(self, mode, port):
        c = self.certs
        lines = [
            "nodeName: bench-node",
            f"secureListenAddress: 127.0.0.1:{port}",
            f"tlsCertFile: {c.path('serving.crt')}",
            f"tlsPrivateKeyFile: {c.path('serving.key')}",
            f"clientCaFile: {c.path('ca.crt')}",
            "tlsMinVersion: VersionTLS13",
            f"upstream: https://127.0.0.1:{self.upstream_tls}",
            f"upstreamCaFile: {c.path('ca.crt')}",
            f"upstreamClientCertFile: {c.path('gateway-client.crt')}",
            f"upstreamClientKeyFile: {c.path('gateway-client.key')}",
            "authenticationTokenWebhook: false",
            f"adminListenAddress: 127.0.0.1:{free_port()}",
            "logFormat: json",
            "shutdownGracePeriod: 1s",
        ]
        if mode == "static":
            lines += [
                "authorizationMode: Static",
                "authorization:",
                "  static:",
                f"    - user: {CLIENT_CN}",
                "      verbs: ['*']",
                "      subresources: ['*']",
            ]
        else:
            lines += [
                "authorizationMode: Webhook",
                f"kubeconfig: {c.path('kubeconfig')}",
            ]
        path = os.path.join(self.work, f"gateway-{mode}-{port}.yaml")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def gateway_proc(self, mode, name=None, binary=None):
        port = free_port()
        config = self.gateway_config(mode, port)
        proc = self.spawn(
            name or f"gateway-{mode}",
            [binary or self.args.gateway, "serve", "--config", config],
            PROXY_CPU,
            quiet_stdout=True,
        )
        return proc, port

    def start_gateway(self, mode, binary=None, name=None):
        proc, port = self.gateway_proc(mode, name=name, binary=binary)
        wait_tls(proc, self.ctx, port)
        return proc, port

    def nginx_config(self, port):
        c = self.certs
        root = os.path.join(self.work, "nginx")
        os.makedirs(root, exist_ok=True)
        conf = f"""# Written by bench/harness.py.
worker_processes 1;
worker_rlimit_nofile {self.args.nofile};
pid {root}/nginx.pid;
daemon off;
error_log {root}/error.log warn;
events {{
    # nginx starts closing connections once fewer than 1/16 of these are
    # free; with more than the descriptor limit, that limit is the bound,
    # as for the gateway.
    worker_connections {self.args.nofile * 9 // 8};
}}
http {{
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    # Like the gateway's access log (to /dev/null in the bench): one
    # formatted line per request.
    access_log /dev/null combined;
    keepalive_requests 1000000;
    keepalive_timeout 90s;

    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      '';
    }}
    # The static rule: only the client identity the gateways allow.
    map $ssl_client_s_dn $allowed {{
        default 0;
        "~CN={CLIENT_CN}(,|$)" 1;
    }}

    upstream kubelet {{
        server 127.0.0.1:{self.upstream_tls};
        keepalive 128;
    }}

    server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_certificate {c.path('serving.crt')};
        ssl_certificate_key {c.path('serving.key')};
        ssl_protocols TLSv1.3;
        ssl_client_certificate {c.path('ca.crt')};
        ssl_verify_client on;

        location / {{
            if ($allowed = 0) {{
                return 403;
            }}
            proxy_pass https://kubelet;
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
            proxy_ssl_protocols TLSv1.3;
            proxy_ssl_certificate {c.path('gateway-client.crt')};
            proxy_ssl_certificate_key {c.path('gateway-client.key')};
            proxy_ssl_trusted_certificate {c.path('ca.crt')};
            proxy_ssl_verify on;
            proxy_ssl_name localhost;
            proxy_ssl_session_reuse on;
        }}
    }}
}}
"""
        path = os.path.join(root, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        return root, path

    def start_nginx(self):
        port = free_port()
        root, conf = self.nginx_config(port)
        proc = self.spawn(
            "nginx", [self.args.nginx, "-p", root, "-c", conf, "-e", f"{root}/error.log"], PROXY_CPU
        )
        wait_tls(proc, self.ctx, port)
        return proc, port

    def start_krp(self):
        c = self.certs
        port = free_port()
        config = os.path.join(self.work, "kube-rbac-proxy.yaml")
        with open(config, "w") as f:
            f.write(
                "authorization:\n"
                "  resourceAttributes:\n"
                "    resource: nodes\n"
                "    subresource: proxy\n"
                "    name: bench-node\n"
                "  static:\n"
                "    - user:\n"
                f"        name: {CLIENT_CN}\n"
                "      resourceRequest: true\n"
                "      resource: nodes\n"
                "      subresource: proxy\n"
            )
        proc = self.spawn(
            "kube-rbac-proxy",
            [
                self.args.krp,
                f"--secure-listen-address=127.0.0.1:{port}",
                f"--upstream=https://127.0.0.1:{self.upstream_tls}/",
                f"--tls-cert-file={c.path('serving.crt')}",
                f"--tls-private-key-file={c.path('serving.key')}",
                f"--client-ca-file={c.path('ca.crt')}",
                f"--config-file={config}",
                f"--upstream-ca-file={c.path('ca.crt')}",
                f"--upstream-client-cert-file={c.path('gateway-client.crt')}",
                f"--upstream-client-key-file={c.path('gateway-client.key')}",
                f"--kubeconfig={c.path('kubeconfig')}",
                "--tls-min-version=VersionTLS13",
                "--v=0",
            ],
            PROXY_CPU,
        )
        wait_tls(proc, self.ctx, port)
        return proc, port

    # -- measuring helpers

    def record(self, **fields):
        fields["time"] = time.time()
        self.records.append(fields)

    def client_flags(self):
        c = self.certs
        return [
            "--cacert", c.path("ca.crt"),
            "--cert", c.path("apiserver-client.crt"),
            "--key", c.path("apiserver-client.key"),
        ]

    def oha(self, port, conc, seconds, http2=False, keepalive=True, path="/pods", requests=None):
        """`oha -z seconds`, or with `requests`, `oha -n requests` (then
        `seconds` only bounds the wait)."""
        amount = ["-n", str(requests)] if requests else ["-z", f"{seconds}s"]
        argv = [
            self.args.oha, *amount, "-c", str(conc), "--no-tui",
            "--output-format", "json",
        ] + self.client_flags()
        if http2:
            argv.append("--http2")
        if not keepalive:
            argv.append("--disable-keepalive")
        argv.append(f"https://127.0.0.1:{port}{path}")
        out = json.loads(run_tool(argv, timeout=seconds + 60))
        summary = out["summary"]
        codes = out.get("statusCodeDistribution", {})
        errors = out.get("errorDistribution", {})
        ok = int(codes.get("200", 0))
        # Requests still in flight when -z ends are cut off by oha itself.
        errors = {k: v for k, v in errors.items() if k != "aborted due to deadline"}
        pct = out.get("latencyPercentiles", {})
        return {
            "rps": ok / summary["total"] if summary.get("total") else 0.0,
            "rps_oha": summary.get("requestsPerSec"),
            "ok": ok,
            "non200": sum(int(v) for k, v in codes.items() if k != "200"),
            "errors": sum(int(v) for v in errors.values()),
            "error_kinds": sorted(errors)[:3],
            "p50_us": (pct.get("p50") or 0) * 1e6,
            "p99_us": (pct.get("p99") or 0) * 1e6,
            "wall": summary.get("total"),
        }

    def measured(self, target, fn):
        """Runs fn() and adds the target process's CPU seconds to its result."""
        proc = target.proc
        before = proc.cpu_seconds() if proc else None
        t0 = time.monotonic()
        result = fn()
        wall = time.monotonic() - t0
        if proc is not None:
            if not proc.alive():
                raise RuntimeError(f"{target.name} died:\n{proc.tail()}")
            result["cpu_s"] = proc.cpu_seconds() - before
            result["cpu_util"] = result["cpu_s"] / wall
        return result

    # -- workloads

    def all_started(self):
        """Starts every target for an interleaved workload (idle proxies cost
        nothing measurable); the caller stops them."""
        for target in self.targets:
            target.start()
        return self.targets

    def stop_targets(self):
        for target in self.targets:
            target.stop()

    def small_get(self):
        conc = [16, 64] if self.quick else [1, 16, 64]
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
                # Cross-check with ab on one configuration.
                for target in targets:
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
