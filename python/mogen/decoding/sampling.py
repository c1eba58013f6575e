"""Next-token selection: greedy, or sampling after temperature, top-k and top-p.

The top-p mask and the draw are :func:`mogen.ops.top_p_mask` and
:func:`mogen.ops.sample` (re-exported here as ``nucleus_keep`` and
``sample_indices``); :func:`filter_scores` is the full-row reference of the
filters. :class:`TokenSelector` applies them to the fused scores ``s`` of docs/design.md
section 1 in the order ``transformers`` uses: temperature, then top-k, then
top-p, then a draw from ``softmax`` with the caller's ``torch.Generator``.

Top-k asks the fusion op for the ``k`` best scores only
(:func:`mogen.ops.fused_log_ratio_topk`), so the full ``[B, V]`` row is never
materialised; top-p alone needs the full row and one sort.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch

from ..ops import sample as sample_indices
from ..ops import top_p_mask as nucleus_keep

__all__ = ["nucleus_keep", "filter_scores", "sample_indices", "check_sampling_values", "TokenSelector"]

FullScores = Callable[[], torch.Tensor]
TopKScores = Callable[[int], "tuple[torch.Tensor, torch.Tensor]"]


def filter_scores(scores: torch.Tensor, top_k: Optional[int] = None, top_p: Optional[float] = None) -> torch.Tensor:
    """``scores [B, V]`` with every token outside top-k / top-p set to ``-inf``.

    The reference semantics of :class:`TokenSelector` on full rows (ties at the
    top-k cut are broken by lower id first, as the fusion op does).
    """
    out = scores.float().clone()
    vocab = out.shape[-1]
    if top_k is not None and top_k < vocab:
        # Stable sort on ids so that equal scores keep the lower id, as fused_log_ratio_topk does.
        order = torch.sort(out, dim=-1, descending=True, stable=True).indices
        drop = order[:, top_k:]
        out.scatter_(1, drop, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_scores, order = torch.sort(out, dim=-1, descending=True, stable=True)
        keep = nucleus_keep(sorted_scores, top_p)
        drop_sorted = ~keep
        mask = torch.zeros_like(drop_sorted).scatter_(1, order, drop_sorted)
        out = out.masked_fill(mask, float("-inf"))
    return out


def check_sampling_values(t: Any, k: Any, p: Any) -> None:
    """``temperature`` finite > 0, ``top_k`` None or an int >= 0, ``top_p`` in (0, 1] (None: unset)."""
    if t is not None and not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {t!r}")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 0):
        raise ValueError(f"top_k must be None or an int >= 0, got {k!r}")
    if p is not None and not (isinstance(p, (int, float)) and math.isfinite(p) and 0 < p <= 1):
        raise ValueError(f"top_p must be in (0, 1], got {p!r}")


class TokenSelector:
    """Greedy or sampled choice of the next token, configured once per generation.

    Args:
        vocab_size: ``V`` of the scores it will see.
        do_sample: False = argmax.
        temperature: divides the fused scores before sampling (> 0).
        top_k: keep the ``k`` best tokens (None or 0 = all).
        top_p: keep the smallest set of best tokens with mass >= ``top_p``
            (None or 1.0 = all).
        generator: ``torch.Generator`` on the scores' device, for reproducible draws.
    """

    def __init__(
        self,
        vocab_size: int,
        *,
        do_sample: bool,
        temperature: float = 1.0,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        generator: Optional[torch.Generator] = None,
        device: Optional[torch.device] = None,
    ) -> None:
        if not isinstance(do_sample, bool):
            raise TypeError(f"do_sample must be a bool, got {type(do_sample).__name__}")
        self.do_sample = do_sample
        self.vocab_size = int(vocab_size)
        t, p = float(temperature), None if top_p is None else float(top_p)
        check_sampling_values(t, top_k, p)
        self.inv_temperature = 1.0 / t
        if top_k == 0 or (top_k is not None and top_k >= self.vocab_size):
            top_k = None
        self.top_k = top_k
        self.top_p = None if p is None or p >= 1.0 else p
        if generator is not None:
            if not isinstance(generator, torch.Generator):
                raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
            if device is not None and do_sample and torch.device(generator.device).type != torch.device(device).type:
                raise ValueError(
                    f"generator is on {generator.device} but sampling happens on {device}; "
                    f"create it with torch.Generator(device='{torch.device(device).type}')"
                )
        self.generator = generator

    def __call__(self, full: FullScores, topk: TopKScores) -> torch.Tensor:
        """The next token of every row, int64 ``[B]``.

        ``full()`` returns the fused scores ``[B, V]``; ``topk(k)`` returns the
        ``k`` best ``(values [B, k], ids [B, k])`` best first, lower id first
        on ties. Only the one that is needed is called.
        """
        if not self.do_sample:
            return topk(1)[1][:, 0]
        if self.top_k is not None:
            values, ids = topk(self.top_k)
            values = values * self.inv_temperature
            if self.top_p is not None:
                values = values.masked_fill(~nucleus_keep(values, self.top_p), float("-inf"))
            return ids.gather(1, sample_indices(values, self.generator).unsqueeze(1)).squeeze(1)
        scores = full() * self.inv_temperature
        if self.top_p is None:
            return sample_indices(scores, self.generator)
        sorted_scores, order = torch.sort(scores, dim=-1, descending=True, stable=True)
        sorted_scores = sorted_scores.masked_fill(~nucleus_keep(sorted_scores, self.top_p), float("-inf"))
        return order.gather(1, sample_indices(sorted_scores, self.generator).unsqueeze(1)).squeeze(1)
