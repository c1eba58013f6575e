"""A merge killed (SIGKILL) mid-write leaves its temporary folder behind; the next merge to the same target
(or ``mogen merge --clean``) removes it, but never the temporary folder of a merge still running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import mogen
import mogen_ext
from mogen import cli
from merge_helpers import load_ckpt, model_tensors, save_ckpt

pytestmark = pytest.mark.skipif(not mogen_ext.has_cpu_kernels, reason=f"no compiled kernels: {mogen_ext.load_error}")

# A merge that stops in the middle of writing (after its first kernel call) and waits there.
PAUSED_MERGE = textwrap.dedent("""
    import sys, time
    import mogen
    from mogen.merging import engine
    a, b, out, flag = sys.argv[1:]
    real = engine._call_kernel
    def paused(*args):
        real(*args)
        open(flag, "w").close()
        time.sleep(600)
    engine._call_kernel = paused
    mogen.merge([a, b], [0.5, 0.5], out, progress=False)
""")


@pytest.fixture
def pair(tmp_path):
    return save_ckpt(tmp_path / "a", model_tensors(0)), save_ckpt(tmp_path / "b", model_tensors(1))


def _start_paused(pair, out: Path, flag: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-c", PAUSED_MERGE, str(pair[0]), str(pair[1]), str(out), str(flag)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not flag.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "the paused merge never started writing"
        time.sleep(0.05)
    return proc


def _temps(parent: Path, name: str) -> list[str]:
    return sorted(n for n in os.listdir(parent) if n.startswith(f".{name}.mogen-"))


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


def test_next_merge_removes_the_leftover_of_a_killed_merge(tmp_path, pair):
    out = tmp_path / "out"
    proc = _start_paused(pair, out, tmp_path / "flag")
    _kill(proc)
    left = _temps(tmp_path, "out")
    assert len(left) == 1 and left[0].startswith(".out.mogen-tmp-") and not out.exists()
    assert any((tmp_path / left[0]).iterdir())  # it holds partial shards
    mogen.merge(list(pair), [0.5, 0.5], out, progress=False)
    assert _temps(tmp_path, "out") == [] and set(load_ckpt(out)) == set(model_tensors(0))


def test_running_merge_is_left_alone(tmp_path, pair):
    out = tmp_path / "out"
    proc = _start_paused(pair, out, tmp_path / "flag")
    try:
        running = _temps(tmp_path, "out")
        assert len(running) == 1
        mogen.merge(list(pair), [0.25, 0.75], out, progress=False)  # a concurrent merge to the same target
        assert _temps(tmp_path, "out") == running and out.is_dir()
        assert cli.main(["merge", "--clean", "--out", str(out)]) == 0
        assert _temps(tmp_path, "out") == running  # still running: kept
    finally:
        _kill(proc)
    assert cli.main(["merge", "--clean", "--out", str(out)]) == 0
    assert _temps(tmp_path, "out") == [] and out.is_dir()  # gone now; the finished output untouched


def test_leftover_with_a_reused_pid_is_kept(tmp_path, pair):
    """A leftover whose pid now belongs to a live process is kept (never wrongly removed); one whose
    pid is gone and whose lock is free is removed; other folders are never touched."""
    live = tmp_path / f".out.mogen-tmp-{os.getppid()}-0123abcd"
    dead = tmp_path / ".out.mogen-tmp-999999999-0123abcd"
    other = tmp_path / ".out.mogen-tmp-999999999-notatoken"
    for d in (live, dead, other):
        d.mkdir()
    mogen.merge(list(pair), [0.5, 0.5], tmp_path / "out", progress=False)
    assert live.exists() and other.exists() and not dead.exists()
