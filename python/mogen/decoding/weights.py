"""Validation of guide weights, shared by ``generate`` and the logits processor."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from .guides import Guide
from .kinds import guide_kind

__all__ = ["as_guide_list", "resolve_weights"]


def as_guide_list(guides: Any) -> list[Guide]:
    """``guides`` as a list of guides of registered kinds (:mod:`mogen.decoding.kinds`); one may be given bare."""
    if guides is None:
        return []
    if guide_kind(guides) is not None:
        return [guides]
    if not isinstance(guides, (list, tuple)):
        raise TypeError(f"guides must be a ProxyGuide, a ValueGuide (or a guide of a registered kind) or a list "
                        f"of them, got {type(guides).__name__}")
    out = list(guides)
    for i, g in enumerate(out):
        if guide_kind(g) is None:
            raise TypeError(f"guides[{i}] must be a mogen.ProxyGuide or mogen.ValueGuide (or a guide of a "
                            f"registered kind), got {type(g).__name__}")
    return out


def resolve_weights(
    weights: Any, guides: Sequence[Guide], batch: Optional[int]
) -> tuple[torch.Tensor, list[bool]]:
    """The weights as a float32 CPU tensor ``[M]`` or ``[B, M]``, and which guides are active.

    ``weights=None`` takes each guide's own ``weight``. A guide is active when
    its weight is non-zero on at least one row; inactive guides are not run.
    ``batch=None`` accepts any number of rows for ``[B, M]`` weights.

    Raises:
        ValueError: wrong shape, wrong length, NaN or inf.
        TypeError: not numbers.
    """
    m = len(guides)
    if weights is None:
        w = torch.tensor([g.weight for g in guides], dtype=torch.float32)
    else:
        if isinstance(weights, torch.Tensor):
            if weights.dtype == torch.bool or weights.is_complex():
                raise TypeError(f"weights must be real numbers, got a {weights.dtype} tensor")
            w = weights.detach().to("cpu", torch.float32)
        else:
            try:
                w = torch.tensor(weights, dtype=torch.float32)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"weights must be a sequence of numbers, a [B, M] nested list or a tensor: {exc}") from None
        if w.dim() == 1:
            if w.shape[0] != m:
                raise ValueError(f"weights has {w.shape[0]} entries but there are {m} guides")
        elif w.dim() == 2:
            if w.shape[1] != m or (batch is not None and w.shape[0] != batch):
                rows = "B" if batch is None else str(batch)
                raise ValueError(
                    f"weights must be [M] = [{m}] or [B, M] = [{rows}, {m}] (one row of weights per prompt), "
                    f"got shape {tuple(w.shape)}"
                )
        else:
            raise ValueError(f"weights must be [M] or [B, M], got shape {tuple(w.shape)}")
        if not bool(torch.isfinite(w).all()):
            raise ValueError(f"weights must be finite, got {w.tolist()}")
    nonzero = w != 0
    active = (nonzero.any(dim=0) if w.dim() == 2 else nonzero).tolist() if m else []
    return w, [bool(a) for a in active]
