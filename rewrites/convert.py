"""`tf-puma convert`: plaintext SavedModel -> secure SavedModel + one share bundle per party.

OUT_DIR after a conversion:
  saved_model.pb, variables/   the secure graph (no weight values; ops placed on client/parties)
  shares/party{0,1,2}/         party i's two shares of every weight (copy to party i only)
  tf_puma.json                 manifest: ring, fixed point, bundle id, signature, costs per layer
  shares/owner.json            the model owner's record (source path, SHA-256 of the source
                               model, bundle id); stays with the owner, like the bundles' parent
The client's files (saved_model.pb, tf_puma.json) carry no value or fingerprint of the weights:
the bundle id is random.
Everything is written under a temporary name and renamed at the end: a failed conversion leaves
nothing behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
from typing import Callable, Iterator, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf
from google.protobuf import message
from tensorflow.core.protobuf import saved_model_pb2

from tf_puma.rewrites.graph import (ConversionError, FrozenGraph, LoadedSignature,
                                   load_signature)
from tf_puma.rewrites.program import SecureProgram
from tf_puma.rewrites import calibrate as calibration
from tf_puma.rewrites.constants import merge_duplicate_constants
from tf_puma import _ops, bundle, config, costs, runtime, warmup
from tf_puma import manifest as manifest_lib
from tf_puma.manifest import Cost, Manifest, TensorEntry
from tf_puma.cluster import NUM_PARTIES
from tf_puma.protocols import arithmetic
from tf_puma.sharing import Shared

MANIFEST = manifest_lib.FILE
OWNER_RECORD = "owner.json"


def model_hash(saved_model_dir: str) -> str:
    """sha256 over the SavedModel's files (relative names and contents)."""
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(saved_model_dir):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            digest.update(os.path.relpath(path, saved_model_dir).encode())
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def progress_bar(done: int, total: int, width: int = 20) -> str:
    """`[#########-----------]  9/20`: a text bar that reads the same in a log file."""
    filled = round(width * done / total) if total else width
    return f"[{'#' * filled}{'-' * (width - filled)}] {done:>{len(str(total))}}/{total}"


def _signature_function(program: SecureProgram, signature: str, progress, ledgers):
    """The secure graph as a tf.function over the signature's inputs (state inputs: their six
    shares, `manifest_lib.state_share_name`), returning the revealed outputs and the state
    outputs' shares (left on the parties)."""
    g = program.graph
    plain_names = sorted(n for n in g.inputs if n not in g.state_inputs)
    specs = [tf.TensorSpec(g.inputs[n].shape, g.inputs[n].dtype, name=n) for n in plain_names]
    share_names = []
    for key in sorted(g.state_inputs):
        for party in range(NUM_PARTIES):
            for slot in (0, 1):
                share_names.append((key, party, slot))
                specs.append(tf.TensorSpec(g.inputs[key].shape, tf.int64,
                                           name=manifest_lib.state_share_name(key, party, slot)))
    names = plain_names + [manifest_lib.state_share_name(*k) for k in share_names]

    def build(values: list) -> dict:
        inputs = dict(zip(plain_names, values[:len(plain_names)]))
        shares = dict(zip(share_names, values[len(plain_names):]))
        for key in sorted(g.state_inputs):
            pairs = []
            for party in range(NUM_PARTIES):
                with tf.device(runtime.device(party)):
                    pairs.append(tuple(tf.identity(shares[(key, party, slot)])
                                       for slot in (0, 1)))
            inputs[key] = Shared(pairs, arithmetic.fixed_point().frac_bits)
        outputs = program.build(inputs, on_layer=progress, ledgers=ledgers)
        flat = {}
        for key, value in outputs.items():
            if isinstance(value, Shared):
                for party in range(NUM_PARTIES):
                    with tf.device(runtime.device(party)):
                        for slot in (0, 1):
                            name = manifest_lib.state_share_name(key, party, slot)
                            flat[name] = tf.identity(value.pairs[party][slot], name=name)
            else:
                flat[key] = value
        return flat

    # a function whose parameters carry the signature's input names
    params = ", ".join(n if n.isidentifier() else f"arg{i}" for i, n in enumerate(names))
    scope: dict = {}
    exec(f"def {signature.replace('-', '_')}({params}):\n"  # noqa: S102 - names only
         f"    return _build([{params}])\n", {"_build": build}, scope)
    fn = next(iter(scope.values()))
    return tf.function(fn, input_signature=specs, autograph=False)


