"""`tf-puma COMMAND [flags]`: the command-line interface.

Commands:
  party   start one party's TensorFlow server: --cluster SPEC --task I [--shares DIR]
"""

from __future__ import annotations

import sys
from typing import Callable

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("cluster", None, "cluster spec: a JSON file or JSON text "
                    '({"client": ["host:port"], "puma": ["h0:p", "h1:p", "h2:p"]})')
flags.DEFINE_integer("task", None, "this party's index (0, 1 or 2)", lower_bound=0, upper_bound=2)
flags.DEFINE_string("shares", None, "this party's own share bundle directory (OUT/shares/partyI)")


def _party(argv: list[str]) -> None:
    del argv
    if FLAGS.cluster is None or FLAGS.task is None:
        raise app.UsageError("party needs --cluster SPEC and --task I")
    from tf_puma.cluster import Cluster  # noqa: PLC0415
    from tf_puma.party import serve  # noqa: PLC0415

    serve(Cluster.from_spec(FLAGS.cluster), FLAGS.task, FLAGS.shares)


COMMANDS: dict[str, Callable[[list[str]], None]] = {"party": _party}


def run_main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    command = argv.pop(1)
    app.run(COMMANDS[command], argv=[f"{argv[0]} {command}", *argv[1:]])


if __name__ == "__main__":
    run_main()
