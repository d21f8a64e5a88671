"""`tf-puma COMMAND [flags]`: the command-line interface.

Commands:
  convert IN_SAVEDMODEL OUT_DIR [--signature NAME] [--public-input NAME ...]
          [--input-shape NAME=1x32 ...] [--version N] [--overwrite]
          [--generate --prompt-tokens N]
          plaintext SavedModel -> secure SavedModel + OUT_DIR/shares/party{0,1,2}
          (--generate: a causal LM's generate_step signature -> a generation model)
  party   --cluster SPEC --task I [--shares DIR] [--recycle-growth 0.1] [--tls-dir DIR]
          [--intra-op-threads N]
          start one party's TensorFlow server with its own share bundle (a watching
          process restarts it after a crash and recycles it when grown, between sessions)
  certs   --cluster SPEC OUT_DIR [--days N]
          a CA and one TLS directory per task (OUT_DIR/client, party0..2) for --tls-dir
  run     --model OUT_DIR --input inputs.json (--cluster SPEC | --local)
          run the secure model; prints outputs (JSON) and a run summary
  generate --model OUT_DIR (--prompt TEXT --tokenizer DIR | --prompt-ids 1,2,3)
          --max-new-tokens N (--cluster SPEC | --local) [--temperature T] [--seed S]
          secure generation (a model from convert --generate): prints tokens as they
          arrive, the KV cache kept secret-shared on the parties
  serve   (--model_name NAME --model_base_path DIR | --model_config_file F)
          (--cluster SPEC | --local) [--file_system_poll_wait_seconds 1]
          [--port 8500] [--rest_api_port 8501] [--enable_batching
          [--batching_parameters_file F]] [--ssl_config_file F]
          TF Serving's PredictionService (gRPC) and REST API for a secure model
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Callable

from absl import app, flags

from tf_puma.apps import prepare_process

FLAGS = flags.FLAGS
flags.DEFINE_string("cluster", None, "cluster spec: a JSON file or JSON text "
                    '({"client": ["host:port"], "puma": ["h0:p", "h1:p", "h2:p"]})')
flags.DEFINE_integer("task", None, "this party's index (0, 1 or 2)", lower_bound=0, upper_bound=2)
flags.DEFINE_string("shares", None, "this party's own share bundle directory (OUT/shares/partyI)")
flags.DEFINE_string("signature", None, "signature to convert or run (default: serving_default "
                    "for convert, the converted one for run)")
flags.DEFINE_multi_string("public-input", [], "convert: a signature input the parties may see "
                          "in plaintext (repeatable)")
flags.DEFINE_multi_string("input-shape", [], "convert: NAME=D0xD1... fixes an input's unknown "
                          "dimensions (repeatable)")
flags.DEFINE_string("bind", None, "party, run, serve: the address this process's TensorFlow server "
                    "listens on (default: its host in the cluster spec; 0.0.0.0 = every interface)")
flags.DEFINE_integer("intra-op-threads", 0, "party: threads one kernel may use (0: every core); "
                     "parties sharing one host run faster with its cores divided between them",
                     lower_bound=0)
flags.DEFINE_float("recycle-growth", 0.10, "party: replace the server, between client sessions, "
                   "once it has grown this fraction past its size after the first session "
                   "(TensorFlow keeps every finished client's graphs); 0 turns it off",
                   lower_bound=0.0)
flags.DEFINE_float("deadline", None, "run: seconds each call may take before the parties are "
                   "checked and the call fails naming a stuck party (default: 600 s for the "
                   "first call, then 10x the last call + 30 s)", lower_bound=0.1)
flags.DEFINE_string("model_name", None, "serve: the name clients ask for")
flags.DEFINE_string("model_base_path", None, "serve: a secure model directory, or a directory "
                    "of numeric versions (1/, 2/ ...) of one; the newest is served")
flags.DEFINE_integer("port", 8500, "serve: gRPC port (tensorflow_serving.apis PredictionService)")
flags.DEFINE_integer("rest_api_port", 8501, "serve: REST port (0: no REST API)")
flags.DEFINE_string("model_config_file", None, "serve: a ModelServerConfig text proto naming "
                    "several models (model_config_list { config { name: base_path: } })")
flags.DEFINE_float("file_system_poll_wait_seconds", 1.0, "serve: how often to look for a new "
                   "version directory (loaded, warmed and swapped in; 0: never)", lower_bound=0)
flags.DEFINE_boolean("enable_batching", False, "serve: pack concurrent requests into one secure "
                     "call (a call's time is mostly rounds)")
flags.DEFINE_string("batching_parameters_file", None, "serve: TF Serving's BatchingParameters "
                    "text proto (max_batch_size, batch_timeout_micros, max_enqueued_batches)")
flags.DEFINE_string("ssl_config_file", None, "serve: TF Serving's SSLConfig text proto "
                    "(server_key, server_cert as PEM text; custom_ca, client_verify): TLS on the "
                    "gRPC port (REST stays plain HTTP, as in TF Serving)")
flags.DEFINE_integer("version", None, "convert: write OUT_DIR/VERSION (TF Serving's layout: "
                     "serve OUT_DIR as --model_base_path)", lower_bound=1)
flags.DEFINE_string("calibrate", None, "convert: a JSON file of sample inputs (one object of "
                    "named inputs, or a list): refuse the conversion if one drives a value out of "
                    "a protocol's range (the report goes to the model owner's log only)")
flags.DEFINE_boolean("overwrite", False, "convert: replace an existing OUT_DIR")
flags.DEFINE_enum("trunc-rounds", "auto", ["2", "3", "auto"], "convert: rounds of each "
                  "fixed-point truncation: 2 (7.3 ring elements per truncated value), 3 (5.3: "
                  "a quarter less traffic, one more round per product), or auto: 3 for values "
                  "of at least 65,536 elements (an encoder's or a prefill's wide products), "
                  "2 for smaller ones (a decoded token's)")
flags.DEFINE_string("model", None, "run: the secure model directory (tf-puma convert's OUT_DIR)")
flags.DEFINE_string("input", None, "run: JSON file mapping input names to nested lists")
flags.DEFINE_boolean("local", False, "run, serve: start three local party servers with the model's "
                     "share bundles, and stop them afterwards")
flags.DEFINE_boolean("generate", False, "convert: the model's generate_step signature into a "
                     "generation model (prefill + decode, KV cache kept on the parties)")
flags.DEFINE_integer("prompt-tokens", 16, "convert --generate: the prompt bucket (longest "
                     "prompt; shorter ones are padded)", lower_bound=1)
flags.DEFINE_string("prompt", None, "generate: the prompt text (tokenized on the client)")
flags.DEFINE_list("prompt-ids", None, "generate: the prompt as token ids (comma-separated)")
flags.DEFINE_string("tokenizer", None, "generate: a transformers tokenizer directory (or "
                    "`smollm2` for the bundled SmolLM2 one) for --prompt and the printed tokens")
flags.DEFINE_integer("max-new-tokens", 16, "generate: tokens to generate", lower_bound=1)
flags.DEFINE_float("temperature", 0.0, "generate: 0 = greedy (the parties' argmax); > 0 = "
                   "sampled on the client from revealed logits", lower_bound=0.0)
flags.DEFINE_integer("seed", None, "generate: the client's sampling seed")
flags.DEFINE_string("tls-dir", None, "party, run, generate, serve: this task's TLS directory "
                    "(ca.pem, cert.pem, key.pem; `tf-puma certs` makes them): every link to the "
                    "other tasks goes through mutual-TLS tunnels (stunnel), TensorFlow's server "
                    "listens on loopback only")
flags.DEFINE_integer("days", 365, "certs: validity of the CA and certificates", lower_bound=1)
flags.DEFINE_integer("repeat", 1, "run: calls to make (the summary reports the last)",
                     lower_bound=1)


def _parse_shapes(items: list[str]) -> dict[str, list[int]]:
    shapes = {}
    for item in items:
        name, sep, dims = item.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = [int(d) for d in dims.lower().split("x")]
            if any(d <= 0 for d in shapes[name]):
                raise ValueError
        except ValueError:
            raise app.UsageError(f"--input-shape {item!r}: expected NAME=D0xD1... with positive "
                                 "dimensions, e.g. input_ids=1x32") from None
    return shapes


def _fail(command: str, err: object, status: int = 1) -> None:
    """A user's mistake: one line on stderr, exit `status` (no traceback)."""
    print(f"tf-puma {command}: {err}", file=sys.stderr)
    sys.exit(status)