def convert(in_dir: str, out_dir: str, signature: str = "serving_default",
            input_shapes: Optional[Mapping[str, Sequence[int]]] = None,
            public_inputs: Sequence[str] = (), overwrite: bool = False,
            log: Callable[[str], None] = print,
            calibrate: str | Sequence[Mapping] | None = None) -> Manifest:
    """Converts one signature; returns the manifest (also written to OUT_DIR/tf_puma.json).

    `calibrate` (sample inputs, or a JSON file of them: `rewrites.calibrate.read_samples`) runs
    the plaintext model on them first and refuses the conversion (CalibrationError naming node
    and range) if a value would leave a protocol's range; the observations go to `log` only.

    Nothing is half-written and nothing else is lost: the output is built in a hidden
    `.OUT.partial-PID` directory beside OUT (removed on failure and on SIGTERM, swept by the next
    conversion if the process was killed) and renamed at the end; OUT may not be, contain or lie
    inside IN, and --overwrite replaces only an earlier tf-puma output.
    """
    _check_paths(in_dir, out_dir, overwrite)
    samples = calibration.read_samples(calibrate) if isinstance(calibrate, str) else calibrate
    _ops.load()
    tmp = _partial_dir(out_dir)
    try:
        with _cleaned_up_on_sigterm(tmp):
            return _convert(in_dir, out_dir, tmp, signature, input_shapes, public_inputs, log,
                            samples)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


GENERATE_SIGNATURE = "generate_step"
GENERATE_PUBLIC = ("position_ids", "attention_mask", "last_index")


def convert_generation(in_dir: str, out_dir: str, prompt_tokens: int,
                       overwrite: bool = False, log: Callable[[str], None] = print) -> Manifest:
    """`tf-puma convert --generate`: a causal LM's `generate_step` signature (the contract of
    `tf_puma.apps.hf.export_generation`) converted twice into one secure model: `prefill`
    (prompt_tokens new tokens) and `decode` (one), sharing one bundle. Inputs past_X / outputs
    present_X are the KV cache: state kept secret-shared on the parties between calls.
    position_ids, attention_mask and last_index are public (the parties see where in the
    window a call writes, which the number of calls tells them anyway); token ids stay the
    client's. Nothing is half-written (see `convert`)."""
    _check_paths(in_dir, out_dir, overwrite)
    if prompt_tokens < 1:
        raise ConversionError(f"--prompt-tokens must be at least 1, got {prompt_tokens}")
    _ops.load()
    tmp = _partial_dir(out_dir)
    try:
        with _cleaned_up_on_sigterm(tmp):
            return _convert_generation(in_dir, out_dir, tmp, prompt_tokens, log)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _generation_contract(in_dir: str) -> tuple[LoadedSignature, dict, int]:
    """The generate_step signature loaded, its state pairs present_X -> past_X and window; what
    is missing is named."""
    names = _signature_names(in_dir)
    if GENERATE_SIGNATURE not in names:
        raise ConversionError(
            f"{in_dir} has no {GENERATE_SIGNATURE!r} signature (it has {names}); export one "
            "with tf_puma.apps.hf.export_generation(model, DIR, window)")
    loaded = LoadedSignature(in_dir, GENERATE_SIGNATURE)
    inputs, outputs = loaded.input_specs, loaded.outputs
    missing = [k for k in ("input_ids", *GENERATE_PUBLIC) if k not in inputs]
    missing += [k for k in ("next_token",) if k not in outputs]
    state = {f"present_{k[len('past_'):]}": k for k in inputs if k.startswith("past_")}
    missing += [out for out in state if out not in outputs]
    if missing or not state:
        raise ConversionError(f"{GENERATE_SIGNATURE} of {in_dir} lacks {missing or 'past_*'} "
                              "(see tf_puma.apps.hf.export_generation for the contract)")
    windows = {int(inputs[k].shape[-2]) for k in state.values()}  # positions: axis -2
    if len(windows) != 1:
        raise ConversionError(f"the past_* inputs of {GENERATE_SIGNATURE} disagree on the "
                              f"window size: {sorted(windows)}")
    return loaded, state, windows.pop()


def _signature_names(saved_model_dir: str) -> list[str]:
    """The SavedModel's signature names, read from saved_model.pb (no load)."""
    model = saved_model_pb2.SavedModel()
    try:
        with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as fh:
            model.ParseFromString(fh.read())
    except (OSError, message.DecodeError) as err:
        raise ConversionError(f"{saved_model_dir}: cannot read saved_model.pb ({err})") from err
    return sorted({name for graph in model.meta_graphs for name in graph.signature_def
                   if not name.startswith("__")})  # not TF's __saved_model_init_op


