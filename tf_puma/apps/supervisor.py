"""`tf-puma party`'s outer process: runs the party's TensorFlow server as a child and keeps it
healthy. It never imports TensorFlow.

Why: TensorFlow's eager service never frees a finished client's context on a server. Measured
here (TF 2.21, a plain `tf.distribute.Server`, keep_alive_secs=6): a client that ran one
40,000-op function left 250-320 MiB on the server per session, still held minutes later, with or
without deleting its functions first; a 1-layer MiniLM session leaves 30-60 MiB per party. A
party serving many short client processes (`tf-puma run`, scripts) grew without bound. The server
cannot be stopped in-process (TF: "Servers don't support clean shutdown"), so the supervisor
replaces the whole server process when

- it has grown past `(1 + recycle_growth) x` its size after its first client session, and
- it has been idle (no CPU) for IDLE_S seconds: between client sessions, never during a call.

A client still connected to a recycled party loses its context there; its next call is
reconnected and run again by `SecureModel` (fresh keys and streams), as after any party restart.
The supervisor also restarts a server that died (a crash, the OOM killer) and gives up after
MAX_QUICK_DEATHS deaths in a row within QUICK_DEATH_S of starting. Errors at start (port in use,
wrong bundle) end the command with the server's exit code, as before.

Cost: one idle Python process (~15 MiB) and a /proc read per second.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, Sequence

SERVER_ENV = "TF_PUMA_PARTY_SERVER"  # set in the child: "run the server here"
POLL_S = 1.0
IDLE_S = 2.0  # no CPU for this long: no call is running
IDLE_CPU_S = 0.01  # CPU seconds per poll that still count as idle (gRPC keep-alives)
FIRST_SESSION_CPU_S = 0.03  # CPU after "ready" that marks a first client session (a tiny
# model's whole session takes ~0.05 s on a party)
QUICK_DEATH_S = 30.0
MAX_QUICK_DEATHS = 3
STOP_WAIT_S = 10.0
READY_PREFIX = "tf-puma party ready"
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (/proc/PID/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Supervisor:
    """Keeps one party server child running (see the module docstring)."""

    def __init__(self, command: Sequence[str], env: dict[str, str], recycle_growth: float,
                 log: Callable[[str], None] = lambda line: print(line, file=sys.stderr,
                                                                   flush=True)):
        self.command = list(command)
        self.env = {**env, SERVER_ENV: "1", "TF_PUMA_EXIT_WITH_PARENT": str(os.getpid())}
        self.recycle_growth = recycle_growth
        self.log = log
        self.child: subprocess.Popen | None = None
        self.baseline_mib: float | None = None  # the server's size after its first session
        self.recycles = 0
        self.restarts = 0
        self._stopping = False

    def _start(self) -> bool:
        """Starts the server, passing its output through; False if it exits before ready."""
        child = subprocess.Popen(self.command, env=self.env, stdout=subprocess.PIPE, text=True,
                                 bufsize=1)
        self.child = child
        ready = threading.Event()

        def pass_through() -> None:
            assert child.stdout is not None
            for line in child.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
                if line.startswith(READY_PREFIX):
                    ready.set()

        reader = threading.Thread(target=pass_through, name="tf-puma-party-output", daemon=True)
        reader.start()
        while not ready.wait(0.2):
            if child.poll() is not None:
                reader.join(2.0)  # its last lines (the error) are printed
                return ready.is_set()
        return True

    def _stop_child(self) -> None:
        child = self.child
        if child is None or child.poll() is not None:
            return
        child.send_signal(signal.SIGTERM)
        child.send_signal(signal.SIGCONT)
        try:
            child.wait(STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()

    def _on_signal(self, signum: int, frame: object) -> None:
        del frame
        self._stopping = True
        self._stop_child()
        sys.exit(128 + signum)

    def run(self) -> int:
        """Serves until a signal or a server that cannot start; returns the exit code."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        quick_deaths = 0
        while True:
            started = time.monotonic()
            if not self._start():
                assert self.child is not None
                code = self.child.wait()
                if self.restarts == 0 and self.recycles == 0:
                    return code or 1  # a start-up error: the server printed why
                quick_deaths += 1
                if quick_deaths >= MAX_QUICK_DEATHS:
                    self.log(f"tf-puma party: the server failed to start {quick_deaths} times "
                             f"in a row (exit code {code}); giving up")
                    return code or 1
                continue
            reason = self._watch()
            if reason == "recycle":
                self.recycles += 1
                quick_deaths = 0
                continue
            assert self.child is not None
            code = self.child.returncode
            quick_deaths = quick_deaths + 1 if time.monotonic() - started < QUICK_DEATH_S else 0
            if quick_deaths >= MAX_QUICK_DEATHS:
                self.log(f"tf-puma party: the server died {quick_deaths} times within "
                         f"{QUICK_DEATH_S:.0f} s of starting (last exit code {code}); giving up")
                return code if code and code > 0 else 1
            self.restarts += 1
            self.log(f"tf-puma party: the server exited (code {code}); restarting it "
                     f"(restart {self.restarts}); clients reconnect by themselves")

    def _watch(self) -> str:
        """Polls the running server: "died" when it exits, "recycle" after replacing it."""
        child = self.child
        assert child is not None
        last_cpu = cpu_seconds(child.pid)
        ready_cpu = last_cpu
        idle_since: float | None = None
        while True:
            time.sleep(POLL_S)
            if child.poll() is not None:
                return "died"
            try:
                cpu = cpu_seconds(child.pid)
                size = rss_mib(child.pid)
            except (FileNotFoundError, ProcessLookupError):
                continue  # exiting: poll() tells next time
            now = time.monotonic()
            if cpu - last_cpu > IDLE_CPU_S:
                idle_since = None
            elif idle_since is None:
                idle_since = now
            last_cpu = cpu
            if idle_since is None or now - idle_since < IDLE_S:
                continue
            if self.baseline_mib is None:
                if cpu - ready_cpu >= FIRST_SESSION_CPU_S:
                    self.baseline_mib = size
                continue
            if self.recycle_growth > 0 and size > (1 + self.recycle_growth) * self.baseline_mib:
                self.log(f"tf-puma party: recycling the idle server ({size:.0f} MiB > "
                         f"{1 + self.recycle_growth:.2f} x {self.baseline_mib:.0f} MiB after "
                         "its first session; TensorFlow keeps every finished client's graphs)")
                self._stop_child()
                return "recycle"


def supervise(recycle_growth: float) -> int:
    """Runs this very command again as the server child (SERVER_ENV set) under a Supervisor."""
    command = [sys.executable, "-m", "tf_puma.apps.cli", *sys.argv[1:]]
    return Supervisor(command, dict(os.environ), recycle_growth).run()


def in_server() -> bool:
    """True in the server child (the process that starts TensorFlow)."""
    return os.environ.get(SERVER_ENV) == "1"
