#!/usr/bin/env python3
"""Benchmark SPU (secretflow) PUMA-style 3PC inference of Flax BERT / GPT-2.

Parties: by default three separate OS processes (ranks 0,1,2), each holding one
`spu.Runtime` and talking to the other two over brpc links on 127.0.0.1 ports
(the same runtime/link stack that SPU's `nodectl`/`ppd` starts; ppd itself is not
shipped in the spu wheel).  The driver process plays the data owners: it
secret-shares the model weights once (model owner) and the token ids on every
call (client), sends each party its shares over a local pipe, and reconstructs
the revealed output.  `--mode sim` runs the same three runtimes as threads over
SPU's in-memory link instead (like spu.utils.simulation.Simulator).

PUMA config (Dong et al. 2023, as in SPU's PUMA examples): ABY3, FM64, 18
fractional bits, exp by Taylor/(1+x/2^n)^(2^n) with n=fxp_exp_iters, softmax as
max-shifted exp masked to 0 below -14, GeLU as PUMA's piecewise polynomial,
compiler option enable_optimize_denominator_with_broadcast.

Example:
  .venv-spu/bin/python benchmarks/spu_reference.py --model bert --seq 32 --json out.json
  .venv-spu/bin/python benchmarks/spu_reference.py --model gpt2 --seq 32 --layers 1
"""

import argparse
import json
import os
import re
import socket
import statistics
import sys
import threading
import time
import multiprocessing as mp

LINK_RE = re.compile(
    r"Link details: total send bytes (\d+), recv bytes (\d+), "
    r"send actions (\d+), recv actions (\d+)"
)
NPARTIES = 3


# --------------------------------------------------------------------------
# Party side (imports only spu, never jax/transformers)
# --------------------------------------------------------------------------
def _libc_fflush():
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except Exception:
        pass


def _read_new_link_stats(log_path, offset):
    """Return (new_offset, list of link-stat dicts) found after offset."""
    _libc_fflush()
    with open(log_path, "r", errors="replace") as f:
        f.seek(offset)
        text = f.read()
        new_off = f.tell()
    stats = [
        dict(send_bytes=int(m[0]), recv_bytes=int(m[1]),
             send_actions=int(m[2]), recv_actions=int(m[3]))
        for m in LINK_RE.findall(text)
    ]
    return new_off, stats


def party_main(rank, addrs, cfg_bytes, conn, log_path, link_kind, mem_desc=None):
    if log_path and link_kind == "brpc":
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    from spu import api as spu_api
    from spu import libspu

    cfg = libspu.RuntimeConfig()
    cfg.ParseFromString(cfg_bytes)
    t0 = time.perf_counter()
    if link_kind == "brpc":
        desc = libspu.link.Desc()
        desc.recv_timeout_ms = 3600 * 1000
        desc.http_max_payload_size = 32 * 1024 * 1024
        for r, a in enumerate(addrs):
            desc.add_party(f"p{r}", a)
        lctx = libspu.link.create_brpc(desc, rank)
    else:
        lctx = libspu.link.create_mem(mem_desc, rank)
    rt = spu_api.Runtime(lctx, cfg)
    conn.send(("ready", time.perf_counter() - t0))
    executable = None
    log_off = 0
    while True:
        msg = conn.recv()
        op = msg[0]
        try:
            if op == "set":
                for name, share in msg[1]:
                    rt.set_var(name, share)
                conn.send(("ok",))
            elif op == "load":
                executable = libspu.Executable()
                executable.ParseFromString(msg[1])
                conn.send(("ok",))
            elif op == "run":
                for name, share in msg[1]:
                    rt.set_var(name, share)
                ts = time.perf_counter()
                rt.run(executable)
                run_s = time.perf_counter() - ts
                outs = [rt.get_var(n) for n in executable.output_names]
                stats = []
                if log_path and link_kind == "brpc":
                    log_off, stats = _read_new_link_stats(log_path, log_off)
                conn.send(("done", outs, run_s, stats[-1] if stats else None))
            elif op == "stop":
                try:
                    lctx.stop_link()
                except Exception:
                    pass
                conn.send(("bye",))
                break
            else:
                raise ValueError(f"unknown op {op}")
        except Exception as e:  # report to driver instead of hanging it
            conn.send(("error", f"rank {rank}: {type(e).__name__}: {e}"))
            if op == "run":
                break
    conn.close()