def _convert(argv: list[str]) -> None:
    if len(argv) != 3:
        raise app.UsageError("convert needs IN_SAVEDMODEL OUT_DIR")
    input_shapes = _parse_shapes(FLAGS["input-shape"].value)  # before TensorFlow's import
    from tf_puma.rewrites.graph import ConversionError  # noqa: PLC0415
    from tf_puma.rewrites import convert  # noqa: PLC0415
    from tf_puma import config  # noqa: PLC0415
    out = argv[2] if FLAGS.version is None else os.path.join(argv[2], str(FLAGS.version))
    try:
        rounds = config.parse_trunc_rounds(FLAGS["trunc-rounds"].value)
        with config.use(config.Config(trunc_rounds=rounds)):
            _convert_with_config(argv, out, input_shapes, convert)
    except ConversionError as err:
        _fail("convert", err)


def _convert_with_config(argv: list[str], out: str, input_shapes, convert) -> None:
    """convert or convert --generate, under the Config the flags chose."""
    if FLAGS.generate and FLAGS.calibrate:
        raise app.UsageError("--calibrate checks a forward signature, not --generate's "
                             "decoding step: run it on the model's forward pass (convert "
                             "--calibrate to a scratch directory), then convert --generate")
    if FLAGS.generate:
        convert.convert_generation(argv[1], out, FLAGS["prompt-tokens"].value,
                                   overwrite=FLAGS.overwrite)
    else:
        convert.convert(argv[1], out, signature=FLAGS.signature or "serving_default",
                        input_shapes=input_shapes,
                        public_inputs=FLAGS["public-input"].value, overwrite=FLAGS.overwrite,
                        calibrate=FLAGS.calibrate)


