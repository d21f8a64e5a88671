"""`tf-puma convert --calibrate SAMPLES.json`: the model owner checks, before anything is written,
that sample inputs keep every protocol of the secure graph inside its range.

Fixed point has limits plaintext floats do not. Every secret value must stay below
`FixedPoint.max_abs` (2^26 at 18 fractional bits: a product carries 2f digits and TruncPr needs
it below 2^62; beyond it the result wraps around the ring), and the protocols with an input range
(LayerNorm's variance, RMSNorm's mean square, a lone Rsqrt, Sqrt, Reciprocal or division by a
secret) are accurate only inside it: outside, the answer is silently off. The check runs the
frozen plaintext graph on the samples, records every secret tensor's largest |value| and every
range site's observed interval, and fails naming the node, the quantity, what was seen and what
the protocol supports.

The protocols' ranges are fixed, not fitted to the samples: what calibration observes derives
from the weights, so it is shown to the model owner (convert's log) and written nowhere, neither
in the secure graph nor in the manifest the client reads.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow as tf

from tf_puma.fixedpoint import FixedPoint
from tf_puma.protocols import approx, nn
from tf_puma.rewrites import rules
from tf_puma.rewrites.graph import ConversionError, FrozenGraph, Kind, tensor_name

VALUE = "|secret value|"
# Ops that only move values (no new magnitudes): their inputs' sites cover them. The share-wise
# rules' ops but Sum (which adds); a lookup (GatherV2) returns table rows.
_MOVES = (set(rules.SHARE_WISE) - {"Sum"}) | {"IdentityN"}


class CalibrationError(ConversionError):
    """A sample input drove a protocol out of its range (the message names node and range)."""


@dataclasses.dataclass
class Site:
    """One bounded quantity of the secure graph: `lo <= value <= hi` (lo None: |value| < hi)."""
    node: str
    op: str
    quantity: str
    lo: float | None
    hi: float
    seen_lo: float = math.inf
    seen_hi: float = -math.inf
    worst_sample: int = -1

    def observe(self, values: np.ndarray, sample: int) -> None:
        values = np.asarray(values, np.float64)
        if not values.size:
            return
        if self.lo is None:
            values = np.abs(values)
        low, high = float(np.min(values)), float(np.max(values))
        if not self.ok_for(low, high) and self.ok:
            self.worst_sample = sample
        self.seen_lo, self.seen_hi = min(self.seen_lo, low), max(self.seen_hi, high)

    def ok_for(self, low: float, high: float) -> bool:
        if not (math.isfinite(low) and math.isfinite(high)):
            return False
        if self.lo is None:
            return high < self.hi
        return self.lo <= low and high <= self.hi

    @property
    def ok(self) -> bool:
        return self.seen_hi == -math.inf or self.ok_for(self.seen_lo, self.seen_hi)

    @property
    def headroom(self) -> float:
        """How far the observed values stay from the nearer limit (a factor; < 1: outside)."""
        if self.seen_hi == -math.inf:
            return math.inf
        if not (math.isfinite(self.seen_lo) and math.isfinite(self.seen_hi)):
            return 0.0
        room = self.hi / self.seen_hi if self.seen_hi > 0 else math.inf
        if self.lo is not None:
            room = min(room, self.seen_lo / self.lo if self.seen_lo > 0 else 0.0)
        return room

    def describe(self) -> str:
        seen = (f"max {self.seen_hi:.3g}" if self.lo is None
                else f"[{self.seen_lo:.3g}, {self.seen_hi:.3g}]")
        limit = f"< {self.hi:.3g}" if self.lo is None else f"[{self.lo:.3g}, {self.hi:.3g}]"
        return f"{self.node} ({self.op}): {self.quantity} {seen}, supported {limit}"


@dataclasses.dataclass
class _Plan:
    sites: list[Site]
    fetches: list[str]                 # tensor names to evaluate per sample
    measure: list[tuple[Site, Any]]    # site, function of the fetched values -> its values


def _value_sites(program, fxp: FixedPoint) -> list[tuple[Site, Any, list[str]]]:
    """Every float output of a secret node (idioms included; not ops that only move values)
    must stay below max_abs."""
    out = []
    graph = program.graph
    for name in program.order:
        node = graph.nodes[name]
        if (graph.kinds[name] != Kind.SECRET or node.op == "Placeholder"
                or (node.op in _MOVES and name not in program.idioms)):
            continue
        for t in graph.graph.get_operation_by_name(name).outputs:
            if t.dtype.is_floating:
                out.append(_input_site(Site(name, node.op, VALUE, None, fxp.max_abs), t.name))
    return out


def _input_site(site: Site, ref: str) -> tuple[Site, Any, list[str]]:
    """A site whose values are one tensor's: (site, measure, refs needed)."""
    ref = tensor_name(ref)
    return site, (lambda values: values[ref]), [ref]


