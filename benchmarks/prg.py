"""The PRG's AES-128-CTR keystream rate on each path this CPU has (PumaAes128Ctr's `path`:
portable, AES-NI, VAES, and "auto", the one every PRG-drawing kernel takes), one thread.

Prints GB of keystream per second (2 and 64 MiB per call, timed without copying it out) and writes
benchmarks/results/prg.json. Every path gives the same bytes (checked here before timing, and in
tests/test_kernels.py).

    python benchmarks/prg.py
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.common import best_time, print_table, write_json  # noqa: E402
from tf_puma import _ops  # noqa: E402

# keystream per call: 2 MiB (a 12 x 128 x 128 share's draw) and 64 MiB; each call allocates its
# output, as the kernels' draws do
SIZES_BLOCKS = (1 << 17, 1 << 22)
PORTABLE_BLOCKS = 1 << 14  # the table-free portable AES is ~50x slower


def main() -> None:
    tf.config.threading.set_intra_op_parallelism_threads(1)
    ops = _ops.load()
    rng = np.random.default_rng(0)
    key = tf.constant(rng.integers(-(2 ** 62), 2 ** 62, size=2, dtype=np.int64))
    iv = tf.constant(rng.integers(-(2 ** 62), 2 ** 62, size=2, dtype=np.int64))
    reference = ops.puma_aes128_ctr(key, iv, num_blocks=PORTABLE_BLOCKS, path="portable").numpy()
    rows, results = [], []
    for path in ("portable", "aesni", "vaes", "auto"):
        row = [path]
        for blocks in ((PORTABLE_BLOCKS,) if path == "portable" else SIZES_BLOCKS):
            try:
                stream = tf.function(
                    lambda: ops.puma_aes128_ctr(key, iv, num_blocks=blocks, path=path))
                out = stream().numpy()
            except tf.errors.InvalidArgumentError:
                row.append("not on this CPU")
                continue
            np.testing.assert_array_equal(out[:reference.size], reference)  # the same bytes
            seconds = best_time(stream, repeats=10)  # eager: returns once the kernel has run
            gb_s = blocks * 16 / seconds / 1e9
            results.append({"path": path, "mib": blocks * 16 / 2 ** 20, "gb_per_s": gb_s})
            row.append(gb_s)
        rows.append(row + ["-"] * (3 - len(row)))
    print_table(["AES-128-CTR path (one thread)", "GB/s, 2 MiB a call (portable: 0.25)",
                 "GB/s, 64 MiB a call"], rows)
    write_json("prg", {"unit": "GB of keystream per second, one thread", "results": results})


if __name__ == "__main__":
    main()
