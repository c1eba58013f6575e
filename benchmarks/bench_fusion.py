"""K1 micro-benchmark: compiled fused_log_ratio vs the eager composite
(log_softmax + index_select + weighted sum, i.e. mogen.reference), and vs the
machine's copy bandwidth.

Cases: B in {1, 8, 64}, V_b = 151936 (Qwen2), M in {1, 2, 4}, shared or mapped
vocabularies (in "mapped" the last guide has a 128256-token vocabulary of its
own, reached through a random map with 5% unmapped ids), fp32 or bf16 inputs.

GB/s counts the bytes a fused kernel cannot avoid: every input read once, the
int32 maps once, and the fp32 output written once. "roofline" is that rate over
the measured copy bandwidth (read + write) of this machine.
"""

from __future__ import annotations

import pytest
import torch

from conftest import best_time, record
from mogen import ops, reference

VB = 151936
V_GUIDE = 128256


def make_inputs(batch: int, m: int, mapped: bool, dtype: torch.dtype, device: str = "cpu"):
    g = torch.Generator().manual_seed(batch * 10 + m)
    rand = lambda v: (torch.randn(batch, v, generator=g) * 3).to(dtype).to(device)  # noqa: E731
    base = rand(VB)
    experts, refs, maps = [], [], []
    for i in range(m):
        own = mapped and i == m - 1
        v = V_GUIDE if own else VB
        experts.append(rand(v))
        refs.append(rand(v))
        if own:
            ids = torch.randint(0, V_GUIDE, (VB,), generator=g, dtype=torch.int32)
            ids[torch.rand(VB, generator=g) < 0.05] = -1
            maps.append(ids.to(device))
        else:
            maps.append(None)
    weights = torch.full((m,), 1.0 / m, device=device)
    return base, experts, refs, maps, weights


def compulsory_bytes(base, experts, refs, maps) -> int:
    n = sum(t.numel() * t.element_size() for t in [base, *experts, *refs])
    n += sum(mp.numel() * 4 for mp in maps if mp is not None)
    return n + base.numel() * 4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("vocab", ["shared", "mapped"])
@pytest.mark.parametrize("m", [1, 2, 4])
@pytest.mark.parametrize("batch", [1, 8, 64])
def test_fused_log_ratio(benchmark, copy_bandwidth, batch, m, vocab, dtype):
    base, experts, refs, maps, w = make_inputs(batch, m, vocab == "mapped", dtype)
    kernel = lambda: ops.fused_log_ratio(base, experts, refs, w, vocab_maps=maps)  # noqa: E731
    eager = lambda: reference.fused_log_ratio(base, experts, refs, w, vocab_maps=maps)  # noqa: E731
    torch.testing.assert_close(kernel(), eager(), atol=2e-4, rtol=1e-4)
    benchmark.pedantic(kernel, rounds=5, warmup_rounds=1)
    t_kernel = best_time(kernel)
    t_eager = best_time(eager, repeat=3)
    gbs = compulsory_bytes(base, experts, refs, maps) / t_kernel / 1e9
    record("fusion_cpu", {
        "B": batch, "M": m, "vocab": vocab, "dtype": str(dtype).split(".")[-1],
        "kernel ms": f"{t_kernel * 1e3:.2f}", "eager ms": f"{t_eager * 1e3:.2f}",
        "speedup": f"{t_eager / t_kernel:.1f}x", "GB/s": f"{gbs:.1f}",
        "roofline": f"{gbs / copy_bandwidth:.0%} of {copy_bandwidth:.1f}",
    })
