"""Runs the test suite as several pytest processes, at most N at a time, each exiting when done.

`make test` uses this instead of one long pytest (or pytest-xdist's long-lived workers): a
pytest process keeps every model it converted and every graph its parties ran until it exits
(TensorFlow frees neither), so two xdist workers that each went through half the real-model
modules reached CI's 24 GiB. Here each real-model module gets a process of its own (and its own
three local parties), and the light modules share a few; memory is returned at each exit.

    python tests/run_in_processes.py [-n 2] [pytest args ...]

Prints each group's pytest output as the group finishes, then a table of groups, seconds and
results; exits 1 if any group failed (or found no tests where it should have), 0 otherwise.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

TESTS = os.path.dirname(os.path.abspath(__file__))

# Modules that convert real models or restart parties, longest first (seconds measured on 2
# cores, for the order only): each runs in a process of its own. Longest first keeps the last
# group to finish short, so two slots end close together.
OWN_PROCESS = [
    "test_generation.py",   # ~240 s
    "test_models.py",       # ~200 s: MiniLM, BERT, GPT-2 converted and run
    "test_faults.py",       # ~170 s: parties stopped, killed and restarted
    "test_serve.py",        # ~130 s
    "test_demo.py",         # ~120 s
    "test_classifier.py",   # ~100 s
    "test_decoders.py",     # ~65 s
    "test_readme.py",       # ~60 s
    "test_smollm2.py",      # ~50 s, a 6 GiB child process
]


@dataclass
class Group:
    files: list[str]
    seconds: float = 0.0
    code: int | None = None
    log: str = ""
    started: float = field(default=0.0, repr=False)


def make_groups(slots: int) -> list[Group]:
    """Each OWN_PROCESS module alone, then the other test modules split into `slots` groups
    (round robin over sorted names, so every file is in exactly one group)."""
    present = sorted(f for f in os.listdir(TESTS) if f.startswith("test_") and f.endswith(".py"))
    missing = [f for f in OWN_PROCESS if f not in present]
    if missing:
        raise SystemExit(f"run_in_processes.py lists test modules that do not exist: {missing}; "
                         "update OWN_PROCESS")
    rest = [f for f in present if f not in OWN_PROCESS]
    groups = [Group([f]) for f in OWN_PROCESS]
    groups += [Group(rest[i::slots]) for i in range(slots) if rest[i::slots]]
    return groups


def run(groups: list[Group], slots: int, pytest_args: list[str], logdir: str) -> None:
    pending = list(groups)
    running: list[tuple[Group, subprocess.Popen]] = []
    try:
        _schedule(pending, running, slots, pytest_args, logdir)
    finally:  # interrupted: no pytest (nor its parties) is left behind
        for _, proc in running:
            proc.terminate()
        for _, proc in running:
            proc.wait()


def _schedule(pending: list[Group], running: list, slots: int, pytest_args: list[str],
              logdir: str) -> None:
    while pending or running:
        while pending and len(running) < slots:
            group = pending.pop(0)
            group.log = os.path.join(logdir, "+".join(f[:-3] for f in group.files) + ".log")
            out = open(group.log, "w")
            cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                   "--durations=5", "--durations-min=5", *pytest_args,
                   *[os.path.join(TESTS, f) for f in group.files]]
            group.started = time.monotonic()
            running.append((group, subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)))
            out.close()
        time.sleep(0.5)
        for entry in list(running):
            group, proc = entry
            code = proc.poll()
            if code is None:
                continue
            running.remove(entry)
            group.code, group.seconds = code, time.monotonic() - group.started
            with open(group.log) as f:
                text = f.read()
            print(f"\n===== {' '.join(group.files)}: exit {code} in {group.seconds:.0f} s =====")
            print(text.rstrip(), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2, help="pytest processes at a time (default 2)")
    args, pytest_args = parser.parse_known_args(argv)
    if args.n < 1:
        parser.error("-n must be at least 1")
    groups = make_groups(args.n)
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tf-puma-tests-") as logdir:
        run(groups, args.n, pytest_args, logdir)
    # pytest exits 5 when a -m/-k selection leaves a module with no tests: not a failure then.
    allowed = {0, 5} if any(a in ("-m", "-k") or a.startswith(("-m", "-k")) for a in pytest_args) else {0}
    failed = [g for g in groups if g.code not in allowed]
    print(f"\n{'group':60s} {'s':>5s}  result")
    for g in groups:
        result = "ok" if g.code in allowed else f"FAILED (exit {g.code})"
        print(f"{' '.join(g.files)[:60]:60s} {g.seconds:5.0f}  {result}")
    print(f"{len(groups)} pytest processes, {args.n} at a time: {time.monotonic() - began:.0f} s; "
          + (f"{len(failed)} failed" if failed else "all passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
