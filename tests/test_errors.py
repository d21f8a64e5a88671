"""Errors a user can hit: wrong inputs, values out of range, missing or dead parties."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

import tf_puma
from tf_puma.cluster import Cluster, check_parties, free_port


def test_wrong_dtype_is_rejected(cluster):
    @tf.function
    def run(a):
        return tf_puma.reveal(tf_puma.share(a))

    with pytest.raises(TypeError, match="cannot secret-share dtype string"):
        run(tf.constant(["a"]))


def test_dynamic_shape_is_rejected(cluster):
    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
    def run(a):
        return tf_puma.reveal(tf_puma.share(a, name="tokens"))

    with pytest.raises(ValueError, match="tokens: secure inputs need a static shape"):
        run.get_concrete_function()


def test_value_out_of_fixed_point_range(cluster):
    @tf.function
    def run(a):
        return tf_puma.reveal(tf_puma.share(a, name="features"))

    with pytest.raises(tf.errors.InvalidArgumentError, match="features has a value outside"):
        run(tf.constant([1.0, 1e9]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="NaN"):
        run(tf.constant([np.nan, 1.0]))


def test_matmul_shape_mismatch(cluster):
    @tf.function
    def run(a, b):
        return tf_puma.reveal(tf_puma.share(a) @ tf_puma.share(b))

    with pytest.raises(ValueError, match="Dimensions must be equal|inner dimensions"):
        run(tf.zeros([2, 3]), tf.zeros([4, 2]))


def test_cluster_spec_errors():
    with pytest.raises(ValueError, match="lacks job"):
        Cluster.from_spec({"puma": ["a:1", "b:2", "c:3"]})
    with pytest.raises(ValueError, match="3 puma tasks"):
        Cluster.from_spec({"client": ["a:1"], "puma": ["b:2"]})
    with pytest.raises(ValueError, match="neither a JSON file nor JSON text"):
        Cluster.from_spec("no-such-file.json")


def _run_script(code: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout)


def test_missing_party_is_a_clear_error_within_the_deadline():
    spec = {"client": [f"127.0.0.1:{free_port()}"],
            "puma": [f"127.0.0.1:{free_port()}" for _ in range(3)]}
    start = time.monotonic()
    proc = _run_script(f"""
        import tf_puma
        tf_puma.connect({spec!r}, timeout=2)
    """, timeout=60)
    assert proc.returncode != 0
    assert "party 0 is not reachable" in proc.stderr
    assert "tf-puma party --cluster SPEC --task 0" in proc.stderr
    assert time.monotonic() - start < 30


def test_dead_party_fails_the_call_within_the_deadline():
    proc = _run_script("""
        import time, numpy as np, tensorflow as tf, tf_puma
        local = tf_puma.LocalCluster()
        spec = local.start()
        tf_puma.connect(spec)
        @tf.function
        def run(a):
            s = tf_puma.share(a)
            return tf_puma.reveal(s * s)
        x = tf.constant(np.ones(16))
        print("first", run(x).numpy().sum(), flush=True)
        local.kill_party(2)
        start = time.monotonic()
        try:
            run(x).numpy()
            print("NO ERROR")
        except Exception as err:
            print("ERROR", type(err).__name__, round(time.monotonic() - start, 1), flush=True)
            print(str(err)[:300])
        local.stop()
    """, timeout=240)
    assert "first 16.0" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith(("ERROR", "NO ERROR")))
    assert line.startswith("ERROR"), proc.stdout
    assert float(line.split()[-1]) < 60


def test_local_parties_exit_when_their_client_is_killed():
    # A client killed outright (OOM killer, SIGKILL) runs no cleanup; its local parties must not
    # stay behind holding gigabytes of shares.
    script = textwrap.dedent("""
        import os, signal, tf_puma
        local = tf_puma.LocalCluster()
        local.start()
        pids = [p.pid for p in local.processes] + [local.server_pid(i) for i in range(3)]
        print(" ".join(str(p) for p in pids), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    pids = [int(p) for p in done.stdout.split()]
    assert len(pids) == 6, done.stderr[-2000:]  # the watchers and their servers
    deadline = time.monotonic() + 15
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [p for p in pids if _running(p)]
    assert not alive, f"parties {alive} outlived their killed client"


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"   # zombies have exited
    except FileNotFoundError:
        return False


def test_cluster_spec_forms(tmp_path):
    """A dict, JSON text, a JSON file and TF_CONFIG's {"cluster": ..., "task": ...} all give the
    same cluster; it round-trips through to_json."""
    spec = {"client": ["c:1"], "puma": ["p0:2", "p1:3", "p2:4"]}
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps(spec))
    tf_config = {"cluster": spec, "task": {"type": "puma", "index": 1}}
    forms = [spec, json.dumps(spec), str(path), path, tf_config, json.dumps(tf_config)]
    clusters = {Cluster.from_spec(form) for form in forms}
    assert clusters == {Cluster(client="c:1", parties=("p0:2", "p1:3", "p2:4"))}
    assert Cluster.from_spec(clusters.pop().to_json()).as_dict() == spec


