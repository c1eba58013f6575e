"""A value head scored at k candidate ids per row (docs/design.md, K2)."""

from __future__ import annotations

from typing import Optional

import torch

from .. import _backend, reference
from .checks import _check_float_tensor, _symbolic


def _check_value_args(hidden, weight, ids, bias) -> None:
    """Raises where :func:`topk_value_scores`' arguments do not fit together (all but the id range)."""
    _check_float_tensor(hidden, "hidden", 2, "[B, H]")
    _check_float_tensor(weight, "weight", 2, "[V, H]")
    batch, size = hidden.shape
    vocab = weight.shape[0]
    device = hidden.device
    if weight.device != device:
        raise ValueError(f"weight is on {weight.device} but hidden is on {device}")
    if weight.shape[1] != size:
        raise ValueError(f"weight has hidden size {weight.shape[1]} but hidden has {size} (weight must be [V, H])")
    if size > 1 and weight.stride(1) != 1:
        # Copying a whole value head per call would cost far more than the op: refuse.
        raise ValueError(f"weight must be contiguous in its last dim (strides {weight.stride()}); "
                         "make the value head contiguous once, e.g. weight.contiguous()")
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"ids must be an int32 or int64 torch.Tensor, got {type(ids).__name__}")
    if ids.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"ids must be int32 or int64, got {ids.dtype}")
    if ids.dim() != 2 or ids.shape[0] != batch:
        raise ValueError(f"ids must be [B, k] with B = {batch} (hidden's rows), got shape {tuple(ids.shape)}")
    if ids.device != device:
        raise ValueError(f"ids is on {ids.device} but hidden is on {device}")
    if bias is not None:
        _check_float_tensor(bias, "bias", 1, f"[V] = [{vocab}]")
        if bias.shape[0] != vocab:
            raise ValueError(f"bias must have shape [V] = [{vocab}] (one entry per weight row), "
                             f"got {tuple(bias.shape)}")
        if bias.device != device:
            raise ValueError(f"bias is on {bias.device} but hidden is on {device}")


def topk_value_scores(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    ids: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """A value head scored at k candidate ids per row only (docs/design.md, K2), float32 ``[B, k]``.

    ``out[b, c] = sum_h hidden[b, h] * weight[ids[b, c], h] + bias[ids[b, c]]``

    k dot products of length H per row instead of the V of ``hidden @ weight.T``.
    Products and sums are fp32 whatever the input dtypes.

    Args:
        hidden: ``[B, H]`` float32 / bfloat16 / float16; any row stride (the last
            position of ``[B, T, H]`` hidden states, ``h[:, -1]``, needs no copy).
        weight: ``[V, H]`` value head (a causal LM's output head), float32 /
            bfloat16 / float16, its own dtype independent of ``hidden``'s; rows
            contiguous (any row stride).
        ids: ``[B, k]`` int32 or int64 candidate ids, each in ``[0, V)``; repeats
            are allowed. An id outside that range raises ``ValueError`` naming
            ``ids`` (checked by the compiled op itself, which never reads past the head).
        bias: ``[V]`` or None, float32 / bfloat16 / float16.

    The CUDA kernel reads back an out-of-range flag, so each call synchronises
    the current stream once.
    """
    _check_value_args(hidden, weight, ids, bias)
    size, vocab, device = hidden.shape[1], weight.shape[0], hidden.device
    if size > 1 and hidden.stride(1) != 1:
        hidden = hidden.contiguous()  # [B, H] is small; the kernels need H contiguous
    if _backend.has_kernels_for(device):
        return torch.ops.mogen.topk_value_scores(hidden, weight, ids, bias)
    _backend.warn_fallback(device)
    if ids.numel() > 0 and not _symbolic(ids):
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= vocab:
            raise ValueError(f"ids holds ids in [{lo}, {hi}] but the value head has V = {vocab} rows; "
                             "every id must be in [0, V)")
    return reference.topk_value_scores(hidden, weight, ids, bias)