def _certs(argv: list[str]) -> None:
    if len(argv) != 2 or FLAGS.cluster is None:
        raise app.UsageError("certs needs --cluster SPEC and OUT_DIR")
    from tf_puma import certs  # noqa: PLC0415
    from tf_puma.cluster import Cluster  # noqa: PLC0415

    try:
        cluster = Cluster.from_spec(FLAGS.cluster)
        directories = certs.make_deployment(argv[1], FLAGS.days)
    except (OSError, ValueError) as err:
        _fail("certs", err)
    addresses = [cluster.client, *cluster.parties]
    print(f"tf-puma certs: a CA in {os.path.join(argv[1], 'ca')} (keep ca-key.pem offline) and "
          "one TLS directory per task; copy each to its host and pass it as --tls-dir:")
    for directory, task, address in zip(directories, certs.TASK_NAMES, addresses):
        print(f"  {directory}  ->  {task} at {address}")


def _tls_cluster(command: str, cluster, task: str):
    """With --tls-dir: checks the TLS directory for `task` (a clear error now, not a hang later)
    and returns the loopback cluster TensorFlow uses; without it, `cluster` itself."""
    if FLAGS["tls-dir"].value is None:
        return cluster
    from tf_puma import certs, tunnels  # noqa: PLC0415

    try:
        certs.check_tls_dir(FLAGS["tls-dir"].value, task)
    except certs.TlsSetupError as err:
        _fail(command, err)
    return tunnels.loopback_cluster(cluster)


def _party(argv: list[str]) -> None:
    del argv
    if FLAGS.cluster is None or FLAGS.task is None:
        raise app.UsageError("party needs --cluster SPEC and --task I")
    from tf_puma import listen  # noqa: PLC0415
    from tf_puma.cluster import Cluster  # noqa: PLC0415

    tls_dir = FLAGS["tls-dir"].value
    try:  # before anything imports TensorFlow: this re-executes the command once
        cluster = Cluster.from_spec(FLAGS.cluster)
        tf_cluster = _tls_cluster("party", cluster, f"party{FLAGS.task}")
        # With TLS the TF server listens on loopback and --bind applies to the public port.
        host = ("127.0.0.1" if tls_dir else
                FLAGS.bind or listen.host_of(cluster.parties[FLAGS.task]))
        listen.listen_only_on(host)
    except (listen.ListenError, ValueError) as err:
        _fail("party", err)
    from tf_puma.apps import supervisor  # noqa: PLC0415

    if not supervisor.in_server():  # this process watches; a child runs TensorFlow's server
        from tf_puma.cluster import exit_with_parent  # noqa: PLC0415

        exit_with_parent()
        tunnel = None
        if tls_dir:  # the tunnels outlive server restarts: the watcher owns them
            from tf_puma import tunnels  # noqa: PLC0415

            try:
                tunnel = tunnels.Tunnels(cluster, f"party{FLAGS.task}", tls_dir,
                                         public_bind=FLAGS.bind).start()
            except (tunnels.TunnelError, ValueError) as err:
                _fail("party", err)
        try:
            sys.exit(supervisor.supervise(FLAGS["recycle-growth"].value))
        finally:
            if tunnel is not None:
                tunnel.stop()
    from tf_puma.apps.party import PortInUse, bound_heap, serve  # noqa: PLC0415

    bound_heap()  # before TensorFlow starts its threads
    from tf_puma.bundle import BundleError  # noqa: PLC0415

    try:
        serve(tf_cluster, FLAGS.task, FLAGS.shares, bind_host=host,
              intra_op_threads=FLAGS["intra-op-threads"].value)
    except PortInUse as err:  # its own status: LocalCluster then starts on fresh ports
        from tf_puma.cluster import PORT_IN_USE_EXIT  # noqa: PLC0415

        _fail("party", err, PORT_IN_USE_EXIT)
    except (BundleError, listen.ListenError) as err:
        _fail("party", err)


