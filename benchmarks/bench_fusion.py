"""K1 micro-benchmark: compiled fused_log_ratio vs the eager composite
(log_softmax + index_select + weighted sum, i.e. mogen.reference), and vs the
machine's copy bandwidth.

Cases: B in {1, 8, 64}, V_b = 151936 (Qwen2), M in {1, 2, 4}, shared or mapped
vocabularies (in "mapped" the last guide has a 128256-token vocabulary of its
own, reached through a random map with 5% unmapped ids), fp32 or bf16 inputs.

GB/s counts the bytes a fused kernel cannot avoid: every input read once, the
int32 maps once, and the fp32 output written once. "roofline" is that rate over
the measured copy bandwidth (read + write) of this machine.

Greedy decoding (k = 1, table fusion_greedy_cpu): ``fused_log_ratio_topk(k=1)``,
which runs the argmax op, against ``torch.argmax`` of the eager composite and
against the full-row kernel followed by ``torch.argmax`` (the row is written and
read back); its GB/s counts the inputs only (the output is [B]).
"""

from __future__ import annotations

import pytest
import torch

from conftest import record
from mogen import ops, reference
from mogen.bench import best_time, fusion_bytes, fusion_inputs

VB = 151936
V_GUIDE = 128256


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("vocab", ["shared", "mapped"])
@pytest.mark.parametrize("m", [1, 2, 4])
@pytest.mark.parametrize("batch", [1, 8, 64])
def test_fused_log_ratio(benchmark, copy_bandwidth, batch, m, vocab, dtype):
    base, experts, refs, maps, w = fusion_inputs(batch, VB, m, V_GUIDE if vocab == "mapped" else None, dtype,
                                                 seed=batch * 10 + m)
    kernel = lambda: ops.fused_log_ratio(base, experts, refs, w, vocab_maps=maps)  # noqa: E731
    eager = lambda: reference.fused_log_ratio(base, experts, refs, w, vocab_maps=maps)  # noqa: E731
    torch.testing.assert_close(kernel(), eager(), atol=2e-4, rtol=1e-4)
    benchmark.pedantic(kernel, rounds=5, warmup_rounds=1)
    t_kernel = best_time(kernel, min_time=0.2)
    t_eager = best_time(eager, repeat=3, min_time=0.2)
    gbs = fusion_bytes(base, experts, refs, maps) / t_kernel / 1e9
    record("fusion_cpu", {
        "B": batch, "M": m, "vocab": vocab, "dtype": str(dtype).split(".")[-1],
        "kernel ms": f"{t_kernel * 1e3:.2f}", "eager ms": f"{t_eager * 1e3:.2f}",
        "speedup": f"{t_eager / t_kernel:.1f}x", "GB/s": f"{gbs:.1f}",
        "roofline": f"{gbs / copy_bandwidth:.0%} of {copy_bandwidth:.1f}",
    })


@pytest.mark.parametrize("batch", [1, 8, 64])
def test_fused_argmax(benchmark, copy_bandwidth, batch):
    base, experts, refs, maps, w = fusion_inputs(batch, VB, 2, V_GUIDE, torch.float32, seed=batch * 10 + 2)
    kernel = lambda: ops.fused_log_ratio_topk(base, experts, refs, w, 1, vocab_maps=maps)  # noqa: E731
    eager = lambda: torch.argmax(reference.fused_log_ratio(base, experts, refs, w, vocab_maps=maps), -1)  # noqa: E731
    row = lambda: torch.argmax(ops.fused_log_ratio(base, experts, refs, w, vocab_maps=maps), -1)  # noqa: E731
    assert torch.equal(kernel()[1][:, 0], row())
    benchmark.pedantic(kernel, rounds=5, warmup_rounds=1)
    t_kernel = best_time(kernel, min_time=0.2)
    t_eager = best_time(eager, repeat=3, min_time=0.2)
    t_row = best_time(row, min_time=0.2)
    gbs = fusion_bytes(base, experts, refs, maps, output=False) / t_kernel / 1e9
    record("fusion_greedy_cpu", {
        "B": batch, "M": 2, "vocab": "mapped", "dtype": "float32", "k": 1,
        "kernel ms": f"{t_kernel * 1e3:.2f}", "eager argmax ms": f"{t_eager * 1e3:.2f}",
        "speedup": f"{t_eager / t_kernel:.1f}x", "row + argmax ms": f"{t_row * 1e3:.2f}",
        "vs row": f"{t_row / t_kernel:.2f}x", "GB/s": f"{gbs:.1f}",
        "roofline": f"{gbs / copy_bandwidth:.0%} of {copy_bandwidth:.1f}",
    })