def _convert_generation(in_dir, out_dir, tmp, prompt_tokens, log) -> Manifest:
    start = time.perf_counter()
    loaded, state, window = _generation_contract(in_dir)  # loaded and frozen once for both
    graphs = {}
    for name, new in (("prefill", prompt_tokens), ("decode", 1)):
        shapes = {"input_ids": [1, new], "position_ids": [1, new],
                  "attention_mask": [1, window + new]}
        graphs[name] = loaded.frozen(shapes, GENERATE_PUBLIC, state)
        log(f"loaded and froze {in_dir} [{GENERATE_SIGNATURE}, {new} new token"
            f"{'s' if new > 1 else ''}]: {len(graphs[name].nodes)} nodes "
            f"({time.perf_counter() - start:.1f} s)")
    decode = graphs["decode"]
    generation = {"window": window, "prompt_tokens": prompt_tokens,
                  "state": {past: {"output": present,
                                   "shape": list(decode.inputs[past].shape)}
                            for present, past in sorted(state.items())}}
    return _write_secure_model(in_dir, out_dir, tmp, graphs, "decode", start, log, generation)


def _check_paths(in_dir: str, out_dir: str, overwrite: bool) -> None:
    if os.path.isfile(in_dir) and in_dir.endswith((".h5", ".keras", ".hdf5")):
        raise ConversionError(
            f"{in_dir} is a Keras file; tf-puma converts a SavedModel directory. Export one "
            "with a serving signature first, e.g. `tf.saved_model.save(model, DIR, signatures="
            "{'serving_default': tf.function(model, input_signature=[...])})` (transformers: "
            "model.save_pretrained(DIR, saved_model=True))")
    if manifest_lib.is_secure_model(in_dir):
        raise ConversionError(f"{in_dir} is already a secure model (it has {MANIFEST}); convert "
                              "the plaintext SavedModel it came from")
    src, dst = os.path.realpath(in_dir), os.path.realpath(out_dir)
    if dst == src or dst.startswith(src + os.sep) or src.startswith(dst + os.sep):
        raise ConversionError(f"OUT_DIR {out_dir} must not be, contain or lie inside the source "
                              f"model {in_dir}: choose a directory beside it")
    if os.path.lexists(out_dir):
        if not overwrite:
            raise ConversionError(f"{out_dir} already exists; remove it or pass --overwrite")
        if not os.path.isdir(out_dir) or not manifest_lib.is_secure_model(out_dir):
            raise ConversionError(f"--overwrite replaces only an earlier tf-puma output, and "
                                  f"{out_dir} has no {MANIFEST}: remove it yourself if it is "
                                  "meant to go, or choose another OUT_DIR")


