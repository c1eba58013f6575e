"""``mogen bench``: K1 or K2 on this machine, compiled kernel vs the eager composite.

A quick, installed counterpart of ``benchmarks/bench_fusion.py`` and
``benchmarks/bench_value.py`` (which run the full matrices under
pytest-benchmark): one configuration, timed in one process, printed with the
speedup and the bytes the op cannot avoid per second.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple, Union

import torch

from . import ops, reference
from .dtypes import torch_dtype



def _dtype(dtype: Union[str, torch.dtype]) -> torch.dtype:
    """A torch dtype from "fp32" / "bf16" / "fp16" (or a torch dtype, returned as is)."""
    return dtype if isinstance(dtype, torch.dtype) else torch_dtype(dtype)


@dataclass
class FusionTiming:
    kernel_s: float
    eager_s: float
    bytes: int  # every input once, the maps once, the fp32 output once

    @property
    def speedup(self) -> float:
        return self.eager_s / self.kernel_s


def markdown_table(rows: List[dict]) -> List[str]:
    """``rows`` (dicts with the same keys) as right-aligned Markdown table lines."""
    cols = list(rows[0])
    cells = [[str(r[c]) for c in cols] for r in rows]
    width = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]

    def line(xs: List[str]) -> str:
        return "| " + " | ".join(x.rjust(w) for x, w in zip(xs, width)) + " |"

    return [line(cols), "|" + "|".join("-" * (w + 2) for w in width) + "|"] + [line(x) for x in cells]


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


_flush_buffers: dict = {}


def best_time_cold(fn: Callable[[], object], *, repeat: int = 5, flush_bytes: int = 1 << 30,
                   device: Optional[torch.device] = None) -> float:
    """Best wall time of one call with the caches flushed before each (a pass over a
    ``flush_bytes`` buffer on ``device``, not timed), after one warm-up call.

    For ops that read a few MB scattered over a multi-GB tensor (K2): timed back to
    back, those MB stay in a large last-level cache, which a decoding step (whose
    forward pass streams the model's weights in between) does not enjoy.
    """
    dev = device if device is not None else torch.device("cpu")
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    key = (str(dev), flush_bytes)
    if key not in _flush_buffers:  # kept: a fresh 1 GiB per call would be page-faulted in every time
        _flush_buffers[key] = torch.ones(flush_bytes // 4, device=dev)
    buf = _flush_buffers[key]
    fn()
    best = float("inf")
    for _ in range(repeat):
        buf.sum()
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


FusionInputs = Tuple[torch.Tensor, List[torch.Tensor], List[torch.Tensor], List[Optional[torch.Tensor]], torch.Tensor]


def fusion_inputs(batch: int = 8, vocab: int = 151936, guides: int = 2, guide_vocab: Optional[int] = 128256,
                  dtype: Union[str, torch.dtype] = "fp32", device: str = "cpu", seed: int = 0) -> FusionInputs:
    """Random K1 inputs ``(base [B, V_b], experts, refs, maps, weights [M])``.

    The last guide has its own ``guide_vocab``-token vocabulary behind a random
    map (5% unmapped) unless ``guide_vocab`` is None; the others share the base's.
    """
    dtype = _dtype(dtype)
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


def fusion_bytes(base: torch.Tensor, experts, refs, maps, output: bool = True) -> int:
    """Bytes the fused op cannot avoid: every input and map read once, the fp32 output written once
    (``output=False``: the selection ops, whose output is negligible)."""
    n = sum(t.numel() * t.element_size() for t in [base, *experts, *refs])
    return n + sum(m.numel() * 4 for m in maps if m is not None) + (base.numel() * 4 if output else 0)


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


# ---------------------------------------------------------------- K2


@dataclass
class ValueTiming:
    kernel_s: float  # caches flushed before each call (best_time_cold)
    warm_s: float  # back to back on the same ids (rows cache-resident)
    eager_s: float
    bytes: int  # what K2 reads and writes (value_bytes)
    eager_bytes: int  # what the full head reads and writes (eager_value_bytes)

    @property
    def speedup(self) -> float:
        return self.eager_s / self.kernel_s


ValueInputs = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def value_inputs(batch: int = 8, hidden_size: int = 4096, vocab: int = 151936, k: int = 50,
                 dtype: Union[str, torch.dtype] = "bf16", device: str = "cpu", seed: int = 0,
                 weight: Optional[torch.Tensor] = None) -> ValueInputs:
    """Random K2 inputs ``(hidden [B, H], weight [V, H], ids [B, k] int64, bias [V])``, all in ``dtype``.

    ids are k distinct candidates per row (as a top-k of the rest of the score
    gives); rows may share ids. ``weight`` reuses a head already built (its dtype wins).
    """
    dtype = _dtype(dtype)
    dev = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    if weight is None:
        weight = (torch.randn(vocab, hidden_size, generator=g) * hidden_size ** -0.5).to(dtype).to(dev)
    vocab, hidden_size = weight.shape
    hidden = torch.randn(batch, hidden_size, generator=g).to(weight.dtype).to(dev)
    ids = torch.multinomial(torch.ones(batch, vocab), k, replacement=False, generator=g).to(dev)
    bias = torch.randn(vocab, generator=g).to(weight.dtype).to(dev)
    return hidden, weight, ids, bias


def eager_value_scores(hidden: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor,
                       bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A value model without K2: the whole ``[B, V]`` head in the head's dtype (as its
    ``lm_head`` computes it), then the k candidates, float32 ``[B, k]``."""
    full = torch.nn.functional.linear(hidden.to(weight.dtype), weight, bias)
    return full.float().gather(1, ids.long())


def _nbytes(t: Optional[torch.Tensor], n: Optional[int] = None) -> int:
    return 0 if t is None else (t.numel() if n is None else n) * t.element_size()


def value_bytes(hidden: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor,
                bias: Optional[torch.Tensor] = None) -> int:
    """Bytes K2 reads and writes: one weight row (and bias entry) per candidate, NOT
    deduplicated (a repeated id counts again), the hidden states and ids once, the
    fp32 ``[B, k]`` output once."""
    n = ids.numel()
    return (n * weight.shape[1] * weight.element_size() + _nbytes(hidden) + _nbytes(ids) + _nbytes(bias, n)
            + 4 * n)


def eager_value_bytes(hidden: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor,
                      bias: Optional[torch.Tensor] = None) -> int:
    """Bytes the full head cannot avoid: the whole weight, bias and hidden states read
    once, the ``[B, V]`` logits written once in the head's dtype."""
    return (_nbytes(weight) + _nbytes(hidden) + _nbytes(bias)
            + hidden.shape[0] * weight.shape[0] * weight.element_size())


def time_value(batch: int = 8, hidden_size: int = 4096, vocab: int = 151936, k: int = 50, dtype: str = "bf16",
               device: str = "cpu", seed: int = 0, eager_repeat: int = 3) -> ValueTiming:
    """Times ``ops.topk_value_scores`` (cold and warm) against :func:`eager_value_scores`."""
    hidden, weight, ids, bias = value_inputs(batch, hidden_size, vocab, k, dtype, device, seed)
    dev = torch.device(device)
    kernel = lambda: ops.topk_value_scores(hidden, weight, ids, bias)  # noqa: E731
    cold = best_time_cold(kernel, device=dev)
    warm = best_time(kernel, min_time=0.1, device=dev)
    eager = best_time(lambda: eager_value_scores(hidden, weight, ids, bias), repeat=eager_repeat, device=dev)
    return ValueTiming(cold, warm, eager, value_bytes(hidden, weight, ids, bias),
                       eager_value_bytes(hidden, weight, ids, bias))


def describe_value(t: ValueTiming, batch: int, hidden_size: int, vocab: int, k: int, dtype: str, device: str) -> str:
    threads = f", {torch.get_num_threads()} threads" if device == "cpu" else ""
    return (f"K2 topk_value_scores (B={batch}, H={hidden_size}, V={vocab}, k={k}, {dtype}, {device}{threads}): "
            f"kernel {t.kernel_s * 1e3:.3f} ms cold / {t.warm_s * 1e3:.3f} ms warm, full head {t.eager_s * 1e3:.1f} ms, "
            f"{t.speedup:.0f}x, {t.eager_bytes / t.bytes:.0f}x fewer bytes, {t.bytes / t.kernel_s / 1e9:.1f} GB/s cold")