def _batch_norm_site(name: str, node, x_ref: str) -> tuple[Site, Any, list[str]]:
    """rules.fused_batch_norm's rsqrt input: each channel's variance over the other axes + eps."""
    eps = nn.effective_eps(float(node.attr["epsilon"].f))
    ref = tensor_name(x_ref)

    def measure(values):
        x = np.asarray(values[ref], np.float64)
        channel = rules.batch_norm_channel_axis(node, x.ndim)
        return np.moveaxis(x, channel, 0).reshape(x.shape[channel], -1).var(axis=1) + eps

    lo, hi = nn.LAYER_NORM_VARIANCE
    return Site(name, node.op, "batch-norm variance + eps", lo, hi), measure, [ref]


def _range_sites(program) -> list[tuple[Site, Any, list[str]]]:
    """Idioms with a domain and lone ops with an input range: (site, measure, refs needed)."""
    graph = program.graph
    out = []
    for name in program.order:
        if name in program.idioms:
            idiom, bindings = program.idioms[name]
            if idiom.domain is None:
                continue
            refs = {key: tensor_name(ref) for key, ref in bindings.items()
                    if not key.startswith("$")}
            domain = idiom.domain
            out.append((Site(name, f"{idiom.name} idiom", domain.quantity, domain.lo, domain.hi),
                        lambda values, refs=refs, domain=domain: domain.measure(
                            {key: values[ref] for key, ref in refs.items()}),
                        list(refs.values())))
            continue
        node = graph.nodes[name]
        if graph.kinds[name] != Kind.SECRET:
            continue
        args = graph.data_inputs(name)
        checked = None
        if node.op in ("Rsqrt", "Sqrt"):
            checked = (args[0], f"{node.op} input", approx.RSQRT_RANGE)
        elif node.op in ("Reciprocal", "Inv"):
            checked = (args[0], "Reciprocal input", approx.RECIPROCAL_RANGE)
        elif node.op in ("RealDiv", "Div") and graph.kind(args[1]) == Kind.SECRET:
            checked = (args[1], "divisor", approx.RECIPROCAL_RANGE)
        elif node.op == "Pow":
            exponent = program.constants.get(tensor_name(args[1]))
            e = None if exponent is None or np.size(exponent) != 1 else float(exponent)
            if e in (0.5, -0.5):
                checked = (args[0], f"Pow {e:g} base", approx.RSQRT_RANGE)
            elif e == -1:
                checked = (args[0], "Pow -1 base", approx.RECIPROCAL_RANGE)
        if node.op.startswith("FusedBatchNorm"):  # Keras' fused LayerNorm: per-channel var
            out.append(_batch_norm_site(name, node, args[0]))
            continue
        if checked is not None:
            ref, quantity, (lo, hi) = checked
            out.append(_input_site(Site(name, node.op, quantity, lo, hi), ref))
    return out


def plan(program, fxp: FixedPoint) -> _Plan:
    sites, measure, fetches = [], [], set()
    for site, fn, refs in _value_sites(program, fxp) + _range_sites(program):
        sites.append(site)
        measure.append((site, fn))
        fetches.update(refs)
    return _Plan(sites, sorted(fetches), measure)


def assumptions(program, fxp: FixedPoint) -> str:
    """What the secure graph assumes of its values, for a conversion without samples."""
    counts: dict[tuple[str, float | None, float], int] = {}
    for site in plan(program, fxp).sites:
        key = (site.quantity, site.lo, site.hi)
        counts[key] = counts.get(key, 0) + 1
    parts = [(f"{q} < {hi:.3g}" if lo is None else f"{q} in [{lo:.3g}, {hi:.3g}]") + f" ({n}x)"
             for (q, lo, hi), n in counts.items()]
    return "ranges assumed (check them on sample inputs with --calibrate SAMPLES.json): " + (
        "; ".join(parts) or "none")


