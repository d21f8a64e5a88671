"""The `tf-puma` command line."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tf_puma.apps.cli", *args], capture_output=True,
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
    assert "--task" in proc.stderr and "3" in proc.stderr and "usage" not in proc.stderr.lower()


def test_each_command_shows_its_own_flags_without_tensorflow():
    for command, own, others in (("convert", "--input-shape", "--task"),
                                 ("party", "--shares", "--input-shape"),
                                 ("run", "--repeat", "--overwrite")):
        for flag in ("--help", "-h"):
            proc = run_cli(command, flag)
            assert proc.returncode == 0, proc.stderr
            assert proc.stdout.startswith(f"usage: tf-puma {command} ")
            assert own in proc.stdout and others not in proc.stdout
            assert proc.stderr == ""  # no TensorFlow log lines: TF was never imported
    top = run_cli("--help")
    assert top.returncode == 0 and "convert" in top.stdout and "party" in top.stdout


def test_input_shapes_must_be_positive(tmp_path):
    for bad in ("x=0x3", "x=-1x3", "x", "=1x2", "x=1xa"):
        proc = run_cli("convert", str(tmp_path / "in"), str(tmp_path / "out"), "--input-shape",
                       bad)
        assert proc.returncode != 0
        assert "expected NAME=D0xD1... with positive dimensions" in proc.stderr, proc.stderr


def test_the_library_does_not_import_the_apps():
    """The import graph runs apps -> rewrites -> protocols -> sharing -> runtime -> ops."""
    code = ("import sys, tf_puma, tf_puma.rewrites.convert, tf_puma.audit, tf_puma.bundle; "
            "tf_puma.load; tf_puma.share; "
            "print(sorted(m for m in sys.modules if m.startswith('tf_puma.apps')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_run_needs_exactly_one_way_to_reach_the_parties(tmp_path):
    (tmp_path / "in.json").write_text("{}")
    common = ["run", "--model", str(tmp_path), "--input", str(tmp_path / "in.json")]
    for extra in ([], ["--local", "--cluster", '{"client": ["a:1"], "puma": ["b:1", "c:1", '
                                                '"d:1"]}']):
        proc = run_cli(*common, *extra)
        assert proc.returncode != 0
        assert "run needs exactly one of --cluster SPEC and --local" in proc.stderr


def test_run_on_a_directory_that_is_not_a_secure_model(tmp_path):
    (tmp_path / "in.json").write_text("{}")
    proc = run_cli("run", "--model", str(tmp_path), "--input", str(tmp_path / "in.json"),
                   "--local")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"tf-puma run: {tmp_path} is not a tf-puma secure model (no tf_puma.json); create one "
        "with `tf-puma convert IN_SAVEDMODEL OUT_DIR`")


_COUNT_ARENAS = r"""
import ctypes, os, sys, tempfile, threading
sys.path.insert(0, sys.argv[1])
if sys.argv[2] == "client":
    from tf_puma.apps import prepare_process
    prepare_process(client=True)
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
go, held = threading.Event(), []
def work():  # a new thread's first malloc takes a new arena while the limit allows
    held.append(libc.malloc(4096))
    go.wait()
threads = [threading.Thread(target=work) for _ in range(6)]
for t in threads:
    t.start()
while len(held) < 6:
    pass
path = os.path.join(tempfile.mkdtemp(), "info.xml")
fp = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, fp)
libc.fclose(fp)
go.set()
print(open(path).read().count("<heap nr="))
"""


@pytest.mark.parametrize("process, arenas", [("client", 1), ("plain", 7)])
def test_a_client_app_keeps_one_malloc_arena(process, arenas):
    """prepare_process(client=True) caps glibc's arenas at one (six threads that malloc share
    it); without it each of them takes its own. MALLOC_ARENA_MAX set by the user is left alone
    (the plain process shows the default)."""
    import os  # noqa: PLC0415

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    out = subprocess.run([sys.executable, "-c", _COUNT_ARENAS, root, process], env=env,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert int(out.strip().splitlines()[-1]) == arenas


def test_a_users_malloc_arena_max_wins(monkeypatch):
    from tf_puma.apps import limit_malloc_arenas  # noqa: PLC0415
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas(1) is False


def test_app_settings_apply_where_unset_and_parties_drop_a_clients(monkeypatch):
    """Client apps turn oneDNN off (its int64 ERROR line); a party they start keeps TensorFlow's
    default unless the user chose otherwise."""
    import os  # noqa: PLC0415

    from tf_puma.apps import prepare_process  # noqa: PLC0415
    for name in ("TF_ENABLE_ONEDNN_OPTS", "TF_PUMA_SET_BY_APP"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")  # the user's choice stays
    prepare_process(client=True)
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "0"
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "1"
    prepare_process(client=False)  # a party started by that client (inherits its environment)
    assert "TF_ENABLE_ONEDNN_OPTS" not in os.environ
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")  # set by the user for this process
    monkeypatch.setenv("TF_PUMA_SET_BY_APP", "")
    prepare_process(client=False)
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "0"


def test_local_parties_divide_the_hosts_cores(cluster):
    """LocalCluster's three parties share this host: each runs kernels on a third of its cores
    (--intra-op-threads, which the server reads before it makes its thread pools)."""
    import os  # noqa: PLC0415

    threads = max(1, len(os.sched_getaffinity(0)) // 3)
    for i in range(3):
        with open(f"/proc/{cluster.server_pid(i)}/cmdline", encoding="utf-8") as fh:
            argv = fh.read().split("\0")
        assert argv[argv.index("--intra-op-threads") + 1] == str(threads)
