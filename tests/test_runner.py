"""`make test`'s runner (tests/run_in_processes.py): every test module runs, once."""

from __future__ import annotations

import os

from tests import run_in_processes


def test_every_test_module_is_in_exactly_one_group():
    here = os.path.dirname(os.path.abspath(__file__))
    modules = sorted(f for f in os.listdir(here) if f.startswith("test_") and f.endswith(".py"))
    for slots in (1, 2, 3):
        groups = run_in_processes.make_groups(slots)
        files = [f for g in groups for f in g.files]
        assert sorted(files) == modules and len(files) == len(set(files))
        assert all(g.files for g in groups)
        assert all([f] in [g.files for g in groups] for f in run_in_processes.OWN_PROCESS)
