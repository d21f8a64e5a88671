"""The cluster: one `client` task and three `puma` party tasks, and how to reach them.

Spec (JSON, or TF_CONFIG's `cluster` dict): {"client": ["host:port"], "puma": ["h0:p", "h1:p",
"h2:p"]}. Nothing assumes localhost; `LocalCluster` starts three party servers on loopback for
tests and demos and always tears them down. Connecting this process as the client task:
tf_puma/connection.py.
"""

from __future__ import annotations

import atexit
import ctypes
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Mapping, Sequence

NUM_PARTIES = 3
PARTY_JOB = "puma"
CLIENT_JOB = "client"
# With --tls-dir, every host reaches task k (client 0, party i at i + 1) at 127.0.0.1:BASE + k
# (its own TF server, or a tunnel to that task): tf_puma/tunnels.py. Below Linux's ephemeral
# range (32768-60999), so no outgoing connection holds one of these ports.
DEFAULT_LOOPBACK_BASE = 24100


@dataclasses.dataclass(frozen=True)
class Cluster:
    """Addresses of the client task and of the three parties; `loopback_base` is the spec's
    optional "loopback_base" (only TLS deployments use it: tf_puma/tunnels.py)."""

    client: str
    parties: tuple[str, str, str]
    loopback_base: int = DEFAULT_LOOPBACK_BASE

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | str | os.PathLike) -> "Cluster":
        """From a dict, a JSON string, or a path to a JSON file (TF_CONFIG-style accepted)."""
        if isinstance(spec, (str, os.PathLike)):
            text = str(spec)
            if os.path.exists(text):
                with open(text, encoding="utf-8") as fh:
                    text = fh.read()
            try:
                spec = json.loads(text)
            except json.JSONDecodeError as err:
                raise ValueError(f"cluster spec is neither a JSON file nor JSON text: {err}") from err
        if "cluster" in spec and isinstance(spec["cluster"], Mapping):
            spec = spec["cluster"]
        missing = [job for job in (CLIENT_JOB, PARTY_JOB) if job not in spec]
        if missing:
            raise ValueError(f"cluster spec lacks job(s) {missing}: expected "
                             '{"client": ["host:port"], "puma": ["h0:p", "h1:p", "h2:p"]}')
        client, parties = list(spec[CLIENT_JOB]), list(spec[PARTY_JOB])
        if len(client) != 1 or len(parties) != NUM_PARTIES:
            raise ValueError(f"cluster spec needs 1 client task and {NUM_PARTIES} puma tasks, got "
                             f"{len(client)} and {len(parties)}")
        base = spec.get("loopback_base", DEFAULT_LOOPBACK_BASE)
        if not isinstance(base, int) or not 1024 <= base <= 65535 - NUM_PARTIES:
            raise ValueError(f"cluster spec's loopback_base {base!r} is not a port number in "
                             f"[1024, {65535 - NUM_PARTIES}]: its four ports (client, parties) "
                             "must be free on every host of a TLS deployment")
        return cls(client=client[0], parties=tuple(parties),  # type: ignore[arg-type]
                   loopback_base=base)

    def as_dict(self) -> dict[str, list[str]]:
        """The TensorFlow ClusterSpec dict (jobs only)."""
        return {CLIENT_JOB: [self.client], PARTY_JOB: list(self.parties)}

    def to_json(self) -> str:
        spec: dict[str, Any] = dict(self.as_dict())
        if self.loopback_base != DEFAULT_LOOPBACK_BASE:
            spec["loopback_base"] = self.loopback_base
        return json.dumps(spec)


def party_device(i: int) -> str:
    """TensorFlow device string of party i."""
    return f"/job:{PARTY_JOB}/replica:0/task:{i}/device:CPU:0"


CLIENT_DEVICE = f"/job:{CLIENT_JOB}/replica:0/task:0/device:CPU:0"


def wait_reachable(address: str, timeout: float) -> None:
    """Raises ConnectionError naming `address` unless a TCP connection succeeds within timeout."""
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
                return
        except OSError as err:
            last = err
            time.sleep(0.1)
    raise ConnectionError(f"cannot reach {address} within {timeout:.0f} s ({last})")


def port_in_use(address: str) -> bool:
    """Whether something on this machine already listens on `address`'s port."""
    port = int(address.rsplit(":", 1)[1])
    with socket.socket() as sock:
        # SO_REUSEADDR as gRPC's own listener: connections of a party that just died linger in
        # TIME_WAIT on its port and must not count as "in use" (a restart binds through them).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("", port))
        except OSError:
            return True
    return False


class PartyUnavailable(ConnectionError):
    """A party does not answer: stopped, overloaded, gone, or not a tf-puma party at all.
    `refused` is True when nothing listens on its address any more (a dead process), as opposed
    to a listener that does not answer in time (stopped, or only overloaded)."""

    def __init__(self, message: str, refused: bool = False):
        super().__init__(message)
        self.refused = refused


