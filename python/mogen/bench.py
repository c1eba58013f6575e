"""``mogen bench``: K1 on this machine, compiled kernel vs the eager composite.

A quick, installed counterpart of ``benchmarks/bench_fusion.py`` (which runs the
full matrix under pytest-benchmark): one configuration, timed in one process,
printed with the speedup and the bytes the fused op cannot avoid per second.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple, Union

import torch

from . import ops, reference

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class FusionTiming:
    kernel_s: float
    eager_s: float
    bytes: int  # every input once, the maps once, the fp32 output once

    @property
    def speedup(self) -> float:
        return self.eager_s / self.kernel_s


def best_time(fn: Callable[[], object], *, repeat: int = 5, min_time: float = 0.0,
              device: Optional[torch.device] = None) -> float:
    """Best wall time of one call in seconds, after a warm-up call, over at least
    ``repeat`` calls and ``min_time`` seconds."""
    sync = torch.cuda.synchronize if device is not None and device.type == "cuda" else (lambda: None)
    fn()
    sync()
    best, spent, n = float("inf"), 0.0, 0
    while n < repeat or spent < min_time:
        t0 = time.perf_counter()
        fn()
        sync()
        dt = time.perf_counter() - t0
        best, spent, n = min(best, dt), spent + dt, n + 1
    return best


FusionInputs = Tuple[torch.Tensor, List[torch.Tensor], List[torch.Tensor], List[Optional[torch.Tensor]], torch.Tensor]


def fusion_inputs(batch: int = 8, vocab: int = 151936, guides: int = 2, guide_vocab: Optional[int] = 128256,
                  dtype: Union[str, torch.dtype] = "fp32", device: str = "cpu", seed: int = 0) -> FusionInputs:
    """Random K1 inputs ``(base [B, V_b], experts, refs, maps, weights [M])``.

    The last guide has its own ``guide_vocab``-token vocabulary behind a random
    map (5% unmapped) unless ``guide_vocab`` is None; the others share the base's.
    """
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        dtype = _DTYPES[dtype]
    dev = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    rand = lambda v: (torch.randn(batch, v, generator=g) * 3).to(dtype).to(dev)  # noqa: E731
    base, experts, refs, maps = rand(vocab), [], [], []
    for i in range(guides):
        own = guide_vocab is not None and i == guides - 1
        v = guide_vocab if own else vocab
        experts.append(rand(v))
        refs.append(rand(v))
        if own:
            ids = torch.randint(0, v, (vocab,), generator=g, dtype=torch.int32)
            ids[torch.rand(vocab, generator=g) < 0.05] = -1
            maps.append(ids.to(dev))
        else:
            maps.append(None)
    return base, experts, refs, maps, torch.full((guides,), 1.0 / max(guides, 1), device=dev)


def fusion_bytes(base: torch.Tensor, experts, refs, maps) -> int:
    """Bytes the fused op cannot avoid: every input and map read once, the fp32 output written once."""
    n = sum(t.numel() * t.element_size() for t in [base, *experts, *refs])
    return n + sum(m.numel() * 4 for m in maps if m is not None) + base.numel() * 4


def time_fusion(batch: int = 8, vocab: int = 151936, guides: int = 2, guide_vocab: Optional[int] = 128256,
                dtype: str = "fp32", device: str = "cpu", seed: int = 0) -> FusionTiming:
    """Times ``ops.fused_log_ratio`` against ``reference.fused_log_ratio`` on :func:`fusion_inputs`."""
    base, experts, refs, maps, w = fusion_inputs(batch, vocab, guides, guide_vocab, dtype, device, seed)
    dev = torch.device(device)
    kernel = best_time(lambda: ops.fused_log_ratio(base, experts, refs, w, vocab_maps=maps), device=dev)
    eager = best_time(lambda: reference.fused_log_ratio(base, experts, refs, w, vocab_maps=maps), device=dev)
    return FusionTiming(kernel, eager, fusion_bytes(base, experts, refs, maps))


def describe(t: FusionTiming, batch: int, vocab: int, guides: int, guide_vocab: Optional[int], dtype: str,
             device: str) -> str:
    vocab_note = f", the last through a {guide_vocab}-token map" if guide_vocab else ", shared vocabulary"
    threads = f", {torch.get_num_threads()} threads" if device == "cpu" else ""
    return (f"K1 fused_log_ratio (B={batch}, V_b={vocab}, {guides} guides{vocab_note}, {dtype}, {device}{threads}): "
            f"kernel {t.kernel_s * 1e3:.2f} ms, eager {t.eager_s * 1e3:.2f} ms, {t.speedup:.1f}x, "
            f"{t.bytes / t.kernel_s / 1e9:.1f} GB/s")