def _partial_dir(out_dir: str) -> str:
    """Creates the hidden work directory beside OUT (so a read-only or missing parent fails
    before any tracing) after sweeping those of conversions that were killed."""
    parent = os.path.dirname(os.path.abspath(out_dir)) or "."
    name = os.path.basename(os.path.abspath(out_dir))
    try:
        os.makedirs(parent, exist_ok=True)
        for entry in os.listdir(parent):
            match = re.fullmatch(rf"\.{re.escape(name)}\.partial-(\d+)(\.replaced)?", entry)
            if match and not _alive(int(match.group(1))):
                shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
        tmp = os.path.join(parent, f".{name}.partial-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        probe = os.path.join(tmp, ".write-test")
        with open(probe, "wb") as fh:
            fh.write(b"\0" * 4096)
        os.remove(probe)
    except OSError as err:
        raise ConversionError(f"cannot write the output beside {out_dir}: {err}") from err
    return tmp


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _cleaned_up_on_sigterm(partial: str) -> Iterator[None]:
    """SIGTERM removes the partial output and exits (128 + signal) at once. (Raising SystemExit
    instead was not enough: a signal handled while a __del__ or weakref callback runs, as happens
    all the time while TensorFlow traces, has its exception printed and ignored, and the
    conversion went on to finish with exit code 0.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):  # noqa: ARG001
        shutil.rmtree(partial, ignore_errors=True)
        sys.stderr.write(f"tf-puma convert: stopped by signal {signum}; removed {partial}\n")
        sys.stderr.flush()
        os._exit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _convert(in_dir, out_dir, tmp, signature, input_shapes, public_inputs, log,
             samples) -> Manifest:
    start = time.perf_counter()
    graph = load_signature(in_dir, signature, input_shapes, public_inputs)
    log(f"loaded and froze {in_dir} [{signature}]: {len(graph.nodes)} nodes "
        f"({time.perf_counter() - start:.1f} s)")
    return _write_secure_model(in_dir, out_dir, tmp, {signature: graph}, signature, start, log,
                               samples=samples)


def _write_secure_model(in_dir, out_dir, tmp, graphs: Mapping[str, FrozenGraph], main: str,
                        start: float, log, generation: Optional[dict] = None,
                        samples: Optional[Sequence[Mapping]] = None) -> Manifest:
    """Programs for the frozen signatures (secure signature name -> graph), one share bundle for
    all of them (their weights must agree), the secure SavedModel, the manifest (of `main`;
    `generation` adds its section) and the swap into OUT; with `samples`, the calibration check
    of `main` comes before anything is traced."""
    t = time.perf_counter()
    steps = {"load_and_freeze": t - start}  # seconds per conversion step (the manifest's)
    source_hash = model_hash(in_dir)
    bundle_id = bundle.new_bundle_id()  # random: names the conversion, not the weights
    programs = {name: SecureProgram(graph, bundle_id) for name, graph in graphs.items()}
    weights: dict[str, np.ndarray] = {}
    for name, program in programs.items():
        for key, value in program.weights.items():
            if key in weights and weights[key] is not value and not np.array_equal(
                    weights[key], value):
                raise ConversionError(f"weight {key!r} differs between the signatures")
            weights[key] = value
    _check_weights(weights, arithmetic.fixed_point())
    if samples is not None:
        calibration.enforce(programs[main], samples, arithmetic.fixed_point(), log)
    else:
        log(calibration.assumptions(programs[main], arithmetic.fixed_point()))
    steps["classify"] = time.perf_counter() - t
    # The bundles are written while the graph is traced and saved (into tmp, like the rest).
    writer = bundle.BackgroundWriter(weights, os.path.join(tmp, "shares"), bundle_id,
                                     arithmetic.fixed_point())
    try:
        for name, program in programs.items():
            counts = program.counts()
            log(f"{'[' + name + '] ' if len(programs) > 1 else ''}classified {len(program.order)} "
                f"run-time nodes: {counts.get('SECRET', 0)} secure, "
                f"{counts.get('CLIENT', 0) + counts.get('PUBLIC', 0)} on the client; "
                f"{counts['idioms']} idioms ({program.idiom_summary() or 'none'}); "
                f"{counts['weights']} weight tensors, "
                f"{sum(w.size for w in program.weights.values()):,} values "
                f"({time.perf_counter() - t:.1f} s)")
        concretes, manifests = {}, {}
        module = tf.Module()
        for name, program in programs.items():
            ledgers: dict[str, costs.Ledger] = {}
            t = time.perf_counter()

            def on_layer(group: str, done: int, total: int, t=t) -> None:
                log(f"  {progress_bar(done - 1, total)} layers traced; now {group} "
                    f"({time.perf_counter() - t:.0f} s so far)")

            fn = _signature_function(program, name, on_layer, ledgers)
            with costs.Ledger() as total:
                concretes[name] = fn.get_concrete_function()
            num_ops = len(concretes[name].graph.get_operations())
            which = f" {name}" if len(programs) > 1 else ""
            log(f"traced the secure graph{which}: {num_ops:,} ops "
                f"({time.perf_counter() - t:.1f} s)")
            steps["trace"] = steps.get("trace", 0.0) + time.perf_counter() - t
            manifests[name] = _manifest(name, program, total, ledgers, num_ops,
                                        time.perf_counter() - start)
        t = time.perf_counter()
        tf.saved_model.save(module, tmp, signatures=concretes)
        saved_ops = merge_duplicate_constants(tmp)
        for name, concrete in concretes.items():  # the ops a client loads: fewer Const nodes
            ops = saved_ops[concrete.name.decode()]  # ConcreteFunction.name is bytes
            manifests[name] = dataclasses.replace(manifests[name], secure_graph_ops=ops)
        steps["save"] = time.perf_counter() - t
        t = time.perf_counter()
        steps["bundles"] = writer.result()  # the writer's own time, alongside trace and save
        steps["bundles_wait"] = time.perf_counter() - t
    finally:
        writer.cancel()  # a no-op once the bundles are written; on failure, stops and waits
    with open(os.path.join(tmp, "shares", OWNER_RECORD), "w", encoding="utf-8") as fh:
        json.dump({"source": os.path.abspath(in_dir), "model_sha256": source_hash,
                   "bundle_id": bundle_id, "signature": main}, fh, indent=2)
    log(f"saved the secure SavedModel ({steps['save']:.1f} s; "
        f"{manifests[main].secure_graph_ops:,} ops after merging equal constants) and "
        f"{NUM_PARTIES} share bundles ({steps['bundles']:.1f} s alongside; waited "
        f"{steps['bundles_wait']:.1f} s)")
    manifest = dataclasses.replace(
        manifests[main], convert_seconds=round(time.perf_counter() - start, 2),
        convert_steps={k: round(v, 2) for k, v in steps.items()})
    if generation is not None:
        others = {name: m.to_json() for name, m in manifests.items() if name != main}
        manifest = dataclasses.replace(
            manifest, generation={**generation, "signatures": others},
            weight_tensors=len(weights), weight_values=int(sum(w.size for w in weights.values())))
    manifest_lib.write(tmp, manifest)
    if generation is None:
        warmup.write(tmp, manifest)
    # The swap is not interrupted by SIGTERM (held until it is done): OUT is always either the
    # earlier output or the new one.
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        if os.path.lexists(out_dir):  # an earlier tf-puma output (_check_paths): swap it out
            old = f"{tmp}.replaced"
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
    log(cost_report(manifest))
    return manifest


def _check_weights(weights: Mapping[str, np.ndarray], fxp) -> None:
    """Every weight encodes in the fixed point, checked before tracing: a NaN/inf or an
    out-of-range value is named (weight and index), not found while writing bundles."""
    for name, value in weights.items():
        array = np.asarray(value, dtype=np.float64)
        if not array.size:
            continue
        bad = ~np.isfinite(array)
        if bad.any():
            raise ConversionError(f"weight {name!r} has NaN or infinity at index "
                                  f"{np.argwhere(bad)[0].tolist()}: fix the model's weights")
        worst = np.unravel_index(np.argmax(np.abs(array)), array.shape)
        if abs(array[worst]) > fxp.max_abs:
            raise ConversionError(
                f"weight {name!r} has {array[worst]:.4g} at index {list(map(int, worst))}, "
                f"outside the fixed-point range |x| <= {fxp.max_abs:.4g} at {fxp.frac_bits} "
                "fractional bits: convert with fewer fractional bits (tf_puma.config) or "
                "rescale the weights")


def _manifest(signature, program, total, ledgers, num_ops, seconds) -> Manifest:
    g = program.graph
    settings = config.current()

    def cost(rounds: int, ledger: costs.Ledger) -> Cost:
        return Cost(rounds, {str(k): v for k, v in ledger.bytes_by_sender().items()})

    return Manifest(
        signature=signature,
        inputs={k: TensorEntry(v.dtype.name, tuple(v.shape), k in g.public_inputs)
                for k, v in sorted(g.inputs.items()) if k not in g.state_inputs},
        outputs={k: TensorEntry(g.tensor(ref).dtype.name, tuple(g.static_shape(ref)))
                 for k, ref in g.outputs.items() if k not in g.state},
        frac_bits=arithmetic.fixed_point().frac_bits, trunc_rounds=settings.trunc_rounds,
        three_rounds_from=(settings.three_rounds_from if settings.trunc_rounds == "auto"
                           else None),
        bundle_id=program.bundle_id,
        weight_tensors=len(program.weights),
        weight_values=int(sum(w.size for w in program.weights.values())),
        secure_graph_ops=num_ops, convert_seconds=round(seconds, 2),
        total=cost(total.critical_rounds, total),
        layers={name: cost(sum(r.rounds for r in led.ops.values()), led)
                for name, led in ledgers.items()},
        protocols=total.as_json()["ops"])


def cost_report(manifest: Manifest) -> str:
    """Per-layer estimated rounds (sum over protocol calls) and bytes sent by each party."""
    head = f"{'layer':<16}{'rounds':>8}" + "".join(f"{'P' + str(i) + ' MiB':>11}"
                                                  for i in range(NUM_PARTIES))
    lines = [head, "-" * len(head)]
    for name, row in manifest.layers.items():
        sent = row.bytes_by_sender
        lines.append(f"{name:<16}{row.rounds:>8}" + "".join(
            f"{sent.get(str(i), 0) / 2 ** 20:>11.2f}" for i in range(NUM_PARTIES)))
    sent = manifest.total.bytes_by_sender
    lines.append(f"{'total':<16}{manifest.total.rounds:>8}" + "".join(
        f"{sent.get(str(i), 0) / 2 ** 20:>11.2f}" for i in range(NUM_PARTIES))
        + "   (rounds: critical path)")
    lines.append(f"client sends {sent.get('client', 0) / 2 ** 20:.2f} MiB; secure graph "
                 f"{manifest.secure_graph_ops:,} ops")
    return "\n".join(lines)
