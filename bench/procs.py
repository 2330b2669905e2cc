"""Processes and endpoints for the benchmark: starting a process pinned to a
CPU in its own process group (and stopping every one), sampling its CPU and
RSS, running a load generator, the development certificates and TLS checks
that a target is up."""

import os
import signal
import socket
import ssl
import subprocess
import threading
import time


CLK_TCK = os.sysconf("SC_CLK_TCK")
# Where processes run. "split" (default): the proxy alone on CPU 0, the
# load generator, upstream and fake apiserver on CPU 1, so the proxy's CPU
# time is its own. "shared" (BENCH_PINNING=shared): everything on CPU 0, so
# no request crosses CPUs; compared with a split run it shows how much of
# a hop's latency is cross-CPU wake-ups (bench/PROFILE.md).
PINNING = os.environ.get("BENCH_PINNING", "split")
if PINNING not in ("split", "shared"):
    raise SystemExit(f"BENCH_PINNING: {PINNING!r} is neither 'split' nor 'shared'")
PROXY_CPU = "0"
LOAD_CPU = "1" if PINNING == "split" else "0"
PINNING_TEXT = {
    "split": "proxy on CPU 0 (`taskset -c 0`); load generator, upstream and fake apiserver on CPU 1",
    "shared": "everything on CPU 0 (`BENCH_PINNING=shared`)",
}[PINNING]
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
