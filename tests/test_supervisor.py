"""The party's watching process (tf_puma/apps/supervisor.py) with a stand-in server: it passes
the ready line through, restarts a server that died, recycles an idle server grown past its
size after the first session (never a busy one), and ends with a server's start-up error.
The real party's restart and recycling under clients: test_faults.py."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# A stand-in server: "sessions" burn CPU (and may keep memory), idle spells sleep. Its script
# for the n-th start is PLAN[n]; "ready" prints the ready line. Like a real party server
# (cluster.exit_with_parent) it asks for SIGTERM when its supervisor dies: the tests end the
# supervisor by a timeout's SIGKILL, and the stand-ins outlived the suite by up to 90 s.
FAKE_SERVER = textwrap.dedent("""
    import ctypes, os, signal, sys, time
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # as a real server: ends with its supervisor
    counter = os.path.join(sys.argv[1], "starts")
    n = int(open(counter).read()) if os.path.exists(counter) else 0
    open(counter, "w").write(str(n + 1))
    plan = {plan!r}[min(n, {last})]
    kept = []
    for step in plan:
        kind, arg = step
        if kind == "ready":
            print("tf-puma party ready: fake", n, flush=True)
        elif kind == "busy":  # a client session: arg MiB kept, 0.5 s of CPU
            kept.append(bytearray(arg * 2**20))
            end = time.process_time() + 0.5
            while time.process_time() < end:
                pass
        elif kind == "idle":
            time.sleep(arg)
        elif kind == "exit":
            print("fake server failing", file=sys.stderr, flush=True)
            sys.exit(arg)
    time.sleep(60)
""")

HARNESS = textwrap.dedent("""
    import sys
    from tf_puma.apps import supervisor
    supervisor.IDLE_S = 0.5
    supervisor.POLL_S = 0.1
    supervisor.QUICK_DEATH_S = 2.0
    sup = supervisor.Supervisor([sys.executable, sys.argv[1], sys.argv[2]], {{}},
                                recycle_growth={growth})
    sys.exit(sup.run())
""")


def _supervise(tmp_path, plan: list, growth: float, timeout: float) -> subprocess.CompletedProcess:
    server = tmp_path / "server.py"
    server.write_text(FAKE_SERVER.format(plan=plan, last=len(plan) - 1))
    harness = tmp_path / "harness.py"
    harness.write_text(HARNESS.format(growth=growth))
    try:
        return subprocess.run([sys.executable, str(harness), str(server), str(tmp_path)],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as stopped:
        out = stopped.stdout.decode() if isinstance(stopped.stdout, bytes) else stopped.stdout
        err = stopped.stderr.decode() if isinstance(stopped.stderr, bytes) else stopped.stderr
        return subprocess.CompletedProcess(stopped.cmd, -1, out or "", err or "")


def test_an_idle_server_grown_past_its_first_session_is_recycled(tmp_path):
    # Start 0: a first session keeping 100 MiB (the baseline, ~110 MiB), idle, a session keeping
    # 200 MiB, idle -> recycled. Start 1: sessions keeping 5 MiB stay far under 1.5 x the
    # baseline: never recycled again.
    plan = [[("ready", 0), ("busy", 100), ("idle", 1.5), ("busy", 200), ("idle", 30)],
            [("ready", 0), ("busy", 5), ("idle", 1.5), ("busy", 5), ("idle", 30)]]
    done = _supervise(tmp_path, plan, growth=0.5, timeout=7)
    assert done.stdout.count("tf-puma party ready") == 2, done.stdout + done.stderr
    assert done.stderr.count("recycling the idle server") == 1, done.stderr
    assert (tmp_path / "starts").read_text() == "2"


def test_a_busy_or_small_server_is_left_alone(tmp_path):
    # A server that never goes idle after growing, or grows less than the limit, keeps running.
    plan = [[("ready", 0), ("busy", 100), ("idle", 1.5)] + [("busy", 200)] * 6]
    done = _supervise(tmp_path, plan, growth=0.5, timeout=6)
    assert "recycling" not in done.stderr and done.stdout.count("ready") == 1, done.stderr
    plan = [[("ready", 0), ("busy", 100), ("idle", 1.5), ("busy", 200), ("idle", 30)]]
    done = _supervise(tmp_path, plan, growth=0, timeout=5)  # 0: recycling off
    assert "recycling" not in done.stderr and done.stdout.count("ready") == 1, done.stderr


def test_a_dead_server_is_restarted_and_a_start_up_error_ends_the_command(tmp_path):
    plan = [[("ready", 0), ("idle", 0.5), ("exit", 7)], [("ready", 0), ("idle", 30)]]
    done = _supervise(tmp_path, plan, growth=0.1, timeout=4)
    assert done.stdout.count("tf-puma party ready") == 2, done.stdout + done.stderr
    assert "the server exited (code 7); restarting it" in done.stderr
    (tmp_path / "starts").unlink()
    done = _supervise(tmp_path, [[("exit", 3)]], growth=0.1, timeout=20)
    assert done.returncode == 3 and "fake server failing" in done.stderr, done
    assert (tmp_path / "starts").read_text() == "1"  # a start-up error is not retried


def test_a_server_that_keeps_dying_is_given_up(tmp_path):
    done = _supervise(tmp_path, [[("ready", 0), ("exit", 5)]], growth=0.1, timeout=30)
    assert done.returncode == 5 and "giving up" in done.stderr, done
    assert (tmp_path / "starts").read_text() == "3"
