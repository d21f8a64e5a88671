"""Where a steady call's time goes on each party: TensorFlow's profiler on the three party
servers while the client calls the model back to back.

Every TensorFlow server hosts the profiler service, so the parties need nothing extra:
`tf.profiler.experimental.client.trace` collects an XSpace from each of them for a window of
steady calls, and this script sums the op events of each party's executor threads by kind
(ring GEMM share products, elementwise share products, TruncPr, the MSB rounds, bit injection,
PRG draws, Send/Recv, TensorFlow's own ops) and by the plaintext op each secure op replaces
(its top name scope without the "_N": Softmax, BatchMatMulV2, the LayerNorm and GeLU idioms
named by their root op, ...; the six layers are alike, so this is the per-protocol view).
An op's time is its wall time on the party's inter-op thread, its intra-op helpers included;
with three parties and a client on 2 cores that includes time waiting for a core. "executor"
is the executor's Process events minus the ops inside them.

    python benchmarks/profile_call.py                  # MiniLM-L6, 128 tokens
    python benchmarks/profile_call.py minilm-32 --seconds 4

Figures are per call: the share of the window a kind takes, times the steady call's wall time
(measured right before the window). Writes benchmarks/results/profile_call.json.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import prepare_in_child, print_table, secure_session, write_json  # noqa: E402

MODELS_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models.py")

# Op types by kind; the first kind that lists an op type wins, "TensorFlow ops" takes the rest.
KINDS = [
    ("ring GEMM products", ("PumaMatMulShare",)),
    ("elementwise products", ("PumaMulShare",)),
    ("TruncPr", ("PumaTruncPrDeal", "PumaTruncPrMask", "PumaTruncPrFinishA",
                 "PumaTruncPrFinishB")),
    ("MSB rounds", ("PumaMsbStart", "PumaMsbStep", "PumaMsbFinish")),
    ("bit injection", ("PumaB2aParty0", "PumaB2aParty1", "PumaB2aParty2")),
    ("other tf-puma kernels", ("Puma",)),  # prefix: PRG, zero shares, AND, loads
    ("Send/Recv", ("_Send", "_Recv", "_HostSend", "_HostRecv")),
]
OTHER = "TensorFlow ops"
SCOPES_SHOWN = 12
CPU_CALLS = 3  # calls over which each process's CPU time is read
EXECUTOR = "executor"
NUMBERED = re.compile(r"_\d+$")
CALL = re.compile(r"(Stateful)?PartitionedCall(_\d+)?$")  # the function call around the graph


def kind_of(op_type: str) -> str:
    for kind, types in KINDS:
        if op_type in types or (types == ("Puma",) and op_type.startswith("Puma")):
            return kind
    return OTHER


def scope_of(node: str) -> str:
    """The plaintext op a secure node stands for: its top scope inside the function call,
    "StatefulPartitionedCall/Softmax_3/exp/..." -> "Softmax"."""
    parts = node.split("/")
    while len(parts) > 1 and CALL.match(parts[0]):
        parts = parts[1:]
    return NUMBERED.sub("", parts[0])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/PID/stat), all its threads."""
    with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def read_party(path: str) -> tuple[dict[str, float], dict[str, float]]:
    """(seconds by kind, seconds by scope) of one party's XSpace: op events on its executor
    threads ("node:OpType"), and the executor's own Process time around them."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: PLC0415

    space = xplane_pb2.XSpace()
    with open(path, "rb") as fh:
        space.ParseFromString(fh.read())
    by_kind: dict[str, float] = defaultdict(float)
    by_scope: dict[str, float] = defaultdict(float)
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            process = ops = 0.0
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                seconds = event.duration_ps * 1e-12
                if name == "ExecutorState::Process":
                    process += seconds
                elif ":" in name and "::" not in name:
                    node, op_type = name.rsplit(":", 1)
                    by_kind[kind_of(op_type)] += seconds
                    by_scope[scope_of(node)] += seconds
                    ops += seconds
            by_kind[EXECUTOR] += max(process - ops, 0.0)
    return dict(by_kind), dict(by_scope)


def profile(name: str, seconds: float, trunc_rounds: int = 2) -> dict:
    import numpy as np  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    work = tempfile.mkdtemp(prefix=f"tf-puma-profile-{name}-")
    try:
        prepare_in_child(MODELS_SCRIPT, [name, work, str(trunc_rounds)], work)
        saved = np.load(os.path.join(work, "reference.npz"))
        inputs = {k: saved[k] for k in ("input_ids", "attention_mask")}
        secure_dir = os.path.join(work, "secure")
        with secure_session(secure_dir, lambda m: m(**inputs)) as (local, model, _, _):
            walls = []
            for _ in range(2):
                start = time.perf_counter()
                {k: v.numpy() for k, v in model(**inputs).items()}
                walls.append(time.perf_counter() - start)
            wall = min(walls)
            pids = [local.server_pid(i) for i in range(3)] + [os.getpid()]
            before = [cpu_seconds(pid) for pid in pids]
            start = time.perf_counter()
            for _ in range(CPU_CALLS):
                {k: v.numpy() for k, v in model(**inputs).items()}
            cpu_wall = (time.perf_counter() - start) / CPU_CALLS
            cpu = [(cpu_seconds(pid) - b) / CPU_CALLS for pid, b in zip(pids, before)]
            stop, calls = threading.Event(), []

            def call_back_to_back() -> None:
                while not stop.is_set():
                    start = time.perf_counter()
                    {k: v.numpy() for k, v in model(**inputs).items()}
                    calls.append(time.perf_counter() - start)

            caller = threading.Thread(target=call_back_to_back)
            caller.start()
            logdir = os.path.join(work, "profile")
            try:
                time.sleep(min(wall, 2.0))  # the window starts inside a call, not at its start
                tf.profiler.experimental.client.trace(
                    ",".join(f"grpc://{address}" for address in local.cluster.parties), logdir,
                    int(seconds * 1000))
            finally:
                stop.set()
                caller.join()
        parties = []
        for address in local.cluster.parties:
            found = glob.glob(os.path.join(logdir, "plugins", "profile", "*",
                                           f"{address.replace(':', '_')}.xplane.pb"))
            if not found:
                raise SystemExit(f"the profiler returned no trace of party {address}")
            parties.append(read_party(found[0]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"model": name, "window_s": seconds, "steady_wall_s": wall,
            "calls_in_window": len(calls), "cpu_wall_s": cpu_wall,
            "cpu_s_per_call": {"parties": cpu[:3], "client": cpu[3]},
            "parties": [{"by_kind_s": kinds, "by_scope_s": scopes} for kinds, scopes in parties]}


def report(result: dict) -> None:
    wall, window = result["steady_wall_s"], result["window_s"]
    per_call = wall / window * 1e3  # ms per call for each second of the window
    kinds = [k for k, _ in KINDS] + [OTHER, EXECUTOR]
    rows = []
    for kind in kinds:
        cells = [p["by_kind_s"].get(kind, 0.0) * per_call for p in result["parties"]]
        rows.append([kind, *cells, sum(cells) / 3])
    totals = [sum(p["by_kind_s"].values()) * per_call for p in result["parties"]]
    rows.append(["all of the above", *totals, sum(totals) / 3])
    cpu = result["cpu_s_per_call"]
    print(f"{result['model']}: CPU seconds per call (/proc, {CPU_CALLS} calls of "
          f"{result['cpu_wall_s']:.2f} s; 2 cores give {2 * result['cpu_wall_s']:.2f})")
    print_table(["party 0", "party 1", "party 2", "client", "all"],
                [[*cpu["parties"], cpu["client"], sum(cpu["parties"]) + cpu["client"]]])
    print(f"{result['model']}: steady call {wall:.2f} s; a {window:.0f} s window of back-to-back "
          f"calls on the three parties; ms per call (op wall time on each party's executor "
          "threads)")
    print_table(["kind", "party 0", "party 1", "party 2", "mean"], rows)
    scopes: dict[str, list[float]] = defaultdict(lambda: [0.0] * 3)
    for i, party in enumerate(result["parties"]):
        for scope, t in party["by_scope_s"].items():
            scopes[scope][i] = t * per_call
    top = sorted(scopes.items(), key=lambda kv: -sum(kv[1]))
    shown, rest = top[:SCOPES_SHOWN], top[SCOPES_SHOWN:]
    rows = [[scope, *cells, sum(cells) / 3] for scope, cells in shown]
    if rest:
        cells = [sum(c[i] for _, c in rest) for i in range(3)]
        rows.append([f"{len(rest)} other scopes", *cells, sum(cells) / 3])
    print_table(["plaintext op (scope)", "party 0", "party 1", "party 2", "mean"], rows)
    write_json("profile_call", result)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="minilm-128", help="a models.py model")
    parser.add_argument("--seconds", type=float, default=8.0, help="the profiled window")
    parser.add_argument("--trunc-rounds", type=int, choices=(2, 3), default=2,
                        help="convert --trunc-rounds")
    args = parser.parse_args(argv[1:])
    report(profile(args.model, args.seconds, args.trunc_rounds))


if __name__ == "__main__":
    main(sys.argv)