# --------------------------------------------------------------------------
# PUMA approximations (plaintext JAX code that SPU compiles)
# --------------------------------------------------------------------------
def puma_gelu(x, approximate=True):
    """PUMA piecewise GeLU: 0 | cubic on [-4,-1.95) | deg-6 on [-1.95,3] | x."""
    import jax.numpy as jnp

    lt_m4 = x < -4.0
    lt_m195 = x < -1.95
    gt_3 = x > 3.0
    seg_a = jnp.logical_xor(lt_m4, lt_m195)             # -4 <= x < -1.95
    seg_b = jnp.logical_not(jnp.logical_or(lt_m195, gt_3))  # -1.95 <= x <= 3
    # cubic  c0 + c1 x + c2 x^2 + c3 x^3  (PUMA paper, Sec. GeLU)
    c = (-0.5054031199708174, -0.42226581151983866,
         -0.11807612951181953, -0.011034134030615728)
    # even-ish sextic d0 + d1 x + d2 x^2 + d4 x^4 + d6 x^6
    d0, d1, d2, d4, d6 = (0.008526321541038084, 0.5, 0.3603292692789629,
                          -0.037688200365904236, 0.0018067462606141187)
    x2 = x * x
    x3 = x2 * x
    x4 = x2 * x2
    x6 = x3 * x3
    poly_a = c[0] + c[1] * x + c[2] * x2 + c[3] * x3
    poly_b = d0 + d1 * x + d2 * x2 + d4 * x4 + d6 * x6
    return gt_3 * x + seg_a * poly_a + seg_b * poly_b


def puma_softmax(x, axis=-1, where=None, initial=None):
    """PUMA softmax: shift by max, exp (SPU Taylor), zero where x-max < -14."""
    import jax.numpy as jnp

    x = x - jnp.max(x, axis, where=where, initial=initial, keepdims=True)
    e = jnp.exp(x) * (x > -14.0)
    return e / jnp.sum(e, axis, where=where, keepdims=True)


class PumaPatch:
    """Context manager swapping HF/flax GeLU and jax.nn.softmax for PUMA's."""

    def __init__(self, enabled):
        self.enabled = enabled
        self.saved = {}

    def __enter__(self):
        if not self.enabled:
            return self
        import jax
        from transformers import modeling_flax_utils as mfu

        self.saved["softmax"] = jax.nn.softmax
        jax.nn.softmax = puma_softmax
        for k in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
            if k in mfu.ACT2FN:
                self.saved[k] = mfu.ACT2FN[k]
                mfu.ACT2FN[k] = puma_gelu
        return self

    def __exit__(self, *exc):
        if not self.enabled:
            return False
        import jax
        from transformers import modeling_flax_utils as mfu

        jax.nn.softmax = self.saved.pop("softmax")
        for k, v in self.saved.items():
            mfu.ACT2FN[k] = v
        self.saved = {}
        return False


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------
def build_model(args):
    """Return (forward(ids, params), params, reference_forward, desc, vocabulary size)."""
    import jax.numpy as jnp

    if args.model == "bert":
        from transformers import BertConfig, FlaxBertModel

        cfg = BertConfig(
            vocab_size=args.vocab or 30522,
            hidden_size=args.hidden or 384,
            num_hidden_layers=args.layers if args.layers is not None else 6,
            num_attention_heads=args.heads or 12,
            intermediate_size=args.inter or 1536,
            hidden_act="gelu",
            max_position_embeddings=512,
            type_vocab_size=2,
        )
        model = FlaxBertModel(cfg, add_pooling_layer=False, seed=args.seed)
        params = model.params

        def forward(ids, params):
            return model(input_ids=ids, params=params).last_hidden_state

        reference = forward
        desc = (f"BERT h{cfg.hidden_size} L{cfg.num_hidden_layers} "
                f"H{cfg.num_attention_heads} I{cfg.intermediate_size} "
                f"V{cfg.vocab_size}; out=last_hidden_state")
    elif args.model == "gpt2":
        from transformers import FlaxGPT2LMHeadModel, FlaxGPT2Model, GPT2Config

        cfg = GPT2Config(
            vocab_size=args.vocab or 50257,
            n_embd=args.hidden or 768,
            n_layer=args.layers if args.layers is not None else 12,
            n_head=args.heads or 12,
            n_inner=args.inter,  # None -> 4*n_embd
            n_positions=1024,
        )
        lm = FlaxGPT2LMHeadModel(cfg, seed=args.seed)
        params = lm.params
        body = FlaxGPT2Model(cfg, _do_init=False)

        if args.full_logits:
            def forward(ids, params):  # HF path: logits for all positions
                return lm(input_ids=ids, params=params).logits[:, -1, :]
        else:
            def forward(ids, params):  # transformer + tied head on last token
                h = body(input_ids=ids, params=params["transformer"]).last_hidden_state
                wte = params["transformer"]["wte"]["embedding"]
                return jnp.dot(h[:, -1, :], wte.T)

        def reference(ids, params):
            return lm(input_ids=ids, params=params).logits[:, -1, :]

        desc = (f"GPT-2 h{cfg.n_embd} L{cfg.n_layer} H{cfg.n_head} "
                f"V{cfg.vocab_size}; out=next-token logits"
                + (" (full HF logits)" if args.full_logits else " (last pos only)"))
    else:
        raise SystemExit(f"unknown model {args.model}")
    return forward, params, reference, desc, cfg.vocab_size