def test_connecting_again_is_a_no_op_and_another_cluster_an_error(cluster):
    same = tf_puma.connect(cluster.cluster.to_json())
    assert same is tf_puma.connection.current() and same.cluster == cluster.cluster
    other = Cluster(client="127.0.0.1:1", parties=("127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"))
    with pytest.raises(RuntimeError, match="already connected.*one process per cluster"):
        tf_puma.connect(other)


class _RestartingParties:
    """A connection whose parties all answer; counts reconnects."""

    def __init__(self, refused: int = 0):
        self.reconnects, self.refused = 0, refused

    def check(self, timeout: float) -> None:
        del timeout

    def reconnect(self) -> None:
        self.reconnects += 1
        if self.reconnects <= self.refused:  # another party's server went down meanwhile
            raise tf.errors.UnavailableError(None, None, "failed to connect to all addresses "
                                             "while calling /tensorflow.eager.EagerService/"
                                             "UpdateContext")


def _model_meeting_restarts(restarts: int, monkeypatch, refused: int = 0) -> tuple:
    """A SecureModel whose signature fails with TensorFlow's lost-context error `restarts`
    times (a party server restarted or recycled under it), then answers."""
    from tf_puma import secure_model  # noqa: PLC0415

    monkeypatch.setattr(secure_model, "check_inputs", lambda manifest, inputs: inputs)
    calls = []

    def signature(**feeds):
        calls.append(feeds)
        if len(calls) <= restarts:
            raise tf.errors.AbortedError(None, None, "Unable to find a context_id matching the "
                                         "specified one on /job:puma/replica:0/task:"
                                         f"{(len(calls) - 1) % 3}")
        return {"y": feeds["x"] * 2}

    model = object.__new__(secure_model.SecureModel)
    model.connection, model.signature, model.dir = _RestartingParties(refused), signature, "m"
    model.manifest = type("Manifest", (), {"generation": None})()
    model.deadline_s, model._last_call_s, model._needs_reconnect = 5.0, None, False
    return model, calls


def test_a_call_is_rerun_through_one_restart_per_party(monkeypatch):
    """The three parties' watchers recycle their servers each at its own moment: one call can
    meet three restarts in a row (CI saw two) and is rerun after each, then answers."""
    model, calls = _model_meeting_restarts(3, monkeypatch)
    assert float(model(x=tf.constant(1.5))["y"]) == 3.0
    assert len(calls) == 4 and model.connection.reconnects == 3 and not model._needs_reconnect


def test_a_fourth_restart_in_one_call_is_an_error_naming_the_party(monkeypatch):
    from tf_puma.cluster import PartyUnavailable  # noqa: PLC0415

    model, calls = _model_meeting_restarts(4, monkeypatch)
    with pytest.raises(PartyUnavailable, match=r"party 0 restarted again: the call failed 4 "
                                                r"times.*AbortedError: Unable to find a context"):
        model(x=tf.constant(1.5))
    assert len(calls) == 4 and model._needs_reconnect  # the next call reconnects first


def test_a_reconnect_refused_by_a_party_going_down_counts_as_one_restart(monkeypatch):
    """CI: a party answered the check, then its server was recycled before the reconnect's
    UpdateContext reached it (UnavailableError out of the call, before this was caught)."""
    model, calls = _model_meeting_restarts(1, monkeypatch, refused=1)
    assert float(model(x=tf.constant(1.5))["y"]) == 3.0
    assert len(calls) == 2 and model.connection.reconnects == 2 and not model._needs_reconnect


