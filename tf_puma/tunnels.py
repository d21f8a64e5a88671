"""Mutual-TLS tunnels (stunnel) in front of a task's TensorFlow server and to every other task.

TensorFlow's gRPC runtime has no TLS and no authentication. In a TLS deployment (`--tls-dir`)
each process — a party, or the client — starts one stunnel process beside it:

    public port (spec address)  --TLS-->  127.0.0.1:BASE+k   this task's TF server (k: its index)
    127.0.0.1:BASE+j  --TLS-->  task j's public port         for each other task j

and runs TensorFlow with the *loopback* cluster spec (`loopback_cluster`): task j is
127.0.0.1:BASE+j on every host, its own TF server there or a tunnel to it. Every host has the
same view, which matters because a TF client sends its cluster spec to the parties and they
reach each other through it. The TF server itself listens on loopback only.

The public port accepts only peers whose certificate chains to the deployment's CA (ca.pem) and
names another task of the cluster (tf_puma/certs.py); a tunnel to task j accepts only task j's
certificate. Cost: TLS 1.3 record encryption on every byte, and one more loopback hop each way.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time

from tf_puma import certs
from tf_puma.cluster import NUM_PARTIES, Cluster, sigterm_when_parent_dies

STUNNEL_NAMES = ("stunnel4", "stunnel")
START_TIMEOUT_S = 10.0
PORTS_FREE_WAIT_S = 3.0


class TunnelError(OSError):
    """The TLS tunnels could not start (stunnel missing, a port taken, a bad certificate)."""


def task_index(task: str) -> int:
    """Position of a task in the loopback plan: client 0, party i at i + 1."""
    return certs.TASK_NAMES.index(task)


def loopback_address(cluster: Cluster, task: str) -> str:
    return f"127.0.0.1:{cluster.loopback_base + task_index(task)}"


def public_address(cluster: Cluster, task: str) -> str:
    return cluster.client if task == certs.CLIENT_TASK else cluster.parties[task_index(task) - 1]


def loopback_cluster(cluster: Cluster) -> Cluster:
    """The spec TensorFlow uses in a TLS deployment: every task on 127.0.0.1:BASE+k."""
    return Cluster(client=loopback_address(cluster, certs.CLIENT_TASK),
                   parties=tuple(loopback_address(cluster, f"party{i}")  # type: ignore[arg-type]
                                 for i in range(NUM_PARTIES)),
                   loopback_base=cluster.loopback_base)


def stunnel_binary() -> str:
    for name in STUNNEL_NAMES:
        path = shutil.which(name)
        if path:
            return path
    raise TunnelError("stunnel is not installed: `apt-get install stunnel4` (make setup does it "
                      "where apt-get is available)")


def _host_port(address: str) -> tuple[str, int]:
    host, port = address.rsplit(":", 1)
    return host.strip("[]"), int(port)


def _stunnel_address(address: str) -> str:
    """A spec address ("host:port", "[v6]:port") as stunnel reads it: host and port split at
    the last colon, IPv6 without brackets (stunnel refuses "[::1]:5000", takes "::1:5000")."""
    host, port = _host_port(address)
    return f"{host}:{port}"


def stunnel_config(cluster: Cluster, task: str, files: certs.TlsFiles, public_bind: str,
                   log_path: str) -> str:
    """The stunnel configuration of `task`: one server service on its public port, one client
    service per other task. Names a peer must carry: any other task's (server side), exactly
    the target's (client side)."""
    common = [f"cert = {files.cert}", f"key = {files.key}", f"CAfile = {files.ca}",
              "verifyChain = yes", "requireCert = yes", "sslVersionMin = TLSv1.3",
              "socket = l:TCP_NODELAY=1", "socket = r:TCP_NODELAY=1"]
    _, port = _host_port(public_address(cluster, task))
    lines = ["foreground = yes", "pid =", "syslog = no", f"output = {log_path}", "debug = notice",
             "", "[public]", f"accept = {_stunnel_address(f'{public_bind}:{port}')}",
             f"connect = {loopback_address(cluster, task)}", *common]
    lines += [f"checkHost = {certs.peer_name(t)}" for t in certs.TASK_NAMES if t != task]
    for other in certs.TASK_NAMES:
        if other == task:
            continue
        lines += ["", f"[to-{other}]", "client = yes",
                  f"accept = {loopback_address(cluster, other)}",
                  f"connect = {_stunnel_address(public_address(cluster, other))}", *common,
                  f"checkHost = {certs.peer_name(other)}"]
    return "\n".join(lines) + "\n"