def read_samples(path: str) -> list[dict[str, Any]]:
    """SAMPLES.json: one input dict ({"input_ids": [[...]], ...}, as `tf-puma run --inputs`
    takes) or a list of them."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as err:
        raise CalibrationError(f"--calibrate {path}: cannot read the samples ({err})") from None
    samples = data if isinstance(data, list) else [data]
    if not samples or not all(isinstance(s, dict) for s in samples):
        raise CalibrationError(f"--calibrate {path}: expected an object of named inputs or a "
                               "non-empty list of them")
    return samples


def _feeds(graph: FrozenGraph, sample: Mapping[str, Any], index: int) -> dict:
    missing = sorted(set(graph.inputs) - set(sample))
    extra = sorted(set(sample) - set(graph.inputs))
    if missing or extra:
        raise CalibrationError(f"calibration sample {index}: the signature takes "
                               f"{sorted(graph.inputs)}; missing {missing}, unexpected {extra}")
    feeds = {}
    for key, info in graph.inputs.items():
        value = np.asarray(sample[key])
        if tuple(value.shape) != tuple(info.shape):
            raise CalibrationError(f"calibration sample {index}: input {key!r} has shape "
                                   f"{list(value.shape)}, the signature {list(info.shape)}")
        feeds[graph.tensor(info.name)] = value.astype(info.dtype.as_numpy_dtype)
    return feeds


def _op_error_text(err: tf.errors.OpError) -> str:
    """The sentence of TensorFlow's error (its message leads with where the node was defined)."""
    lines = [line.strip() for line in err.message.splitlines()]
    said = [line for line in lines if line and not line.startswith(
        ("Graph execution error", "Detected at node", "File ", "Node:", "[["))]
    return said[-1] if said else lines[0]


def check(program, samples: Sequence[Mapping[str, Any]], fxp: FixedPoint) -> list[Site]:
    """Runs the plaintext graph on each sample and returns every site with what it saw."""
    graph = program.graph
    todo = plan(program, fxp)
    weights = graph.weight_feeds()  # the graph's weight Const nodes hold no values
    with tf.compat.v1.Session(graph=graph.graph) as session:
        fetches = [graph.tensor(ref) for ref in todo.fetches]
        for index, sample in enumerate(samples):
            try:
                outputs = session.run(fetches, {**_feeds(graph, sample, index), **weights})
            except tf.errors.OpError as err:  # e.g. a token id past the vocabulary
                raise CalibrationError(f"calibration sample {index}: the plaintext model fails "
                                       f"on it: {_op_error_text(err)}") from None
            values = dict(zip(todo.fetches, outputs))
            for site, fn in todo.measure:
                site.observe(fn(values), index)
    return todo.sites


def report(sites: Sequence[Site], num_samples: int, tightest: int = 3) -> str:
    """One line of summary, then the failures (or the tightest sites)."""
    bad = [s for s in sites if not s.ok]
    lines = [f"calibration on {num_samples} sample{'s' * (num_samples != 1)}: {len(sites)} "
             f"range sites checked, {len(bad)} outside their range"]
    if bad:
        lines += [f"  {s.describe()} (sample {s.worst_sample})" for s in bad]
    else:
        ranked = sorted(sites, key=lambda s: s.headroom)[:tightest]
        lines += [f"  tightest: {s.describe()} ({s.headroom:.3g}x headroom)" for s in ranked]
    return "\n".join(lines)


def enforce(program, samples: Sequence[Mapping[str, Any]], fxp: FixedPoint, log) -> None:
    """check + report; raises CalibrationError (nothing written) if a site is outside."""
    sites = check(program, samples, fxp)
    text = report(sites, len(samples))
    if any(not s.ok for s in sites):
        raise CalibrationError(
            text + "\nthe secure model would give wrong answers on such inputs: scale the "
            "inputs or weights down, or keep inputs like these away from the model; nothing was "
            "written")
    log(text)
