"""``make gpu-check`` without a GPU: its benchmarks run on CPU at toy sizes (so they cannot rot between the
rare GPU runs), and the orchestrator says what it skipped and exits as documented."""

from __future__ import annotations

import argparse
import time
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_decode  # noqa: E402
import gpu_kernels  # noqa: E402


def _load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "tools" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gpu_check = _load_gpu_check()


def test_kernel_benchmark_runs_on_cpu_at_toy_sizes():
    body = "\n".join(gpu_kernels.run(torch.device("cpu"), gpu_kernels.TINY))
    for case in ["K1 B=1 shared", "K1 B=3 mapped", "K1 k=1 B=3 mapped", "K2 B=2 k=5", "K3 merge_to_tensor"]:
        assert case in body, case
    assert "roofline: device-to-device copy" in body
    assert "K3 merge_tensors" in body  # the kernel-only row: measured on a GPU, marked skipped here


def test_decode_benchmark_runs_on_cpu_at_toy_sizes():
    body = "\n".join(gpu_decode.run(torch.device("cpu"), gpu_decode.TINY))
    for decoder in ["base.generate (base only)", "mogen.generate, 2 guide pairs", "one guide model alone"]:
        assert decoder in body, decoder
    assert "goal" in body


def _args(**kw) -> argparse.Namespace:
    return argparse.Namespace(**{"require_gpu": False, "budget": 480.0, **kw})


def test_summary_exit_status(capsys):
    R = gpu_check.Result
    ok = [R("environment", "ok", "fine", 1.0)]
    skipped = ok + [R("kernels", "skipped", "no GPU (torch.cuda.is_available() is False)", 2.0)]
    assert gpu_check.summary(ok, _args()) == 0
    assert gpu_check.summary(skipped, _args()) == 0
    out = capsys.readouterr().out
    assert "kernels      SKIPPED" in out and "skipped: kernels" in out and "no GPU" in out
    assert gpu_check.summary(skipped, _args(require_gpu=True)) == 3
    assert gpu_check.summary(skipped + [R("decode", "failed", "exit 1", 1.0)], _args()) == 1


def test_without_a_gpu_the_gpu_steps_say_why():
    facts = gpu_check.Facts(gpu=None, built=True)
    assert "no GPU" in gpu_check.no_gpu_reason(facts)
    assert "no CUDA build" in gpu_check.no_gpu_reason(gpu_check.Facts(gpu="H200", built=False))
    assert gpu_check.no_gpu_reason(gpu_check.Facts(gpu="H200", built=True)) is None


@pytest.mark.skipif(torch.version.cuda is not None, reason="with a CUDA build of torch this step compiles (minutes)")
def test_build_with_a_cpu_torch_is_skipped_with_setup_pys_reason():
    status, why = gpu_check.step_build(gpu_check.Facts(), _args(), timeout=120)
    assert status == "skipped", why
    assert "MOGEN_FORCE_CUDA=1 but the CUDA kernels cannot be built: torch is a CPU build" in why
    assert "GPU_PY" in why


def test_the_cuda_test_modules_are_found():
    files = gpu_check.cuda_test_files()
    assert {"tests/test_merge_cuda.py", "tests/test_fusion.py", "tests/test_value_scores.py"} <= set(files)
    assert "tests/test_gpu_check.py" not in files


def test_a_step_past_its_time_is_killed_with_its_children(tmp_path):
    t0 = time.monotonic()
    rc, out = gpu_check.sh(["bash", "-c", "echo started; sleep 60 & sleep 60"], {}, 1.0, tmp_path / "log")
    assert rc is None and out == "started\n"
    assert time.monotonic() - t0 < 30