def listening_ports() -> set[int]:
    """TCP ports something listens on in this network namespace (/proc/net/tcp and tcp6,
    state 0A). Read, not probed with bind(): a process under the bind shim (tf_puma/listen.py)
    has its wildcard binds rewritten, and a probe connection would log a failed handshake."""
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as fh:
                next(fh)
                for line in fh:
                    fields = line.split()
                    if fields[3] == "0A":
                        ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        except OSError:
            continue
    return ports


class Tunnels:
    """The stunnel process of one task (`with Tunnels(...):` or start/stop). `public_bind` is the
    IP its public port listens on (default: the spec address's host)."""

    def __init__(self, cluster: Cluster, task: str, tls_dir: str, public_bind: str | None = None):
        from tf_puma import listen  # noqa: PLC0415 (same layer)

        self.cluster = cluster
        self.task = task
        self.files = certs.check_tls_dir(tls_dir, task)
        self.public_bind = public_bind or listen.host_of(public_address(cluster, task))
        self._dir: str | None = None
        self.process: subprocess.Popen | None = None

    @property
    def log_path(self) -> str:
        assert self._dir is not None
        return os.path.join(self._dir, "stunnel.log")

    def listening_addresses(self) -> list[str]:
        _, port = _host_port(public_address(self.cluster, self.task))
        return [f"{self.public_bind}:{port}",
                *(loopback_address(self.cluster, t) for t in certs.TASK_NAMES if t != self.task)]

    def start(self) -> "Tunnels":
        """Starts stunnel and waits until all four of its ports accept connections; a port that
        is taken, a certificate stunnel refuses or stunnel exiting is a TunnelError with its log."""
        own = loopback_address(self.cluster, self.task)
        free_by = time.monotonic() + PORTS_FREE_WAIT_S
        while True:  # the stunnel of a process that just ended may still hold them
            listening = listening_ports()
            taken = [a for a in [*self.listening_addresses(), own]
                     if _host_port(a)[1] in listening]
            if not taken or time.monotonic() > free_by:
                break
            time.sleep(0.1)
        if taken:
            raise TunnelError(f"TLS tunnels of {self.task} cannot start: port(s) in use "
                              f"{', '.join(taken)} (another deployment or program on this host? "
                              "the spec's loopback_base moves the loopback ports)")
        binary = stunnel_binary()
        self._dir = tempfile.mkdtemp(prefix=f"tf-puma-tls-{self.task}-")
        config = os.path.join(self._dir, "stunnel.conf")
        with open(config, "w", encoding="utf-8") as fh:
            fh.write(stunnel_config(self.cluster, self.task, self.files, self.public_bind,
                                    self.log_path))
        env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD",)}
        self.process = subprocess.Popen([binary, config], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                        env=env, preexec_fn=sigterm_when_parent_dies)
        deadline = time.monotonic() + START_TIMEOUT_S
        waiting = self.listening_addresses()
        while waiting:
            if self.process.poll() is not None:
                log = self.log()
                self.stop()
                raise TunnelError(f"stunnel for {self.task} exited with code "
                                  f"{self.process.returncode} while starting:\n{log}")
            listening = listening_ports()
            waiting = [a for a in waiting if _host_port(a)[1] not in listening]
            if time.monotonic() > deadline:
                log = self.log()
                self.stop()
                raise TunnelError(f"stunnel for {self.task} did not listen on {waiting} within "
                                  f"{START_TIMEOUT_S:.0f} s:\n{log}")
            time.sleep(0.05)
        return self

    def log(self) -> str:
        """What stunnel logged so far ("" once the files are removed)."""
        if self._dir is None:
            return ""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as fh:
                return fh.read()
        except (OSError, AssertionError):
            return ""

    def remove_files(self) -> None:
        """Removes the configuration and log directory (stunnel read the configuration at start
        and keeps its open log), leaving stunnel running until its parent exits."""
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def stop(self) -> None:
        """Stops stunnel (every link of this task closes) and removes its files."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.remove_files()

    def __enter__(self) -> "Tunnels":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

def recent_errors(log: str, lines: int = 3) -> str:
    """The last `lines` error lines of a stunnel log (certificate refusals, connection
    failures), as a sentence to append to an error; "" when there are none."""
    errors = [line.split(": ", 1)[-1] for line in log.splitlines()
              if " LOG3[" in line or " LOG4[" in line or "Rejected" in line]
    if not errors:
        return ""
    return "; the TLS tunnels report: " + " | ".join(errors[-lines:])
