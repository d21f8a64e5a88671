"""What mutual TLS between the tasks costs: MiniLM-L6 (real weights) on three parties in network
namespaces (three hosts on one machine, tf_puma/apps/netns.py), the client on this host, with
and without `--tls-dir` (stunnel tunnels, tf_puma/tunnels.py), same run, same inputs.

Reports the steady call (best of STEADY_CALLS), the first call, and the bytes each host put on
its link per call (read from the bridge side of each namespace's veth: every IP packet, TLS
records and TCP/IP headers included) beside the payload the secure graph sends (its manifest).

    python benchmarks/tls.py            # minilm-128 (needs root for namespaces, and stunnel4)
    python benchmarks/tls.py minilm-32
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import prepare_in_child, print_table, write_json  # noqa: E402

import models  # noqa: E402  (its --prepare exports and converts MiniLM)

STEADY_CALLS = 5
PORTS = (2220, 2221, 2222, 2223)


def _veth_bytes(devices: list[str]) -> dict[str, tuple[int, int]]:
    """(rx, tx) bytes of each interface of this namespace (/proc/net/dev)."""
    counters = {}
    with open("/proc/net/dev", encoding="ascii") as fh:
        for line in fh.readlines()[2:]:
            name, data = line.split(":", 1)
            fields = data.split()
            counters[name.strip()] = (int(fields[0]), int(fields[8]))
    return {d: counters[d] for d in devices}


def _client(mode: str, work: str, spec_path: str, tls_root: str, devices: list[str]) -> dict:
    """The client's side of one mode, in a process of its own (one cluster per process)."""
    import numpy as np  # noqa: PLC0415

    import tf_puma  # noqa: PLC0415

    saved = np.load(os.path.join(work, "reference.npz"))
    inputs = {k: saved[k] for k in ("input_ids", "attention_mask")}
    tf_puma.connect(spec_path, tls_dir=os.path.join(tls_root, "client") if mode == "tls" else None)
    model = tf_puma.load(os.path.join(work, "secure"))
    start = time.perf_counter()
    model(**inputs)
    first_s = time.perf_counter() - start
    walls, before = [], _veth_bytes(devices)
    for _ in range(STEADY_CALLS):
        start = time.perf_counter()
        out = model(**inputs)["last_hidden_state"].numpy()
        walls.append(time.perf_counter() - start)
    after = _veth_bytes(devices)
    model.close()
    # Bridge side of a veth: rx = what its namespace sent, tx = what it received.
    sent = [(after[d][0] - before[d][0]) / STEADY_CALLS for d in devices]
    return {"mode": mode, "first_call_s": first_s, "wall_s": min(walls),
            "wire_sent_mib": [s / 2 ** 20 for s in sent],
            "max_abs_err": float(np.abs(out - saved["last_hidden_state"]).max())}


def _run_mode(mode: str, work: str) -> dict:
    from tf_puma import certs  # noqa: PLC0415
    from tf_puma.apps import netns  # noqa: PLC0415
    from tf_puma.cluster import EXIT_WITH_PARENT_ENV  # noqa: PLC0415

    names = [f"party{i}" for i in range(3)]
    with netns.NamespaceHosts(names) as hosts:
        spec = {"client": [f"{hosts.gateway}:{PORTS[0]}"],
                "puma": [f"{hosts.address(n)}:{p}" for n, p in zip(names, PORTS[1:])]}
        spec_path = os.path.join(work, f"cluster-{mode}.json")
        with open(spec_path, "w", encoding="utf-8") as fh:
            json.dump(spec, fh)
        tls_root = os.path.join(work, f"tls-{mode}")
        if mode == "tls":
            certs.make_deployment(tls_root)
        parties = []
        try:
            for i, name in enumerate(names):
                tls = ["--tls-dir", os.path.join(tls_root, name)] if mode == "tls" else []
                parties.append(subprocess.Popen(
                    hosts.command(name, [sys.executable, "-m", "tf_puma.apps.cli", "party",
                                         "--cluster", spec_path, "--task", str(i), "--shares",
                                         os.path.join(work, "secure", "shares", name),
                                         "--recycle-growth", "0", *tls]),
                    env={**os.environ, EXIT_WITH_PARENT_ENV: str(os.getpid())},
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
            for i, proc in enumerate(parties):
                if not proc.stdout.readline().startswith("tf-puma party ready"):
                    raise SystemExit(f"party {i} did not start ({mode})")
            devices = [hosts.veth(n) for n in names]
            done = subprocess.run([sys.executable, os.path.abspath(__file__), "--client", mode,
                                   work, spec_path, tls_root, *devices],
                                  capture_output=True, text=True,
                                  env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
            if done.returncode != 0:
                raise SystemExit(f"the {mode} client failed:\n{done.stderr[-3000:]}")
            return json.loads(done.stdout.strip().splitlines()[-1])
        finally:
            for proc in parties:
                proc.terminate()
            for proc in parties:
                proc.wait()


def main(argv: list[str]) -> None:
    if len(argv) == 4 and argv[1] == "--prepare":
        models._prepare(argv[2], argv[3])  # noqa: SLF001
        return
    if len(argv) >= 6 and argv[1] == "--client":
        print(json.dumps(_client(argv[2], argv[3], argv[4], argv[5], argv[6:])))
        return
    name = argv[1] if len(argv) > 1 else "minilm-128"
    if name not in ("minilm-32", "minilm-128"):
        raise SystemExit(f"unknown model {name!r}: minilm-32 or minilm-128")
    from tf_puma import secure_model  # noqa: PLC0415
    from tf_puma.apps import netns  # noqa: PLC0415

    reason = netns.available()
    if reason or not shutil.which("stunnel4"):
        raise SystemExit(f"needs network namespaces (root) and stunnel4: {reason or 'no stunnel'}")
    work = tempfile.mkdtemp(prefix="tf-puma-bench-tls-")
    try:
        prepared = prepare_in_child(__file__, [name, work], work)
        del prepared
        manifest = secure_model.read_manifest(os.path.join(work, "secure"))
        payload = [manifest.total.bytes_by_sender.get(str(i), 0) / 2 ** 20 for i in range(3)]
        rows = [_run_mode(mode, work) for mode in ("plain", "tls")]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    plain = rows[0]
    for row in rows:
        row["model"] = name
        row["payload_sent_mib"] = payload
        row["slowdown"] = row["wall_s"] / plain["wall_s"]
        row["wire_over_payload"] = sum(row["wire_sent_mib"]) / sum(payload)
    print_table(["model", "links", "steady s", "x plain", "1st call s", "sent MiB/call (wire, "
                 "P0/P1/P2)", "payload MiB", "wire/payload", "max abs err"],
                [[r["model"], r["mode"], r["wall_s"], r["slowdown"], r["first_call_s"],
                  "/".join(f"{v:.0f}" for v in r["wire_sent_mib"]),
                  "/".join(f"{v:.0f}" for v in payload), r["wire_over_payload"],
                  r["max_abs_err"]] for r in rows])
    print(write_json("tls", {"rows": rows, "steady_calls": STEADY_CALLS}))


if __name__ == "__main__":
    main(sys.argv)
