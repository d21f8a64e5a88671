"""The demo as a user runs it (`make demo` = `python -m tf_puma.apps.demo`), on MiniLM cut to one
encoder layer: it finishes, agrees with plaintext, and prints no error lines."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import error_lines

pytestmark = pytest.mark.slow  # ~40 s: a real (1-layer) MiniLM converted and served


def test_demo_runs_clean_on_one_layer():
    done = subprocess.run([sys.executable, "-m", "tf_puma.apps.demo", "--layers", "1"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "rankings identical: True" in done.stdout, done.stdout[-2000:]
    assert "parties stopped" in done.stdout
    # Used to print one `Failed to remove function remotely` ERROR per party after the parties
    # stopped, a oneDNN int64 ERROR line and a cuInit ERROR line (the CUDA tensorflow package).
    assert not error_lines(done.stderr), done.stderr[-3000:]
    assert "Failed to remove function" not in done.stderr
