"""Faults under load: calls through a party that is killed and restarted, and party memory over
many client sessions. Prints two tables, writes benchmarks/results/faults.json.

    python benchmarks/faults.py [--calls 200] [--sessions 20] [--layers 1]
                                [--recycle-growth 0.1] [--idle 4]

Model: the real all-MiniLM-L6-v2 cut to `--layers` encoder layers, 4 review sentences x 32
tokens. Part 1 makes `--calls` calls; at the middle one party (1) is killed, the calls go on
(each must fail with PartyUnavailable naming it within 10 s), after `--down-calls` failures the
party is restarted, and the calls go on (the client must reconnect by itself). Every answer is
compared with plaintext TensorFlow: a wrong answer is one off by more than 0.01 (the secure
error is ~2e-3). Part 2 runs `--sessions` client processes (connect, load, 5 calls, exit)
against the same three long-lived parties and records each party server's RSS after each
session and after a few idle seconds, when the party's watcher replaces a server grown past
--recycle-growth (tf_puma/apps/supervisor.py), and how often it did.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tf_puma.apps import prepare_process  # noqa: E402

prepare_process()

import tensorflow as tf  # noqa: E402

import tf_puma  # noqa: E402
from benchmarks.common import print_table, status_mib, write_json  # noqa: E402
from tf_puma.apps import hf, text_data  # noqa: E402
from tf_puma.rewrites import convert  # noqa: E402

WRONG = 0.01  # an answer further than this from plaintext counts as wrong
KILLED = 1


def _plaintext(model_dir: str, inputs: dict) -> dict:
    fn = tf.saved_model.load(model_dir).signatures["serving_default"]
    return {k: v.numpy() for k, v in fn(**{k: tf.constant(v) for k, v in inputs.items()}).items()}


def calls_through_a_restart(secure: str, inputs: dict, reference: dict, calls: int,
                            down_calls: int) -> dict:
    local = tf_puma.LocalCluster(shares_dir=os.path.join(secure, "shares"))
    conn = tf_puma.connect(local.start())
    model = tf_puma.load(secure)
    model(**inputs)  # registration
    ok = wrong = failed = 0
    error_times: list[float] = []
    misnamed: list[str] = []
    worst = 0.0
    killed_at = restarted_at = recovered_at = None
    down = 0
    for i in range(calls):
        if i == calls // 2:
            local.kill_party(KILLED)
            killed_at = time.monotonic()
        if killed_at is not None and restarted_at is None and down >= down_calls:
            local.restart_party(KILLED)
            restarted_at = time.monotonic()
        start = time.monotonic()
        try:
            out = model(**inputs)
        except tf_puma.PartyUnavailable as err:
            failed += 1
            down += 1
            error_times.append(time.monotonic() - start)
            if f"party {KILLED} " not in str(err):
                misnamed.append(str(err)[:200])
            continue
        err = max(float(np.abs(out[k].numpy() - reference[k]).max()) for k in reference)
        worst = max(worst, err)
        if err > WRONG:
            wrong += 1
        else:
            ok += 1
        if restarted_at is not None and recovered_at is None:
            recovered_at = time.monotonic()
    local.stop()
    return {"calls": calls, "answered": ok + wrong, "wrong_answers": wrong, "failed": failed,
            "failures_naming_another_party": len(misnamed),
            "max_seconds_to_error": round(max(error_times), 2) if error_times else None,
            "mean_seconds_to_error": round(float(np.mean(error_times)), 2) if error_times
            else None,
            "recovery_seconds_after_restart": round(recovered_at - restarted_at, 2)
            if recovered_at and restarted_at else None,
            "reconnects": conn.reconnects, "max_abs_error": worst}


CLIENT = """
import numpy as np, tf_puma
from tf_puma.apps import prepare_process
prepare_process()
tf_puma.connect({spec!r})
model = tf_puma.load({secure!r})
inputs = {{k: np.asarray(v, dtype=np.int32) for k, v in {inputs!r}.items()}}
for _ in range(5):
    model(**inputs)
