"""Memory of transfers: what N cross-party transfers in one call cost the two parties.

TensorFlow's partitioner turns every cross-device edge into a Send/Recv pair. A Recv has no
inputs, so the executor starts all of a call's Recvs at the call's start, and each one is a
RecvTensor RPC held open on both sides until its tensor is sent. A secure SmolLM2 prefill has
~11,000 of them per party per call. This script measures that cost on its own. Party 0 computes
N scalars, at once or after a chain of float matmuls (so that every request waits); they are
doubled and added up on party 1 ("other"), or on party 0 itself ("same": the same graph with no
transfers, the control). Each configuration runs in a process and local parties of its own; the
table shows each party's RSS growth over the first call (the function's registration included)
and, per transfer, both parties' growth over the control's (the consumer's ops move from party 0
to party 1 between the two, so only the sum isolates the transfers).

    python benchmarks/pending_transfers.py [--transfers 1000 12000] [--delay-matmuls 60]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import print_table, row_in_child, status_mib, write_json  # noqa: E402


def first_call_growth(transfers: int, delay_matmuls: int, consumer: int) -> dict:
    """RSS growth (MiB) of parties 0 (the producer) and 1 over the first call, sampled every
    20 ms, and the call's wall time; the N values are consumed on party `consumer`."""
    import tensorflow as tf  # noqa: PLC0415

    import tf_puma  # noqa: PLC0415
    from tf_puma.cluster import party_device  # noqa: PLC0415

    local = tf_puma.LocalCluster()
    with local as spec:
        tf_puma.connect(spec)
        pids = [local.server_pid(i) for i in (0, 1)]

        @tf.function
        def call(x):
            with tf.device(party_device(0)):
                m = tf.fill([1500, 1500], tf.cast(x, tf.float32) * 1e-4)
                for _ in range(delay_matmuls):
                    m = tf.matmul(m, m)
                ready = tf.cast(tf.reduce_sum(m), tf.int64) + x
                values = [ready + i for i in range(transfers)]
            with tf.device(party_device(consumer)):
                return tf.add_n([t * 2 for t in values]), ready

        x = tf.constant(1, tf.int64)
        call.get_concrete_function(x)
        base = [status_mib(p, "VmRSS") for p in pids]
        peak = list(base)
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                for k, p in enumerate(pids):
                    peak[k] = max(peak[k], status_mib(p, "VmRSS"))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.perf_counter()
        total, ready = (int(t.numpy()) for t in call(x))
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
        expected = 2 * (transfers * ready + transfers * (transfers - 1) // 2)
        if total != expected:
            raise SystemExit(f"wrong sum: {total} != {expected}")
        return {"values": transfers, "producer_waits": delay_matmuls > 0,
                "consumer": "same" if consumer == 0 else "other", "first_call_s": seconds,
                "party0_growth_mib": peak[0] - base[0], "party1_growth_mib": peak[1] - base[1]}


def main() -> None:
    if sys.argv[1:2] == ["--one"]:  # one configuration, in a process of its own (row_in_child)
        print(json.dumps(first_call_growth(*(int(a) for a in sys.argv[2:5]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transfers", type=int, nargs="+", default=[1000, 12000])
    parser.add_argument("--delay-matmuls", type=int, default=60,
                        help="1500x1500 float matmuls on party 0 before the values (~2 s here)")
    args = parser.parse_args()
    rows = []
    for n in args.transfers:
        for delay in (0, args.delay_matmuls):
            for consumer in (0, 1):
                rows.append(row_in_child(__file__, [str(n), str(delay), str(consumer)],
                                         f"{n} values, {delay} matmuls, consumer {consumer}"))
    table = []
    for row in rows:
        control = next(r for r in rows if r["values"] == row["values"] and
                       r["producer_waits"] == row["producer_waits"] and r["consumer"] == "same")
        both = (row["party0_growth_mib"] + row["party1_growth_mib"]
                - control["party0_growth_mib"] - control["party1_growth_mib"])
        # Both parties together: the consumer's ops sit on party 0 in the control and on
        # party 1 otherwise, so only the sum isolates the transfers.
        row["kib_per_transfer_both_parties"] = (both * 1024 / row["values"]
                                                if row["consumer"] == "other" else None)
        table.append([row["values"], "yes" if row["producer_waits"] else "no", row["consumer"],
                      f"{row['first_call_s']:.2f}", f"{row['party0_growth_mib']:.0f}",
                      f"{row['party1_growth_mib']:.0f}",
                      "-" if row["kib_per_transfer_both_parties"] is None else
                      f"{row['kib_per_transfer_both_parties']:.1f}"])
    print_table(["values", "producer waits", "consumer party", "first call s",
                 "party 0 growth MiB", "party 1 growth MiB", "KiB per transfer (both parties)"],
                table)
    write_json("pending_transfers", {"delay_matmuls": args.delay_matmuls, "rows": rows})


if __name__ == "__main__":
    main()