def check_party(index: int, address: str, timeout: float = 5.0) -> None:
    """Asks party `index` for its status in TensorFlow's own protocol (WorkerService.GetStatus,
    answered by a healthy TF server in milliseconds); raises PartyUnavailable naming the party
    when no TF server answers within `timeout` (a TCP connection alone proves nothing: a
    stopped process or another program on the port accepts it and then hangs the caller)."""
    import grpc  # noqa: PLC0415

    with grpc.insecure_channel(address) as channel:
        get_status = channel.unary_unary("/tensorflow.WorkerService/GetStatus",
                                         request_serializer=lambda _: b"",
                                         response_deserializer=lambda raw: raw)
        try:
            get_status(None, timeout=timeout)
        except grpc.RpcError as err:
            raise PartyUnavailable(
                f"party {index} at {address} does not answer as a TensorFlow server within "
                f"{timeout:.0f} s ({err.code().name}): it is stopped, overloaded, restarting or "
                "not a tf-puma party; check `tf-puma party --task "
                f"{index}` on that host", refused=err.code() == grpc.StatusCode.UNAVAILABLE
            ) from None


def check_parties(cluster: "Cluster", timeout: float = 5.0) -> None:
    """check_party for all three parties at once (the slowest bounds the wait)."""
    import concurrent.futures  # noqa: PLC0415

    with concurrent.futures.ThreadPoolExecutor(NUM_PARTIES) as pool:
        futures = [pool.submit(check_party, i, a, timeout) for i, a in enumerate(cluster.parties)]
        for future in futures:
            future.result()


def await_parties(cluster: "Cluster", within_s: float, check_timeout: float = 2.0) -> None:
    """check_parties until all three answer or `within_s` has passed (a party whose watcher is
    replacing its server answers again in ~3-4 s); raises the last PartyUnavailable."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            check_parties(cluster, timeout=min(check_timeout,
                                               max(1.0, deadline - time.monotonic())))
            return
        except PartyUnavailable:
            if time.monotonic() >= deadline:
                raise
        time.sleep(0.5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


EXIT_WITH_PARENT_ENV = "TF_PUMA_EXIT_WITH_PARENT"


def sigterm_when_parent_dies() -> bool:
    """Asks Linux (prctl PR_SET_PDEATHSIG) for SIGTERM when this process's parent dies, even when
    it is killed outright (OOM killer, SIGKILL). False where prctl is not available. Also used
    between fork and exec, for helper processes (stunnel)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        return False
    return True


def exit_with_parent() -> None:
    """In a local party started by LocalCluster (its pid in TF_PUMA_EXIT_WITH_PARENT): SIGTERM
    when that process dies, so no party server outlives its client; exit at once if it is
    already gone."""
    expected = os.environ.get(EXIT_WITH_PARENT_ENV)
    if not expected or not sigterm_when_parent_dies():
        return
    if os.getppid() != int(expected):
        sys.exit(f"tf-puma party: the process that started this party ({expected}) is gone")


