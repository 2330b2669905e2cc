"""The targets a benchmark compares and how each is started and driven."""

import json
import os
import ssl
import subprocess
import time
import urllib.request

from procs import CLIENT_CN, Certs, LOAD_CPU, PROXY_CPU, Proc, free_port, run_tool, tls_context, wait_tls


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


class Targets:
    """The targets a workload measures: the upstream, the gateway in each
    mode, nginx and kube-rbac-proxy, with what starting and driving them
    takes (load generators, CPU accounting, records)."""

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