def test_a_local_cluster_starts_again_on_fresh_ports_when_one_was_taken(monkeypatch):
    """CI: a port chosen free was bound by another process before party 0 started ("party 0
    exited with code 1 while starting"); the cluster now starts again on fresh ports, also when
    the port is free again by the time it looks (the party exits with PORT_IN_USE_EXIT). A port
    that stays taken every time is named."""
    import socket  # noqa: PLC0415

    from tf_puma import cluster as cluster_lib  # noqa: PLC0415

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    held = holder.getsockname()[1]
    real = cluster_lib.free_port
    picks = iter([real(), held])  # the client's port, then party 0's: the held one

    monkeypatch.setattr(cluster_lib, "free_port", lambda: next(picks, None) or real())
    local = tf_puma.LocalCluster()
    assert local.cluster.parties[0] == f"127.0.0.1:{held}"
    try:
        spec = local.start()
        assert f"127.0.0.1:{held}" not in spec.parties
        check_parties(spec, timeout=10.0)  # all three answer
    finally:
        local.stop()
    # The holder lets go before the cluster looks (CI: another process's brief outgoing
    # connection): the party's exit status alone says why, and the cluster starts again.
    picks = iter([real(), held])
    monkeypatch.setattr(cluster_lib, "port_in_use", lambda address: False)
    local = tf_puma.LocalCluster()
    try:
        spec = local.start()
        assert f"127.0.0.1:{held}" not in spec.parties
    finally:
        local.stop()
    monkeypatch.undo()
    monkeypatch.setattr(cluster_lib, "free_port", lambda: held)
    monkeypatch.setattr(cluster_lib, "START_ATTEMPTS", 2)
    with pytest.raises(RuntimeError, match=f"party 0 exited with code 3 while starting: its port "
                                           f"was taken by another program \\(127.0.0.1:{held}, "
                                           f"127.0.0.1:{held}, 127.0.0.1:{held}\\), 2 times"):
        tf_puma.LocalCluster().start()
    holder.close()



def test_a_party_check_tells_a_dead_address_from_one_that_does_not_answer():
    """check_party's `refused`: nothing listening (a killed party) is refused at once; a
    listener that never answers (a stopped party, or only a slow one) times out, not refused."""
    import socket  # noqa: PLC0415

    from tf_puma.cluster import PartyUnavailable, check_party  # noqa: PLC0415

    with pytest.raises(PartyUnavailable, match="party 2 at 127.0.0.1:") as dead:
        check_party(2, f"127.0.0.1:{free_port()}", timeout=5.0)
    assert dead.value.refused
    with socket.socket() as silent:  # accepts (the kernel's backlog) and never speaks gRPC
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        start = time.monotonic()
        with pytest.raises(PartyUnavailable, match="does not answer") as stopped:
            check_party(1, f"127.0.0.1:{silent.getsockname()[1]}", timeout=1.0)
    assert not stopped.value.refused and 0.9 < time.monotonic() - start < 5


