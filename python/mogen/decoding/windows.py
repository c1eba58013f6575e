"""Sliding windows over positions, for runners whose KV cache has holes (docs/design.md section 2).

A guide with its own tokenizer runs in a
:class:`~mogen.decoding.crossguide.RetokenizingGroup`: one cache for rows that
grow by different numbers of ids per step, with retracted ids masked rather
than cropped. A row's cache columns are then not its positions; some are
holes. ``transformers`` applies a sliding window over cache columns (query
column minus key column below the window) and a ``DynamicSlidingWindowLayer``
keeps only the last ``window - 1`` columns, so with holes a row would see fewer
than ``window`` of its own ids, unlike a fresh run of its text.

:class:`PositionWindows` is what such a runner uses instead: every layer keeps
all its columns (full cache layers) and the model gets explicit 4-D masks
that apply each sliding layer's window over *position ids*: key ``j`` is
visible to query ``i`` when ``j`` is live (mask 1), not after ``i``, and
``pos(i) - pos(j) < window``, which is what the row's own ids, unpadded, see.
Hybrid models (sliding and full layers) get one mask per layer kind, which
their ``forward`` must accept as a dict (Gemma 2/3, Qwen2 do).

Layers whose state absorbs every id fed (recurrent or convolution layers:
Mamba, Jamba, LFM2, ...) cannot skip a masked column at all, and chunked
attention counts chunks in columns; :func:`position_windows` refuses them for
this use with the reason.
"""

from __future__ import annotations

import inspect
import re
from typing import Any, Optional, Union

import torch

__all__ = ["PositionWindows", "position_windows", "layer_types", "recurrent_only"]

FULL, SLIDING = "full_attention", "sliding_attention"
# Layer kinds whose state is a recurrence over every id fed (no keys to mask).
RECURRENT = {"linear_attention", "conv", "mamba", "recurrent"}
# A forward that takes a prepared {layer kind: mask} mapping says so in its source (transformers >= 4.53).
_TAKES_MAPPING = re.compile(r"isinstance\(\s*(?:\w+\s*:=\s*)?attention_mask\s*,\s*dict\s*\)")


def _text_config(model: torch.nn.Module) -> Any:
    cfg = model.config
    return cfg.get_text_config(decoder=True) if hasattr(cfg, "get_text_config") else cfg


def layer_types(model: torch.nn.Module) -> tuple[list[str], list[Optional[int]]]:
    """Per decoder layer: its kind (``"full_attention"``, ``"sliding_attention"``, ...) and window (or None).

    The same derivation ``transformers`` uses to build the model's cache layers.
    """
    cfg = _text_config(model)
    try:
        from transformers.cache_utils import get_layer_types_and_kwargs
    except ImportError:  # pragma: no cover - older transformers
        get_layer_types_and_kwargs = None
    if get_layer_types_and_kwargs is not None:
        try:
            kinds, kwargs = get_layer_types_and_kwargs(cfg)
            return list(kinds), [kw.get("sliding_window") for kw in kwargs]
        except Exception:  # pragma: no cover - configs without per-layer information
            pass
    n = int(getattr(cfg, "num_hidden_layers", 0) or 0)  # pragma: no cover - older transformers
    kinds = list(getattr(cfg, "layer_types", None) or [SLIDING if getattr(cfg, "sliding_window", None) else FULL] * n)
    window = getattr(cfg, "sliding_window", None)
    return kinds, [window if k == SLIDING else None for k in kinds]


def recurrent_only(model: torch.nn.Module) -> bool:
    """Whether every layer of ``model`` is recurrent (Mamba-like: no attention layer at all).

    Such a model reads ``attention_mask`` as one flag per id *fed* (it zeroes padded inputs), not per cache
    column: ``transformers``' ``generate`` passes no mask on cached steps. Hybrid models (Jamba, LFM2, ...)
    take the full mask and trim it for their recurrent layers themselves.
    """
    kinds = set(layer_types(model)[0]) - {"dummy"}
    return bool(kinds) and kinds <= RECURRENT


def _takes_mask_mapping(module: torch.nn.Module) -> bool:
    try:
        source = inspect.getsource(type(module).forward)
    except (OSError, TypeError):  # pragma: no cover - no source available
        return False
    return bool(_TAKES_MAPPING.search(source))