def _listen_as_client(command: str) -> str:
    """The host this client task's public ports listen on (--bind, else 127.0.0.1 for --local,
    else the spec's client host); re-executes the command once with the bind shim, which makes
    TensorFlow's server listen there (on 127.0.0.1 with --tls-dir: the tunnels face out)."""
    if (FLAGS.cluster is None) == (not FLAGS.local):
        raise app.UsageError(f"{command} needs exactly one of --cluster SPEC and --local")
    if FLAGS.local and FLAGS["tls-dir"].value:
        raise app.UsageError(f"{command}: --tls-dir is for --cluster deployments (--local "
                             "parties listen on loopback only)")
    from tf_puma import listen  # noqa: PLC0415
    from tf_puma.cluster import Cluster  # noqa: PLC0415

    try:
        host = FLAGS.bind or ("127.0.0.1" if FLAGS.local
                              else listen.host_of(Cluster.from_spec(FLAGS.cluster).client))
        if FLAGS["tls-dir"].value:
            _tls_cluster(command, Cluster.from_spec(FLAGS.cluster), "client")
        listen.listen_only_on("127.0.0.1" if FLAGS["tls-dir"].value else host)
    except (listen.ListenError, ValueError) as err:
        _fail(command, err)
    return host


def _connect(command: str, cluster, host: str) -> str:
    """Connects this process as the client task (through TLS tunnels with --tls-dir); returns
    the host TensorFlow's server listens on (for listen.check_listening)."""
    import tf_puma  # noqa: PLC0415
    from tf_puma import tunnels  # noqa: PLC0415

    tls_dir = FLAGS["tls-dir"].value
    try:
        tf_puma.connect(cluster, bind=host if tls_dir is None else FLAGS.bind, tls_dir=tls_dir)
    except tunnels.TunnelError as err:
        _fail(command, err)
    return "127.0.0.1" if tls_dir else host


def _serve(argv: list[str]) -> None:
    del argv
    if (FLAGS.model_config_file is None) == (FLAGS.model_base_path is None):
        raise app.UsageError("serve needs --model_name NAME with --model_base_path DIR, or "
                             "--model_config_file FILE")
    if FLAGS.model_base_path is not None and FLAGS.model_name is None:
        raise app.UsageError("serve needs --model_name NAME with --model_base_path DIR")
    host = _listen_as_client("serve")
    from tf_puma.apps.serving import read_model_config, serve  # noqa: PLC0415

    try:
        models = (read_model_config(FLAGS.model_config_file) if FLAGS.model_config_file
                  else [(FLAGS.model_name, FLAGS.model_base_path)])
        batching = None
        if FLAGS.enable_batching:
            from tf_puma.apps.serving import batcher  # noqa: PLC0415

            batching = batcher.BatchingParameters()
            if FLAGS.batching_parameters_file:
                with open(FLAGS.batching_parameters_file, encoding="utf-8") as fh:
                    batching = batcher.parse_parameters(fh.read())
        ssl_config = None
        if FLAGS.ssl_config_file:  # read before any party starts: a bad file fails at once
            from tf_puma.apps.serving import tls  # noqa: PLC0415

            ssl_config = tls.read_ssl_config(FLAGS.ssl_config_file)
        serve(models, FLAGS.port, FLAGS.rest_api_port, FLAGS.cluster, FLAGS.local, host,
              batching, FLAGS.file_system_poll_wait_seconds, ssl_config,
              tls_dir=FLAGS["tls-dir"].value, tunnel_bind=FLAGS.bind)
    except (OSError, ValueError) as err:  # PartyUnavailable is a ConnectionError
        _fail("serve", err)


