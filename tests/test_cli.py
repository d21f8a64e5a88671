"""The `tf-puma` command line."""

from __future__ import annotations

import subprocess
import sys


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tf_puma.cli", *args], capture_output=True,
                          text=True, timeout=120)


def test_no_command_prints_usage():
    proc = run_cli()
    assert proc.returncode == 2
    assert "party" in proc.stderr


def test_party_needs_cluster_and_task():
    proc = run_cli("party")
    assert proc.returncode != 0
    assert "party needs --cluster SPEC and --task I" in proc.stderr


def test_party_rejects_bad_task():
    proc = run_cli("party", "--cluster", '{"client": ["a:1"], "puma": ["b:1", "c:1", "d:1"]}',
                   "--task", "3")
    assert proc.returncode != 0
    assert "task" in proc.stderr
