"""Helpers for benchmark scripts: timing, tables and JSON results under benchmarks/results/."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from typing import Callable, Sequence

# Ledger rows that move the client's data in and out (and the key exchange), not the protocol.
IO_PROTOCOLS = ("share_input", "reveal", "prss_setup")
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def best_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Best wall time of fn() in seconds over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def status_mib(pid: int, field: str) -> float:
    """A memory field of /proc/PID/status in MiB: "VmRSS" (now) or "VmHWM" (peak)."""
    with open(f"/proc/{pid}/status", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def shares_mib(secure_dir: str) -> list[float]:
    """The weight shares each party holds for the model's lifetime, in MiB: both shares of every
    weight in its bundle (shares/partyI of a converted model), seeds expanded."""
    from tf_puma import bundle  # TensorFlow is imported only by the scripts that need it

    return [bundle.resident_bytes(os.path.join(secure_dir, "shares", f"party{i}")) / 2 ** 20
            for i in range(3)]


def party_memory_target_mib(shares: float) -> float:
    """Issue 14's bound on a party's peak RSS: 1.5x its shares plus 1 GiB."""
    return 1.5 * shares + 1024


def prepare_in_child(script: str, args: Sequence[str], work: str) -> dict:
    """Runs `script --prepare ARGS` (export, convert and plaintext reference, as the model owner
    would, in a process of its own) and returns the work/prepared.json it wrote."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415
    done = subprocess.run([sys.executable, os.path.abspath(script), "--prepare", *args],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"export/convert failed:\n{done.stderr[-3000:]}")
    with open(os.path.join(work, "prepared.json"), encoding="utf-8") as fh:
        return json.load(fh)


def row_in_child(script: str, args: Sequence[str], what: str) -> dict:
    """Runs `script --one ARGS` (one measured configuration in a process of its own, so its
    peaks are its own) and returns the JSON row it printed last; `what` names it on failure."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415
    done = subprocess.run([sys.executable, os.path.abspath(script), "--one", *args],
                          capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if done.returncode != 0:
        raise SystemExit(f"{what} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def secure_session(secure_dir: str, first_call: Callable[[object], object],
                   load: Callable[[str], object] | None = None,
                   party_args: Sequence[str] = ()):
    """Three local parties holding the model's bundles (`party_args` added to their command
    line), this process connected as the client, the model loaded (`load`, default
    tf_puma.load) and called once (the parties register its graph). Yields (local cluster,
    model, load seconds, first call seconds)."""
    import tf_puma  # noqa: PLC0415
    local = tf_puma.LocalCluster(shares_dir=os.path.join(secure_dir, "shares"),
                                 party_args=party_args)
    with local as spec:
        tf_puma.connect(spec)
        start = time.perf_counter()
        model = (load or tf_puma.load)(secure_dir)
        load_s = time.perf_counter() - start
        start = time.perf_counter()
        first_call(model)
        try:
            yield local, model, load_s, time.perf_counter() - start
        finally:  # release its functions on the parties while they still answer
            getattr(model, "close", lambda: None)()


SPU_PYTHON = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          ".venv-spu", "bin", "python")


def spu_reference(model: str, seq: int, **options: object) -> dict:
    """The reference implementation (SPU 0.9.5, PUMA's settings) on the same shape, run now by
    benchmarks/spu_reference.py in its own venv (`make spu-venv`): its JSON (steady_wall_s,
    comm.total_send_bytes, comm.max_send_actions, max_abs_err_vs_plain_exact, ...).
    options: layers, hidden, heads, inter, vocab, repeat (flags of that script)."""
    import subprocess  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    if not os.path.exists(SPU_PYTHON):
        raise SystemExit(f"{SPU_PYTHON} is missing: run `make spu-venv` first (or leave out "
                         "--reference)")
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "spu_reference.py")
    with tempfile.TemporaryDirectory(prefix="spu-ref-") as work:
        out = os.path.join(work, "ref.json")
        argv = [SPU_PYTHON, script, "--model", model, "--seq", str(seq), "--json", out,
                "--log-dir", work]
        for key, value in options.items():
            if value is not None:
                argv += [f"--{key}", str(value)]
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"the SPU reference failed ({' '.join(argv[1:])}):\n"
                             f"{done.stderr[-3000:]}")
        with open(out, encoding="utf-8") as fh:
            return json.load(fh)


def reference_columns(ref: dict, our_s: float) -> dict:
    """The reference run's figures a result row carries beside ours (`our_s`: our same call)."""
    return {"reference_s": ref["steady_wall_s"],
            "reference_gib": ref["comm"]["total_send_bytes"] / 2 ** 30,
            "reference_sends": ref["comm"]["max_send_actions"],
            "reference_err": ref["max_abs_err_vs_plain_exact"],
            "speedup": ref["steady_wall_s"] / our_s}


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def write_json(name: str, payload: dict) -> str:
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, f"{name}.json")
    payload = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, **payload}
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=2)
    print(f"\nwrote {path}")
    return path