"""


def memory_over_sessions(secure: str, inputs: dict, sessions: int, recycle_growth: float,
                         idle_s: float) -> dict:
    """Each party server's RSS right after each client session and again after `idle_s` of
    idleness (when the watcher may have recycled it), and how often servers were replaced."""
    local = tf_puma.LocalCluster(shares_dir=os.path.join(secure, "shares"),
                                 recycle_growth=recycle_growth)
    spec = local.start()
    code = CLIENT.format(spec=spec.to_json(), secure=secure,
                         inputs={k: v.tolist() for k, v in inputs.items()})
    after: list[list[float]] = []
    idle: list[list[float]] = []
    seconds: list[float] = []
    servers = [local.server_pid(i) for i in range(3)]
    replaced = 0
    for _ in range(sessions):
        start = time.monotonic()
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if done.returncode:
            local.stop()
            raise RuntimeError(f"client session failed: {done.stderr[-2000:]}")
        seconds.append(time.monotonic() - start)
        after.append([round(status_mib(local.server_pid(i), "VmRSS"), 1) for i in range(3)])
        time.sleep(idle_s)
        now = [local.server_pid(i) for i in range(3)]
        replaced += sum(a != b for a, b in zip(servers, now))
        servers = now
        idle.append([round(status_mib(pid, "VmRSS"), 1) for pid in now])
    local.stop()
    first = np.array(idle[0])

    def growth(rows: list[list[float]]) -> list[float]:
        return [round(float(g), 1) for g in 100 * (np.max(rows, axis=0) - first) / first]

    return {"sessions": sessions, "recycle_growth": recycle_growth, "idle_seconds": idle_s,
            "rss_mib_after_session": after, "rss_mib_idle": idle,
            "session_seconds_mean": round(float(np.mean(seconds)), 1),
            "servers_replaced": replaced,
            "max_idle_growth_percent_per_party": growth(idle),
            "max_after_session_growth_percent_per_party": growth(after)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--down-calls", type=int, default=5)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--recycle-growth", type=float, default=0.10,
                        help="the parties' --recycle-growth (0: never replace a server)")
    parser.add_argument("--idle", type=float, default=4.0,
                        help="seconds between sessions (the watcher acts after 2 s idle)")
    args = parser.parse_args()
    hf.use_transformers().logging.set_verbosity_error()
    work = tempfile.mkdtemp(prefix="tf-puma-faults-")
    plain = hf.export_minilm(os.path.join(work, "plain"), batch=4, seq_len=32,
                             layers=args.layers)
    secure = os.path.join(work, "secure")
    convert.convert(plain, secure, log=lambda line: None)
    sentences = [text_data.movie_reviews()[i][1] for i in (10, 20, 30, 40)]
    inputs = hf.tokenize(sentences, 32)
    reference = _plaintext(plain, inputs)

    restart = calls_through_a_restart(secure, inputs, reference, args.calls, args.down_calls)
    print(f"\n{args.calls} calls, party {KILLED} killed at call {args.calls // 2} and restarted "
          f"after {args.down_calls} failed calls (MiniLM, {args.layers} layer(s), 4 x 32 tokens)")
    print_table(["answered", "wrong", "failed", "misnamed", "max s to error",
                 "recovery s", "reconnects", "max abs err"],
                [[restart["answered"], restart["wrong_answers"], restart["failed"],
                  restart["failures_naming_another_party"], restart["max_seconds_to_error"],
                  restart["recovery_seconds_after_restart"], restart["reconnects"],
                  f"{restart['max_abs_error']:.2e}"]])

    memory = memory_over_sessions(secure, inputs, args.sessions, args.recycle_growth, args.idle)
    print(f"\nparty server RSS over {args.sessions} client sessions (connect, load, 5 calls, exit;"
          f" {memory['session_seconds_mean']} s each, then {args.idle} s idle; "
          f"--recycle-growth {args.recycle_growth})")
    rows = [[i + 1, *memory["rss_mib_after_session"][i], *memory["rss_mib_idle"][i]]
            for i in range(args.sessions)
            if i in (0, 1, 4, 9, 19, 49, 99) or i == args.sessions - 1]
    print_table(["session", "P0 after", "P1 after", "P2 after", "P0 idle", "P1 idle",
                 "P2 idle"], rows)
    print(f"largest growth over the first session's idle size: idle "
          f"{memory['max_idle_growth_percent_per_party']} %, right after a session "
          f"{memory['max_after_session_growth_percent_per_party']} %; servers replaced "
          f"{memory['servers_replaced']} times")
    write_json("faults", {"model": f"all-MiniLM-L6-v2, {args.layers} layer(s), 4 x 32",
                          "restart": restart, "memory": memory})


if __name__ == "__main__":
    main()