def _stage(text: str, command: str = "run") -> None:
    print(f"tf-puma {command}: {text} ...", file=sys.stderr, flush=True)


def _run(argv: list[str]) -> None:
    del argv
    if FLAGS.model is None or FLAGS.input is None:
        raise app.UsageError("run needs --model OUT_DIR and --input inputs.json")
    from tf_puma import listen  # noqa: PLC0415

    host = _listen_as_client("run")
    import tf_puma  # noqa: PLC0415
    from tf_puma import secure_model  # noqa: PLC0415

    try:
        manifest = secure_model.read_manifest(FLAGS.model)
    except secure_model.ManifestError as err:
        _fail("run", err)
    try:
        with open(FLAGS.input, encoding="utf-8") as fh:
            inputs = secure_model.check_inputs(manifest, json.load(fh))
    except (OSError, json.JSONDecodeError, secure_model.InputError) as err:
        _fail("run", f"{FLAGS.input}: {err}")
    local = (tf_puma.LocalCluster(shares_dir=os.path.join(FLAGS.model, "shares"))
             if FLAGS.local else None)
    try:
        cluster = local.start() if local else tf_puma.Cluster.from_spec(FLAGS.cluster)
        host = _connect("run", cluster, host)
        _stage(f"parties ready; loading {FLAGS.model} ({manifest.secure_graph_ops:,} graph ops)")
        start = time.perf_counter()
        model = secure_model.load(FLAGS.model, FLAGS.signature, deadline_s=FLAGS.deadline)
        load_s = time.perf_counter() - start
        _stage(f"loaded in {load_s:.1f} s; first call (the parties register the graph)")
        walls = []
        for _ in range(FLAGS.repeat):
            start = time.perf_counter()
            try:
                outputs = {k: v.numpy() for k, v in model(**inputs).items()}
            except (tf_puma.PartyUnavailable, TimeoutError) as err:
                _fail("run", err)
            walls.append(time.perf_counter() - start)
            try:  # the client's server is up by the first call's end
                listen.check_listening(host)
            except listen.ListenError as err:
                _fail("run", err)
    finally:
        if local:
            local.stop()
    print(json.dumps({k: v.tolist() for k, v in outputs.items()}))
    sent = manifest.total.bytes_by_sender
    print(f"run summary: load {load_s:.1f} s, first call {walls[0]:.2f} s"
          + (f", last call {walls[-1]:.2f} s" if len(walls) > 1 else "")
          + f"; {manifest.total.rounds} rounds on the critical path; bytes sent: "
          + ", ".join(f"P{i} {sent.get(str(i), 0) / 2 ** 20:.1f} MiB" for i in range(3))
          + f", client {sent.get('client', 0) / 2 ** 20:.1f} MiB", file=sys.stderr)


def _tokenizer(spec: str):
    from tf_puma.apps import hf  # noqa: PLC0415
    if spec == "smollm2":
        return hf.smollm2_tokenizer()
    return hf.use_transformers().AutoTokenizer.from_pretrained(spec)