class PositionWindows:
    """The 4-D attention masks of a model whose sliding windows count positions, not cache columns.

    Args:
        windows: the sliding window of every sliding layer (one value).
        kinds: the layer kinds present (``{"sliding_attention"}`` or with ``"full_attention"``).
        dtype: the model's dtype (masks are additive: 0 visible, the dtype's minimum hidden).
    """

    def __init__(self, window: int, kinds: set[str], dtype: torch.dtype) -> None:
        self.window = int(window)
        self.kinds = kinds
        self.dtype = dtype

    def masks(self, mask: torch.Tensor, positions: torch.Tensor,
              queries: int) -> Union[torch.Tensor, dict[str, torch.Tensor]]:
        """The mask(s) for the last ``queries`` columns over all ``[B, K]`` columns.

        ``mask``: 1 where a column is live; ``positions``: the position id of every column (holes: any).
        One ``[B, 1, queries, K]`` tensor when every layer slides, else ``{layer kind: mask}``.
        """
        batch, width = mask.shape
        cols = torch.arange(width, device=mask.device)
        q_cols = cols[width - queries:]
        live = (mask != 0).unsqueeze(1)  # [B, 1, K]
        causal = (cols.unsqueeze(0) <= q_cols.unsqueeze(1)).unsqueeze(0)  # [1, Q, K]
        full = live & causal
        q_pos = positions[:, width - queries:].unsqueeze(2)  # [B, Q, 1]
        sliding = full & (q_pos - positions.unsqueeze(1) < self.window)
        out = {SLIDING: self._additive(sliding)}
        if FULL in self.kinds:
            out[FULL] = self._additive(full)
            return out
        return out[SLIDING]

    def _additive(self, allowed: torch.Tensor) -> torch.Tensor:
        m = torch.zeros(allowed.shape, dtype=self.dtype, device=allowed.device)
        return m.masked_fill_(~allowed, torch.finfo(self.dtype).min).unsqueeze(1)


def position_windows(model: torch.nn.Module, module: torch.nn.Module, name: str) -> Optional[PositionWindows]:
    """How ``model`` reads a cache with holes (``module``: its backbone, which builds the attention masks).

    None when it has no sliding layers (the plain 2-D mask is exact); a :class:`PositionWindows` otherwise.

    Raises:
        ValueError: layers that cannot skip masked columns (recurrent, convolution, chunked attention, ...),
        sliding layers with different windows, a hybrid model whose ``forward`` takes no per-kind masks, or an
        attention implementation that takes no 4-D mask.
    """
    kinds, windows = layer_types(model)
    arch = type(model).__name__
    other = sorted(set(kinds) - {FULL, SLIDING, "dummy"})  # dummy: no cache of its own (shares one, or none)
    if other:
        raise ValueError(
            f"{name}: {arch} has {', '.join(other)} layers. A guide with its own tokenizer retracts re-tokenized "
            "ids by masking their cache columns, which such a layer's state cannot skip (only attention layers "
            "can); give this guide the base's tokenizer (it then reads the base's ids) or use an attention-only "
            "model"
        )
    sizes = {w for k, w in zip(kinds, windows) if k == SLIDING}
    if not sizes:
        return None
    if len(sizes) > 1 or None in sizes:
        raise ValueError(f"{name}: {arch}'s sliding layers have different windows {sorted(map(str, sizes))}; a guide "
                         "with its own tokenizer supports one window (give it the base's tokenizer)")
    impl = getattr(_text_config(model), "_attn_implementation", None) or getattr(model.config, "_attn_implementation",
                                                                                 None)
    if impl not in (None, "sdpa", "eager"):
        raise ValueError(
            f"{name}: {arch} uses attn_implementation={impl!r}; a sliding-window guide with its own tokenizer needs "
            "4-D attention masks (load it with attn_implementation='sdpa' or 'eager')"
        )
    present = set(kinds) - {"dummy"}
    if FULL in present and not _takes_mask_mapping(module):
        raise ValueError(
            f"{name}: {arch} mixes sliding-window and full-attention layers and its forward takes no per-kind "
            "attention masks, which a guide with its own tokenizer needs (its cache has holes); give it the base's "
            "tokenizer"
        )
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return PositionWindows(sizes.pop(), present, dtype)