def _child_pid(pid: int) -> int | None:
    """The first child of process `pid` (Linux /proc), or None."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as fh:
            children = fh.read().split()
    except OSError:
        return None
    return int(children[0]) if children else None


START_ATTEMPTS = 3  # LocalCluster starts on fresh ports when one was taken meanwhile
# A party's exit status when its port is taken (`tf-puma party`; other start-up errors exit 1).
# LocalCluster reads it: the program that held the port may have let it go by the time it looks.
PORT_IN_USE_EXIT = 3


class LocalCluster:
    """Three party servers on 127.0.0.1 in subprocesses (`with LocalCluster() as cluster:`).

    `shares_dir` is a bundle root written by `bundle.write_bundles`: party i gets party{i}/.
    Each party is `tf-puma party` (a watching process and its server child, one process group);
    `party_args` are added to its command line, `party_stderr` receives its log (default: none).
    The three parties share this host's cores: each runs its kernels on a third of them
    (--intra-op-threads; all three on every core oversubscribe it), unless `party_args` says
    otherwise.
    `recycle_growth` is the parties' --recycle-growth, 0 (off) by default: local parties serve
    one client process and end with it, and a client that drives the cluster with its own
    tf.functions (not tf_puma.load or tf-puma serve, which reconnect) would lose its context
    to a recycled server.
    """

    def __init__(self, start_timeout: float = 60.0, extra_env: Mapping[str, str] | None = None,
                 shares_dir: str | None = None, party_args: Sequence[str] = (),
                 party_stderr: Any = subprocess.DEVNULL, recycle_growth: float = 0.0):
        self.cluster = self._free_cluster()
        self._start_timeout = start_timeout
        # The party app's process settings (tf_puma.apps.APP_ENVIRONMENT) are applied by the
        # party command itself; `extra_env` adds to them.
        self._env = {**os.environ, **(extra_env or {})}
        self._shares_dir = shares_dir
        threads = [] if any(a.startswith("--intra-op-threads") for a in party_args) else [
            "--intra-op-threads", str(max(1, len(os.sched_getaffinity(0)) // NUM_PARTIES))]
        self._party_args = ["--recycle-growth", str(recycle_growth), *threads, *party_args]
        self._party_stderr = party_stderr
        self.processes: list[subprocess.Popen] = []

    def _spawn(self, i: int) -> subprocess.Popen:
        shares = ([] if self._shares_dir is None else
                  ["--shares", os.path.join(self._shares_dir, f"party{i}")])
        return subprocess.Popen(
            [sys.executable, "-m", "tf_puma.apps.cli", "party", "--cluster", self.cluster.to_json(),
             "--task", str(i), *shares, *self._party_args],
            env={**self._env, EXIT_WITH_PARENT_ENV: str(os.getpid())},
            stdout=subprocess.PIPE, stderr=self._party_stderr, text=True,
            start_new_session=True)  # its own process group: the watcher and its server

    @staticmethod
    def _free_cluster() -> Cluster:
        ports = [free_port() for _ in range(NUM_PARTIES + 1)]
        return Cluster(client=f"127.0.0.1:{ports[0]}",
                       parties=tuple(f"127.0.0.1:{p}" for p in ports[1:]))  # type: ignore

    def start(self) -> Cluster:
        """Starts the three parties and waits until each is ready. A free port can be taken by
        another program between choosing it and the party binding it (seen with two test
        processes starting clusters at once, where another process's outgoing connection can
        hold it only briefly): when a party exits with PORT_IN_USE_EXIT or a port is still
        taken, the cluster starts again on fresh ports, up to START_ATTEMPTS times; any other
        start-up failure is raised at once."""
        atexit.register(self.stop)
        for attempt in range(1, START_ATTEMPTS + 1):
            self.processes = [self._spawn(i) for i in range(NUM_PARTIES)]
            try:
                for i, proc in enumerate(self.processes):
                    self._wait_ready(i, proc)
                return self.cluster
            except Exception as err:
                refused = [a for a, p in zip(self.cluster.parties, self.processes)
                           if p.poll() == PORT_IN_USE_EXIT]
                self.stop()
                taken = [a for a in self.cluster.parties if port_in_use(a)] or refused
                if not taken or not isinstance(err, RuntimeError):
                    raise
                if attempt == START_ATTEMPTS:
                    raise RuntimeError(f"{err}: its port was taken by another program "
                                       f"({', '.join(taken)}), {attempt} times in a row") from None
                self.cluster = self._free_cluster()
        raise AssertionError("unreachable")

    def _wait_ready(self, i: int, proc: subprocess.Popen) -> None:
        deadline = time.monotonic() + self._start_timeout
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"party {i} exited with code {proc.wait()} while starting")
            if line.startswith("tf-puma party ready"):
                return
        raise TimeoutError(f"party {i} did not start within {self._start_timeout} s")

    def kill_party(self, i: int) -> None:
        """Stops party i abruptly (failure tests): its watching process and its server."""
        self.signal_party(i, signal.SIGKILL)
        self.processes[i].wait()

    def signal_party(self, i: int, signum: int) -> None:
        """Sends `signum` to party i's processes (SIGSTOP/SIGCONT in tests)."""
        try:
            os.killpg(self.processes[i].pid, signum)
        except ProcessLookupError:
            pass

    def server_pid(self, i: int) -> int | None:
        """The pid of party i's TensorFlow server (the watching process's child), or None."""
        return _child_pid(self.processes[i].pid)

    def restart_party(self, i: int) -> None:
        """Starts party i again on its port (after kill_party): a fresh process, as an operator
        restarting a crashed party would."""
        if self.processes[i].poll() is None:
            raise RuntimeError(f"party {i} is still running; kill_party({i}) first")
        self.processes[i] = self._spawn(i)
        self._wait_ready(i, self.processes[i])

    def stop(self) -> None:
        """Stops the parties, after the client's connection (if to this cluster) has released
        its functions on them."""
        from tf_puma import connection  # noqa: PLC0415 (same layer; connection imports us)

        conn = connection.current()
        if conn is not None and conn.cluster == self.cluster and any(
                proc.poll() is None for proc in self.processes):
            conn.close()
        for i, proc in enumerate(self.processes):
            if proc.poll() is None:
                proc.terminate()  # the watcher stops its server
                self.signal_party(i, signal.SIGCONT)  # a stopped (SIGSTOP) party handles it now
        for i, proc in enumerate(self.processes):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.signal_party(i, signal.SIGKILL)
                proc.wait()

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
