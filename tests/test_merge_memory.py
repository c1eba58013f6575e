"""Resident memory stays bounded (scaled-down version of the 3 x 1 GB acceptance run,
which benchmarks/bench_merge.py measures): peak RSS, file-backed pages included, measured
in a fresh subprocess by the kernel's high-water mark."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import mogen_ext

pytestmark = pytest.mark.skipif(not mogen_ext.has_cpu_kernels, reason=f"no compiled kernels: {mogen_ext.load_error}")

MB = 1 << 20
SIZE = 96 * MB  # per source, bf16

CHILD = r"""
import json, sys, torch
from pathlib import Path
from safetensors.torch import save_file
root = Path(sys.argv[1]); size = int(sys.argv[2]); mode = sys.argv[3]
numel = size // 2
paths = []
for s in range(3):
    g = torch.Generator().manual_seed(s)
    # two big tensors and one above the shard size, split over two shard files
    sd = {f"layer{i}.weight": torch.randn(numel // 4, generator=g).bfloat16() for i in range(2)}
    sd["embed.weight"] = torch.randn(numel // 2, generator=g).bfloat16()
    d = root / f"s{s}"; d.mkdir()
    save_file(sd, str(d / "model.safetensors"))
    paths.append(str(d)); del sd
import gc; gc.collect()
import mogen
from mogen.merging.report import RssTracker
if mode == "disk":
    rep = mogen.merge(paths, [0.2, 0.3, 0.5], str(root / "out"), shard_size=size // 3, progress=False, fsync=False)
    print(json.dumps({"baseline": rep.baseline_rss, "peak": rep.peak_rss}))
else:
    from safetensors.torch import load_file
    class M(torch.nn.Module):
        def __init__(self, sd):
            super().__init__()
            for k, v in sd.items():
                self.register_parameter(k.replace(".", "_"), torch.nn.Parameter(v.clone()))
        def named_parameters(self, *a, **k):
            for n, p in self._parameters.items():
                yield n.replace("_weight", ".weight"), p
        def named_buffers(self, *a, **k):
            return iter(())
    m = M(load_file(paths[0] + "/model.safetensors"))
    gc.collect()
    rep = mogen.merge_into(m, paths, [0.2, 0.3, 0.5])
    print(json.dumps({"baseline": rep.baseline_rss, "peak": rep.peak_rss}))
"""


@pytest.mark.parametrize("mode", ["disk", "in_place"])
def test_peak_rss_is_bounded(tmp_path, mode):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="2")
    r = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), str(SIZE), mode], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads(r.stdout.strip().splitlines()[-1])
    above = (m["peak"] - m["baseline"]) / MB
    # 3 x 96 MB of inputs: the engine's working set is a few 128K-element blocks per thread,
    # not the model. The 1 GB acceptance bound (600 MB over baseline for 3 x 1 GB) scaled
    # to these sizes is ~58 MB; allow 48 MB, half of one source.
    assert above < 48, f"{mode}: peak RSS {above:.0f} MB above the baseline ({m})"
