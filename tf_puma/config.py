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


TRUNC_ROUNDS = (2, 3)


@dataclasses.dataclass(frozen=True)
class Config:
    """fxp: the fixed-point format. trunc_rounds: 2 (default) for TruncPr in the product's two
    rounds, 7.3 ring elements per truncated value; 3 for the low-traffic variant, 5.3 (A alone
    opens the masked value and sends B its msb; arithmetic._trunc_pr)."""
    fxp: FixedPoint = FixedPoint()
    trunc_rounds: int = 2

    def __post_init__(self):
        if self.trunc_rounds not in TRUNC_ROUNDS:
            raise ValueError(f"trunc_rounds must be 2 or 3, got {self.trunc_rounds!r}")


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