def _generate(argv: list[str]) -> None:
    del argv
    if FLAGS.model is None or (FLAGS.prompt is None) == (FLAGS["prompt-ids"].value is None):
        raise app.UsageError("generate needs --model OUT_DIR and one of --prompt TEXT "
                             "(with --tokenizer) and --prompt-ids 1,2,3")
    if FLAGS.prompt is not None and FLAGS.tokenizer is None:
        raise app.UsageError("--prompt needs --tokenizer DIR (or smollm2)")
    host = _listen_as_client("generate")
    import tf_puma  # noqa: PLC0415
    from tf_puma import secure_model  # noqa: PLC0415

    try:
        manifest = secure_model.read_manifest(FLAGS.model)
    except secure_model.ManifestError as err:
        _fail("generate", err)
    if manifest.generation is None:
        _fail("generate", f"{FLAGS.model} is not a generation model: convert the causal LM's "
                          "generate_step signature with `tf-puma convert --generate`")
    tok = _tokenizer(FLAGS.tokenizer) if FLAGS.tokenizer else None
    try:
        prompt = (tok(FLAGS.prompt)["input_ids"] if FLAGS.prompt is not None
                  else [int(t) for t in FLAGS["prompt-ids"].value])
    except ValueError:
        _fail("generate", f"--prompt-ids {FLAGS['prompt-ids'].value}: expected integers")
    stops = [tok.eos_token_id] if tok is not None and tok.eos_token_id is not None else []
    local = (tf_puma.LocalCluster(shares_dir=os.path.join(FLAGS.model, "shares"))
             if FLAGS.local else None)
    from tf_puma import listen  # noqa: PLC0415
    try:
        cluster = local.start() if local else tf_puma.Cluster.from_spec(FLAGS.cluster)
        host = _connect("generate", cluster, host)
        _stage(f"parties ready; loading {FLAGS.model}", "generate")
        start = time.perf_counter()
        gen = tf_puma.load_generator(FLAGS.model, deadline_s=FLAGS.deadline)
        _stage(f"loaded in {time.perf_counter() - start:.1f} s; prompt of {len(prompt)} tokens",
               "generate")
        times = []

        def show(token: int) -> None:
            times.append(time.perf_counter())
            text = tok.decode([token]) if tok is not None else f"{token} "
            print(text, end="", flush=True)

        start = time.perf_counter()
        try:
            tokens = gen.generate(prompt, FLAGS["max-new-tokens"].value, on_token=show,
                                  stop_tokens=stops, temperature=FLAGS.temperature,
                                  seed=FLAGS.seed)
        except (ValueError, tf_puma.PartyUnavailable, TimeoutError) as err:
            print(file=sys.stderr)
            _fail("generate", err)
        try:
            listen.check_listening(host)
        except listen.ListenError as err:
            _fail("generate", err)
    finally:
        if local:
            local.stop()
    print()
    per_token = ((times[-1] - times[0]) / (len(times) - 1)) if len(times) > 1 else float("nan")
    print(f"generate summary: {len(tokens)} tokens; prompt (first token) "
          f"{times[0] - start:.2f} s, then {per_token:.2f} s per token", file=sys.stderr)


COMMANDS: dict[str, Callable[[list[str]], None]] = {"convert": _convert, "party": _party,
                                                    "run": _run, "generate": _generate,
                                                    "serve": _serve, "certs": _certs}


COMMAND_FLAGS = {"convert": ("signature", "public-input", "input-shape", "version", "overwrite",
                             "generate", "prompt-tokens"),
                 "generate": ("model", "prompt", "prompt-ids", "tokenizer", "max-new-tokens",
                              "cluster", "local", "temperature", "seed", "deadline", "bind",
                              "tls-dir"),
                 "party": ("cluster", "task", "shares", "bind", "recycle-growth", "tls-dir",
                           "intra-op-threads"),
                 "run": ("model", "input", "cluster", "local", "signature", "repeat", "deadline",
                         "bind", "tls-dir"),
                 "serve": ("model_name", "model_base_path", "model_config_file", "port",
                           "rest_api_port", "cluster", "local", "bind", "enable_batching",
                           "batching_parameters_file", "file_system_poll_wait_seconds",
                           "ssl_config_file", "tls-dir"),
                 "certs": ("cluster", "days")}
_HELP = ("-h", "--help", "--helpshort", "--helpfull")


def command_help(command: str) -> str:
    """A command's usage (from this module's docstring) and its own flags."""
    doc = __doc__.split("Commands:", 1)[1].split("\n")
    start = next(i for i, line in enumerate(doc) if line.strip().startswith(command + " "))
    usage = [" ".join(doc[start].split())]
    for line in doc[start + 1:]:
        if not line.startswith("        "):
            break
        usage.append(line.strip())
    lines = [f"usage: tf-puma {usage[0]}", *("  " + u for u in usage[1:]), "", "flags:"]
    for name in COMMAND_FLAGS[command]:
        flag = FLAGS[name]
        default = "" if flag.default in (None, [], False) else f" (default: {flag.default})"
        lines.append(f"  --{name}: {flag.help}{default}")
    return "\n".join(lines)


def run_main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) >= 2 and argv[1] in (*_HELP, "help"):
        print(__doc__.strip())
        sys.exit(0)
    if len(argv) < 2 or argv[1] not in COMMANDS:
        print(__doc__.strip(), file=sys.stderr)
        sys.exit(2)
    command = argv.pop(1)
    if any(arg in _HELP for arg in argv[1:]):  # no TensorFlow needed for help
        print(command_help(command))
        sys.exit(0)
    prepare_process(client=command != "party")  # before TensorFlow loads
    app.run(COMMANDS[command], argv=[f"{argv[0]} {command}", *argv[1:]])


if __name__ == "__main__":
    run_main()