class _SlowSession:
    """A TF1 session stand-in whose run takes `seconds`."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def run(self, fetches, feed_dict):
        time.sleep(self.seconds)
        return {"y": 1}


def _servable_checked(monkeypatch, checks: list[str], run_s: float):
    """A Servable (no model) whose health checks answer from `checks` ('ok', 'slow': a timeout,
    'refused'; the last one repeats), checked every 0.05 s with a 0.5 s miss allowance."""
    from tf_puma.apps.serving import servable as servable_lib  # noqa: PLC0415
    from tf_puma.cluster import PartyUnavailable  # noqa: PLC0415

    answers = iter(checks)
    last = [checks[-1]]

    def check(cluster, timeout):
        answer = next(answers, last[0])
        if answer != "ok":
            raise PartyUnavailable(f"party 1 {answer}", refused=answer == "refused")

    monkeypatch.setattr(servable_lib, "check_parties", check)
    monkeypatch.setattr(servable_lib, "HEALTH_EVERY_S", 0.05)
    monkeypatch.setattr(servable_lib, "HEALTH_MISS_S", 0.5)
    served = object.__new__(servable_lib.Servable)
    served.cluster, served.session = None, _SlowSession(run_s)
    served._last_call_s, served._party_failed, served.calls = None, None, 0
    return served


def test_a_served_call_outlives_a_few_slow_health_checks(monkeypatch):
    """CI, with the 2 cores also running benchmarks: a restarted party's 1 s status check timed
    out during a served call, the call was abandoned as if the party were down, twice, and the
    request failed ('a party restarted during the call and the call failed again'). Misses now
    count only when they last HEALTH_MISS_S; a refused connection still ends the call at once."""
    served = _servable_checked(monkeypatch, ["slow", "slow", "slow", "ok"], run_s=0.6)
    assert served._run({"y": "y:0"}, {}) == {"y": 1} and served.calls == 1
    start = time.monotonic()
    with pytest.raises(tf.errors.UnavailableError, match="party 1 slow"):
        _servable_checked(monkeypatch, ["slow"], run_s=30)._run({"y": "y:0"}, {})
    assert 0.5 <= time.monotonic() - start < 2
    start = time.monotonic()
    with pytest.raises(tf.errors.UnavailableError, match="party 1 refused"):
        _servable_checked(monkeypatch, ["ok", "refused"], run_s=30)._run({"y": "y:0"}, {})
    assert time.monotonic() - start < 0.5


def _servable_failing(monkeypatch, faults: int):
    """A Servable (no model) whose first `faults` runs fail the way CI's did once a killed party
    was back: UnavailableError from the client task while all parties answer (the client
    server's channel to the restarted party still in gRPC's reconnect backoff)."""
    from types import SimpleNamespace  # noqa: PLC0415

    from tf_puma.apps.serving import servable as servable_lib  # noqa: PLC0415

    monkeypatch.setattr(servable_lib, "await_parties", lambda cluster, within_s: None)
    monkeypatch.setattr(servable_lib, "RECONNECT_PAUSE_S", 0.1)
    served = object.__new__(servable_lib.Servable)
    served.manifest = SimpleNamespace(signature="serving_default")
    served.signature_defs = {"serving_default": SimpleNamespace(
        outputs={"y": SimpleNamespace(name="y:0")}, inputs={})}
    served._lock, served._party_failed, served.cluster = threading.Lock(), None, None
    served.loads, served.runs = 0, 0

    def load():
        served.loads += 1

    def run(fetches, feed_dict):
        served.runs += 1
        if served.runs <= faults:
            raise tf.errors.UnavailableError(
                None, None, "From /job:client/replica:0/task:0:\nConnection reset by peer")
        return {"y": 1}

    served._load, served._run = load, run
    return served


def test_a_served_call_waits_out_the_clusters_reconnect_backoff(monkeypatch):
    """CI: after a killed party was restarted, the served call's run and its one rerun in a new
    session both failed (UnavailableError from the client task) although the party answered.
    Now a call runs again up to RESTART_RERUNS times, in a new session, pausing 0, 1, 2 x
    RECONNECT_PAUSE_S before the reruns; a fourth failure names the fault's origin."""
    from tf_puma.apps.serving import servable as servable_lib  # noqa: PLC0415
    from tf_puma.cluster import PartyUnavailable  # noqa: PLC0415

    served = _servable_failing(monkeypatch, faults=servable_lib.RESTART_RERUNS)
    start = time.monotonic()
    assert served._call({}, ["y"]) == {"y": 1}
    assert served.runs == 4 and served.loads == 3 and served._party_failed is None
    assert time.monotonic() - start >= 0.1 * (0 + 1 + 2)
    served = _servable_failing(monkeypatch, faults=servable_lib.RESTART_RERUNS + 1)
    with pytest.raises(PartyUnavailable, match="failed 4 times.*From /job:client/replica:0/"
                       "task:0: Connection reset by peer"):
        served._call({}, ["y"])
    assert served.runs == 4 and served.loads == 3 and served._party_failed is not None
    assert served._call({}, ["y"]) == {"y": 1} and served.loads == 4  # the next call: new session