# --------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------
def free_ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def make_runtime_config(args):
    from spu import libspu

    cfg = libspu.RuntimeConfig(
        protocol=libspu.ProtocolKind.ABY3,
        field=libspu.FieldType.FM64,
        fxp_fraction_bits=args.fxp_bits,
    )
    cfg.fxp_exp_mode = libspu.RuntimeConfig.ExpMode.EXP_TAYLOR
    cfg.fxp_exp_iters = args.exp_iters
    cfg.enable_hal_profile = args.profile
    cfg.enable_pphlo_profile = False
    return cfg


class Parties:
    def __init__(self, args, cfg, log_dir):
        from spu import libspu

        self.conns, self.workers = [], []
        cfg_bytes = cfg.SerializeToString()
        self.kind = "brpc" if args.mode == "procs" else "mem"
        if self.kind == "brpc":
            ports = ([args.base_port + i for i in range(NPARTIES)]
                     if args.base_port else free_ports(NPARTIES))
            self.addrs = [f"127.0.0.1:{p}" for p in ports]
            ctx = mp.get_context("spawn")
            for r in range(NPARTIES):
                a, b = ctx.Pipe()
                log = os.path.join(log_dir, f"party{r}.log")
                p = ctx.Process(target=party_main, daemon=True,
                                args=(r, self.addrs, cfg_bytes, b, log, "brpc"))
                p.start()
                self.conns.append(a)
                self.workers.append(p)
        else:
            self.addrs = []
            desc = libspu.link.Desc()
            for r in range(NPARTIES):
                desc.add_party(f"p{r}", f"thread_{r}")
            for r in range(NPARTIES):
                a, b = mp.Pipe()
                t = threading.Thread(target=party_main, daemon=True,
                                     args=(r, [], cfg_bytes, b, None, "mem", desc))
                t.start()
                self.conns.append(a)
                self.workers.append(t)
        self.link_setup_s = [self._recv(r, "ready")[1] for r in range(NPARTIES)]

    def _recv(self, r, expect):
        while not self.conns[r].poll(1.0):
            w = self.workers[r]
            if not w.is_alive():
                code = getattr(w, "exitcode", None)
                raise RuntimeError(f"party {r} died (exitcode {code}); see its log")
        msg = self.conns[r].recv()
        if msg[0] == "error":
            raise RuntimeError(msg[1])
        assert msg[0] == expect, msg
        return msg

    def broadcast(self, per_rank_msgs, expect):
        for r in range(NPARTIES):
            self.conns[r].send(per_rank_msgs[r])
        return [self._recv(r, expect) for r in range(NPARTIES)]

    def stop(self):
        # send to all before waiting: stop_link() waits for the peers
        for r in range(NPARTIES):
            try:
                self.conns[r].send(("stop",))
            except Exception:
                pass
        for r in range(NPARTIES):
            try:
                if self.conns[r].poll(30):
                    self.conns[r].recv()
            except Exception:
                pass
        for w in self.workers:
            w.join(timeout=30)
            if isinstance(w, mp.process.BaseProcess) and w.is_alive():
                w.terminate()  # only our own child


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["bert", "gpt2"], default="bert")
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--layers", type=int, default=None,
                    help="number of layers (default: 6 for bert, 12 for gpt2)")
    ap.add_argument("--hidden", type=int, default=None, help="override (smoke tests)")
    ap.add_argument("--heads", type=int, default=None, help="override (smoke tests)")
    ap.add_argument("--inter", type=int, default=None, help="override (smoke tests)")
    ap.add_argument("--vocab", type=int, default=None, help="override (smoke tests)")
    ap.add_argument("--mode", choices=["procs", "sim"], default="procs",
                    help="procs: 3 OS processes over brpc/loopback; sim: 3 threads, mem link")
    ap.add_argument("--repeat", type=int, default=1,
                    help="timed calls after the warm-up call (default 1)")
    ap.add_argument("--exp-iters", type=int, default=5)
    ap.add_argument("--fxp-bits", type=int, default=18)
    ap.add_argument("--no-puma", action="store_true",
                    help="use stock jax gelu/softmax instead of PUMA's approximations")
    ap.add_argument("--no-profile", dest="profile", action="store_false",
                    help="disable enable_hal_profile (then no comm bytes/rounds)")
    ap.add_argument("--full-logits", action="store_true",
                    help="gpt2: run the HF LM head over all positions, then slice")
    ap.add_argument("--base-port", type=int, default=0,
                    help="brpc ports base..base+2 (default: pick free ports)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-dir", default=None, help="party logs (default: next to --json or /tmp)")
    ap.add_argument("--json", default=None, help="write results JSON here")
    args = ap.parse_args()

    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    t_start = time.perf_counter()
    import numpy as np
    import jax
    import jax.numpy as jnp
    from spu import api as spu_api
    from spu import libspu
    from spu.utils import frontend as spu_fe

    timings = {"imports_s": time.perf_counter() - t_start}

    # ---- model + inputs --------------------------------------------------
    t = time.perf_counter()
    forward, params, reference, desc, vocab = build_model(args)
    rng = np.random.default_rng(args.seed)
    ids = rng.integers(0, vocab, size=(1, args.seq), dtype=np.int32)
    timings["model_init_s"] = time.perf_counter() - t

    # ---- plaintext references -------------------------------------------
    # fresh lambdas: jax caches traces per function object, and the PUMA patch
    # changes what tracing produces
    ref_exact = np.asarray(jax.jit(lambda a, b: reference(a, b))(ids, params),
                           dtype=np.float64)
    with PumaPatch(not args.no_puma):
        ref_approx = np.asarray(jax.jit(lambda a, b: forward(a, b))(ids, params),
                                dtype=np.float64)

    # ---- compile to SPU ---------------------------------------------------
    flat_params, _ = jax.tree_util.tree_flatten(params)
    flat_params = [np.asarray(p) for p in flat_params]
    in_names = ["ids"] + [f"w{i}" for i in range(len(flat_params))]
    in_vis = [libspu.Visibility.VIS_SECRET] * len(in_names)
    copts = libspu.CompilerOptions()
    copts.enable_optimize_denominator_with_broadcast = True
    t = time.perf_counter()
    with PumaPatch(not args.no_puma):
        executable, out_shape = spu_fe.compile(
            spu_fe.Kind.JAX, lambda a, b: forward(a, b), (ids, params), {}, in_names, in_vis,
            lambda outs: [f"out{i}" for i in range(len(outs))], copts=copts)
    timings["compile_s"] = time.perf_counter() - t
    exec_bytes = executable.SerializeToString()

    # ---- parties ----------------------------------------------------------
    cfg = make_runtime_config(args)
    io = spu_api.Io(NPARTIES, cfg)
    log_dir = args.log_dir or (os.path.dirname(os.path.abspath(args.json))
                               if args.json else "/tmp")
    os.makedirs(log_dir, exist_ok=True)
    t = time.perf_counter()
    parties = Parties(args, cfg, log_dir)
    timings["party_start_and_link_s"] = time.perf_counter() - t
    try:
        parties.broadcast([("load", exec_bytes)] * NPARTIES, "ok")
        # model owner: share weights once (leaf by leaf to bound memory)
        t = time.perf_counter()
        wbytes = 0
        batch = [[] for _ in range(NPARTIES)]
        for name, w in zip(in_names[1:], flat_params):
            sh = io.make_shares(w, libspu.Visibility.VIS_SECRET)
            for r in range(NPARTIES):
                batch[r].append((name, sh[r]))
                wbytes += sum(len(c) for c in sh[r].share_chunks)
            if sum(len(b) for b in batch) > 60:
                parties.broadcast([("set", b) for b in batch], "ok")
                batch = [[] for _ in range(NPARTIES)]
        if batch[0]:
            parties.broadcast([("set", b) for b in batch], "ok")
        timings["weight_sharing_s"] = time.perf_counter() - t

        calls = []
        out = None
        for i in range(1 + args.repeat):
            t = time.perf_counter()
            sh = io.make_shares(ids, libspu.Visibility.VIS_SECRET)  # client
            res = parties.broadcast(
                [("run", [("ids", sh[r])]) for r in range(NPARTIES)], "done")
            outs = [io.reconstruct([res[r][1][k] for r in range(NPARTIES)])
                    for k in range(len(res[0][1]))]
            wall = time.perf_counter() - t
            calls.append({
                "wall_s": wall,
                "party_run_s": [res[r][2] for r in range(NPARTIES)],
                "link": [res[r][3] for r in range(NPARTIES)],
            })
            out = np.asarray(outs[0], dtype=np.float64)
    finally:
        parties.stop()

    # ---- results ----------------------------------------------------------
    out = out.reshape(ref_exact.shape)
    err_exact = float(np.max(np.abs(out - ref_exact)))
    err_approx = float(np.max(np.abs(out - ref_approx)))
    approx_vs_exact = float(np.max(np.abs(ref_approx - ref_exact)))
    steady = calls[1:]
    link = steady[-1]["link"]
    comm = None
    if all(l is not None for l in link):
        comm = {
            "per_party": link,
            "total_send_bytes": sum(l["send_bytes"] for l in link),
            "max_send_actions": max(l["send_actions"] for l in link),
        }
    result = {
        "tool": "spu", "spu_version": __import__("spu").__version__,
        "jax_version": jax.__version__,
        "model": args.model, "desc": desc, "seq": args.seq,
        "mode": args.mode, "parties": NPARTIES, "addrs": parties.addrs,
        "protocol": "ABY3", "field": "FM64", "fxp_fraction_bits": args.fxp_bits,
        "fxp_exp_mode": "EXP_TAYLOR", "fxp_exp_iters": args.exp_iters,
        "puma_approx": not args.no_puma, "hal_profile": args.profile,
        "n_weight_tensors": len(flat_params),
        "n_weights": int(sum(p.size for p in flat_params)),
        "weight_share_bytes_all_parties": wbytes,
        "timings": timings,
        "link_setup_s_per_party": parties.link_setup_s,
        "warm_call": calls[0],
        "steady_calls": steady,
        "steady_wall_s": min(c["wall_s"] for c in steady),
        "steady_wall_s_median": statistics.median(c["wall_s"] for c in steady),
        "steady_party_run_s": max(steady[-1]["party_run_s"]),
        "comm": comm,
        "max_abs_err_vs_plain_exact": err_exact,
        "max_abs_err_vs_plain_puma_approx": err_approx,
        "max_abs_plain_puma_approx_vs_exact": approx_vs_exact,
        "max_abs_ref": float(np.max(np.abs(ref_exact))),
        "out_shape": list(out.shape),
        "total_script_s": time.perf_counter() - t_start,
    }

    rows = [
        ("model", desc), ("seq", args.seq),
        ("mode", f"{args.mode} ({NPARTIES} parties, ABY3/FM64/f{args.fxp_bits})"),
        ("compile (jax->pphlo)", f"{timings['compile_s']:.2f} s"),
        ("party start + link", f"{timings['party_start_and_link_s']:.2f} s"),
        ("weight sharing", f"{timings['weight_sharing_s']:.2f} s"),
        ("warm call wall", f"{calls[0]['wall_s']:.3f} s"),
        ("steady call wall", f"{result['steady_wall_s']:.3f} s"),
        ("steady party run", f"{result['steady_party_run_s']:.3f} s"),
    ]
    if comm:
        rows += [
            ("comm total send", f"{comm['total_send_bytes'] / 2**20:.2f} MiB "
                                f"({comm['total_send_bytes']} B, all parties)"),
            ("send actions (max party)", f"{comm['max_send_actions']} (~rounds, upper bound)"),
        ]
    rows += [
        ("max|err| vs plain exact", f"{err_exact:.3e}"),
        ("max|err| vs plain PUMA-approx", f"{err_approx:.3e}"),
        ("max|ref|", f"{result['max_abs_ref']:.3e}"),
    ]
    w = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{w}}  {v}" for k, v in rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
