"""What a secure computation runs with, carried in one explicit object (no module globals).

    cfg = tf_puma.config.Config(fxp=tf_puma.FixedPoint(20))
    with tf_puma.config.use(cfg):      # protocols, share(), bundles and convert read it
        manifest = convert.convert(IN, OUT)

`current()` is the innermost `use` of this thread, else the default (PUMA's 18 fractional bits).
A secure model records its fixed point in its manifest and its bundles; the parties check the
bundle they read against the graph's (PumaLoadShare), so a model never runs with another format
than the one it was converted with. The cluster a process is connected to is per process
(TensorFlow allows one): `tf_puma.connect` returns that Connection, models are loaded for it
(`tf_puma.load(..., connection=)`, default `tf_puma.connection.current()`); a party's share folder is passed to its kernels by the party itself (PumaSetShareRoot).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from typing import Iterator

from tf_puma.fixedpoint import FixedPoint


TRUNC_ROUNDS = (2, 3, "auto")
# "auto": 3-round truncations for values of at least this many elements, 2-round below. The
# third round saves 2 ring elements (16 bytes) per value; on the paper's LAN (1 ms a round,
# 5 Gbps a link) that pays from ~10^5 values a truncation, on this machine's loopback (CPU-bound:
# bytes cost TCP and gRPC time) from fewer. 2^16 keeps a decoded token's products (one row: a
# few thousand values) at 2 rounds and moves the prefill's and an encoder's wide ones (softmax
# and GeLU on 128 tokens: 1.9 x 10^5 values) to 3.
AUTO_THREE_ROUNDS_FROM = 1 << 16


@dataclasses.dataclass(frozen=True)
class Config:
    """fxp: the fixed-point format. trunc_rounds: how TruncPr runs. 2 for TruncPr in the
    product's two rounds, 7.3 ring elements per truncated value; 3 for the low-traffic variant,
    5.3 (A alone opens the masked value and sends B its msb; arithmetic._trunc_pr); "auto"
    (default) for 3 on values of at least `three_rounds_from` elements, else 2."""
    fxp: FixedPoint = FixedPoint()
    trunc_rounds: int | str = "auto"
    three_rounds_from: int = AUTO_THREE_ROUNDS_FROM

    def __post_init__(self):
        if self.trunc_rounds not in TRUNC_ROUNDS:
            raise ValueError(f"trunc_rounds must be 2, 3 or 'auto', got {self.trunc_rounds!r}")

    def trunc_rounds_for(self, elements: int | None) -> int:
        """Rounds of a TruncPr of `elements` values (None: not known statically -> 2 under
        "auto")."""
        if self.trunc_rounds != "auto":
            return int(self.trunc_rounds)
        return 3 if elements is not None and elements >= self.three_rounds_from else 2


def parse_trunc_rounds(text: str) -> int | str:
    """A command line's trunc rounds ("2", "3" or "auto") as Config.trunc_rounds takes them."""
    value: int | str = text if text == "auto" else int(text)
    if value not in TRUNC_ROUNDS:
        raise ValueError(f"trunc rounds must be 2, 3 or auto, got {text!r}")
    return value


DEFAULT = Config()
_local = threading.local()


def current() -> Config:
    stack = getattr(_local, "stack", None)
    return stack[-1] if stack else DEFAULT


@contextlib.contextmanager
def use(config: Config) -> Iterator[Config]:
    """Makes `config` current for this thread inside the block (blocks nest)."""
    if not isinstance(config, Config):
        raise TypeError(f"use() takes a tf_puma.config.Config, got {type(config).__name__}")
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    stack.append(config)
    try:
        yield config
    finally:
        stack.pop()
