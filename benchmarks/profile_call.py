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
    python benchmarks/profile_call.py --perf           # Linux perf instead of TF's profiler

With --perf the window is sampled by `perf record` on the three party processes instead (every
thread, kernel time included): each party's CPU samples are summed by symbol and sorted into
kinds (PERF_KINDS: our kernels by family, Eigen, gRPC, the kernel's TCP path and scheduling,
malloc, memcpy, TensorFlow's runtime), as shares of the party's CPU.

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


# Symbols by kind for --perf: the first pattern that matches "[.] symbol" or "[k] symbol" wins.
PERF_KINDS = [
    ("ring GEMM", r"MicroKernel|RingGemm|Amx|PackA|PackB|Thin(Rows|Dots|Block|Avx512|Portable)"),
    ("MSB / boolean kernels", r"Absorb|SignBits|Msb|XorPack|UnpackBits|AndShare|B2a|BlockPlanes|"
                               r"XorSegmentAnds|UnpackWord"),
    ("AES-CTR (PRG)", r"Keystream|CounterBlock|FillPrss|ZeroShare|PrgFill"),
    ("TruncPr kernels", r"TruncPr|OpenMasked|MessageOf"),
    ("elementwise share products", r"MulShare"),
    ("other tf-puma kernels", r"tf_puma::"),
    ("Eigen (TensorFlow's elementwise ops)", r"Eigen::"),
    ("gRPC and tensor coding", r"grpc|protobuf|Grpc|gpr_|absl::"),
    ("kernel: TCP and loopback", r"\[k\] .*(tcp_|_copy_to_iter|_copy_from_iter|skb|sock|inet|"
                                 r"ip_|net_|loopback|dev_|napi|softirq)"),
    ("kernel: scheduling", r"\[k\] .*(finish_task_switch|schedule|futex|_raw_spin|irqentry|"
                           r"enqueue|dequeue|pick_next|update_|wake|select_task|ttwu|switch_|"
                           r"psi_)"),
    ("malloc / free", r"malloc|_int_free|cfree|\bfree\b|unlink_chunk|consolidate|memalign"),
    ("memcpy / memset", r"memmove|memcpy|memset"),
    ("TensorFlow runtime", r"tensorflow::|tsl::"),
    ("kernel: other", r"\[k\]"),
]
PERF_OTHER = "other"
PERF_SAMPLE_HZ = 499


def perf_kind_of(symbol: str) -> str:
    for kind, pattern in PERF_KINDS:
        if re.search(pattern, symbol):
            return kind
    return PERF_OTHER


def read_perf(path: str) -> dict[str, float]:
    """Share (0..1) of one party's CPU samples by PERF_KINDS kind, from `perf report`."""
    import subprocess  # noqa: PLC0415

    report = subprocess.run(["perf", "report", "-i", path, "--sort", "sym", "--stdio"],
                            capture_output=True, text=True, check=True).stdout
    shares: dict[str, float] = defaultdict(float)
    for line in report.splitlines():
        match = re.match(r"\s+([\d.]+)%\s+(\[.\]\s+.*)", line)
        if match:
            shares[perf_kind_of(match.group(2))] += float(match.group(1)) / 100
    return dict(shares)


def perf_window(pids: list[int], seconds: float, out_dir: str) -> list[dict[str, float]]:
    """`perf record` on each party process for `seconds`; their shares by kind."""
    import signal  # noqa: PLC0415
    import subprocess  # noqa: PLC0415

    if shutil.which("perf") is None:
        raise SystemExit("--perf needs Linux perf (Debian: apt-get install linux-perf); "
                         "run without --perf for TensorFlow's profiler")
    paths = [os.path.join(out_dir, f"party{i}.perf.data") for i in range(len(pids))]
    procs = [subprocess.Popen(["perf", "record", "-q", "-F", str(PERF_SAMPLE_HZ), "-p", str(pid),
                               "-o", path], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for pid, path in zip(pids, paths)]
    time.sleep(seconds)
    for proc in procs:
        proc.send_signal(signal.SIGINT)
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode not in (0, -signal.SIGINT) or err.strip():
            raise SystemExit(f"perf record failed ({proc.returncode}): {err.decode().strip()} "
                             "(is /proc/sys/kernel/perf_event_paranoid above 1 for a non-root "
                             "user?)")
    return [read_perf(path) for path in paths]


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


def profile(name: str, seconds: float, trunc_rounds: str = "auto", use_perf: bool = False) -> dict:
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
            perf_shares = None
            try:
                time.sleep(min(wall, 2.0))  # the window starts inside a call, not at its start
                if use_perf:
                    perf_shares = perf_window(pids[:3], seconds, work)
                else:
                    tf.profiler.experimental.client.trace(
                        ",".join(f"grpc://{address}" for address in local.cluster.parties),
                        logdir, int(seconds * 1000))
            finally:
                stop.set()
                caller.join()
        result = {"model": name, "window_s": seconds, "steady_wall_s": wall,
                  "calls_in_window": len(calls), "cpu_wall_s": cpu_wall,
                  "cpu_s_per_call": {"parties": cpu[:3], "client": cpu[3]}}
        if perf_shares is not None:
            return {**result, "perf_share_by_kind": perf_shares}
        parties = []
        for address in local.cluster.parties:
            found = glob.glob(os.path.join(logdir, "plugins", "profile", "*",
                                           f"{address.replace(':', '_')}.xplane.pb"))
            if not found:
                raise SystemExit(f"the profiler returned no trace of party {address}")
            parties.append(read_party(found[0]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {**result,
            "parties": [{"by_kind_s": kinds, "by_scope_s": scopes} for kinds, scopes in parties]}


def report_perf(result: dict) -> None:
    """The --perf table: share of each party's CPU by kind, and CPU ms per call."""
    kinds = [k for k, _ in PERF_KINDS] + [PERF_OTHER]
    shares = result["perf_share_by_kind"]
    cpu = result["cpu_s_per_call"]["parties"]
    rows = []
    for kind in sorted(kinds, key=lambda k: -sum(p.get(k, 0.0) for p in shares)):
        cells = [100 * p.get(kind, 0.0) for p in shares]
        ms = sum(p.get(kind, 0.0) * c * 1e3 for p, c in zip(shares, cpu)) / 3
        rows.append([kind, *cells, sum(cells) / 3, ms])
    print(f"{result['model']}: steady call {result['steady_wall_s']:.2f} s; perf samples of the "
          f"three parties over {result['window_s']:.0f} s of back-to-back calls; % of each "
          "party's CPU")
    print_table(["kind", "party 0 %", "party 1 %", "party 2 %", "mean %",
                 "CPU ms per call (mean party)"], rows)
    write_json("profile_call_perf", result)


def report(result: dict) -> None:
    cpu = result["cpu_s_per_call"]
    print(f"{result['model']}: CPU seconds per call (/proc, {CPU_CALLS} calls of "
          f"{result['cpu_wall_s']:.2f} s; 2 cores give {2 * result['cpu_wall_s']:.2f})")
    print_table(["party 0", "party 1", "party 2", "client", "all"],
                [[*cpu["parties"], cpu["client"], sum(cpu["parties"]) + cpu["client"]]])
    if "perf_share_by_kind" in result:
        report_perf(result)
        return
    wall, window = result["steady_wall_s"], result["window_s"]
    per_call = wall / window * 1e3  # ms per call for each second of the window
    kinds = [k for k, _ in KINDS] + [OTHER, EXECUTOR]
    rows = []
    for kind in kinds:
        cells = [p["by_kind_s"].get(kind, 0.0) * per_call for p in result["parties"]]
        rows.append([kind, *cells, sum(cells) / 3])
    totals = [sum(p["by_kind_s"].values()) * per_call for p in result["parties"]]
    rows.append(["all of the above", *totals, sum(totals) / 3])
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
    parser.add_argument("--trunc-rounds", choices=("2", "3", "auto"), default="auto",
                        help="convert --trunc-rounds")
    parser.add_argument("--perf", action="store_true",
                        help="sample the parties with Linux perf instead of TF's profiler")
    args = parser.parse_args(argv[1:])
    report(profile(args.model, args.seconds, args.trunc_rounds, args.perf))


if __name__ == "__main__":
    main(sys.argv)
