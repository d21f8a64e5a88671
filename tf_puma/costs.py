"""Communication accounting: every cross-party transfer is counted (bytes, rounds) per protocol.

Costs are recorded while a secure function is traced, from static shapes: a ledger describes one
execution of the traced graph. Use it as

    with tf_puma.costs.Ledger() as ledger:
        concrete = secure_fn.get_concrete_function(...)
    print(ledger.table())
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import threading
from typing import Iterator

from tf_puma.cluster import NUM_PARTIES

CLIENT = "client"


@dataclasses.dataclass
class OpCost:
    """What one protocol (by name) cost over all its calls in a traced graph."""

    calls: int = 0
    rounds: int = 0  # sum over calls of each call's rounds
    bytes_sent: dict = dataclasses.field(default_factory=lambda: collections.Counter())

    def total_bytes(self) -> int:
        return sum(self.bytes_sent.values())


class Ledger:
    """Collects OpCost rows per protocol name while active (a context manager)."""

    def __init__(self) -> None:
        self.ops: dict[str, OpCost] = collections.OrderedDict()
        self.critical_rounds = 0  # deepest round count of any revealed value

    def __enter__(self) -> "Ledger":
        _stack().append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _stack().remove(self)

    def _row(self, name: str) -> OpCost:
        return self.ops.setdefault(name, OpCost())

    def bytes_by_sender(self, exclude: tuple[str, ...] = ()) -> dict:
        """Bytes each sender sent, over all protocols but those named in `exclude`."""
        total: collections.Counter = collections.Counter()
        for name, row in self.ops.items():
            if name not in exclude:
                total.update(row.bytes_sent)
        return dict(total)

    def as_json(self) -> dict:
        return {
            "critical_path_rounds": self.critical_rounds,
            "bytes_by_sender": {str(k): v for k, v in self.bytes_by_sender().items()},
            "ops": {name: {"calls": r.calls, "rounds": r.rounds,
                           "bytes_sent": {str(k): v for k, v in r.bytes_sent.items()}}
                    for name, r in self.ops.items()},
        }

    def table(self) -> str:
        senders = [*range(NUM_PARTIES), CLIENT]
        head = f"{'protocol':<22}{'calls':>7}{'rounds':>8}" + "".join(
            f"{('P' + str(s)) if s != CLIENT else 'client':>12}" for s in senders)
        lines = [head + "   (bytes sent)", "-" * len(head)]
        for name, row in self.ops.items():
            lines.append(f"{name:<22}{row.calls:>7}{row.rounds:>8}" + "".join(
                f"{row.bytes_sent.get(s, 0):>12,}" for s in senders))
        total = self.bytes_by_sender()
        lines.append(f"{'total':<22}{'':>7}{self.critical_rounds:>8}" + "".join(
            f"{total.get(s, 0):>12,}" for s in senders) + "   (rounds: critical path)")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(self.as_json(), indent=2)


_local = threading.local()


def _stack() -> list[Ledger]:
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


def _protocols() -> list[str]:
    if not hasattr(_local, "protocols"):
        _local.protocols = []
    return _local.protocols


@contextlib.contextmanager
def protocol(name: str, rounds: int, detached: bool = False) -> Iterator[None]:
    """Marks a protocol call; transfers inside count towards the outermost active protocol.

    `detached` makes it a row of its own even inside another protocol (set-up work that the
    first protocol of a graph happens to trigger, such as the PRSS key exchange).
    """
    saved = _protocols()[:] if detached else None
    if detached:
        _protocols().clear()
    outer = not _protocols()
    _protocols().append(name)
    try:
        if outer:
            for ledger in _stack():
                row = ledger._row(name)
                row.calls += 1
                row.rounds += rounds
        yield
    finally:
        _protocols().pop()
        if saved is not None:
            _protocols()[:] = saved


def record_transfer(sender: int | str, num_bytes: int) -> None:
    """Counts num_bytes sent by `sender` (a party index or "client") in every active ledger."""
    name = _protocols()[0] if _protocols() else "other"
    for ledger in _stack():
        ledger._row(name).bytes_sent[sender] += num_bytes


def record_depth(rounds: int) -> None:
    for ledger in _stack():
        ledger.critical_rounds = max(ledger.critical_rounds, rounds)
