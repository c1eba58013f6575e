"""A KV-cache layer that appends in place, so a decoding step costs its own tokens, not the cache's length.

``transformers``' :class:`~transformers.cache_utils.DynamicLayer` appends with
``torch.cat``: every step copies the whole cache of every layer, which at a
few hundred tokens and a dozen rows costs more than the step's matmuls (chunk
search at a 512-token prefix spent a third of its time there). A
:class:`GrowingLayer` keeps its keys and values in buffers with spare room
(an eighth more than it holds, at least 64 positions) and writes new
positions into them; ``keys`` / ``values`` are views of the filled part, so
attention reads exactly what a DynamicLayer would hold. Growing copies once
per ~12% of growth; reordering rows (beam selection) gathers the buffers by
index. Any other operation that replaces ``keys`` (crop, offload, batch
repeat) is picked up on the next update, which re-buffers from it.

:func:`new_cache` is a :class:`~transformers.DynamicCache` whose full-attention
layers are GrowingLayers (sliding-window and other layer kinds stay as they are);
``keep_all=True`` makes sliding-window layers GrowingLayers too, for a runner
that applies the window itself (:mod:`mogen.decoding.windows`).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from transformers import DynamicCache

__all__ = ["new_cache", "GrowingLayer"]

try:  # transformers >= 4.56 builds caches from per-layer classes
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer
except ImportError:  # pragma: no cover - older transformers: plain DynamicCache
    DynamicLayer = DynamicSlidingWindowLayer = None  # type: ignore[assignment,misc]


def _spare(n: int) -> int:
    return n + max(64, n // 8)


def _gather_filled(buf: torch.Tensor, idx: torch.Tensor, n: int, room: int) -> torch.Tensor:
    """Rows ``idx`` of the first ``n`` positions of ``buf [B, H, T, D]``, in a new buffer of ``room`` positions.

    The spare positions of ``buf`` are not copied.
    """
    out = buf.new_empty((idx.numel(), *buf.shape[1:-2], room, buf.shape[-1]))
    torch.index_select(buf[..., :n, :], 0, idx, out=out[..., :n, :])
    return out


if DynamicLayer is not None:

    class GrowingLayer(DynamicLayer):  # type: ignore[misc,valid-type]
        """A full-attention cache layer whose ``[B, H, T, D]`` keys/values are views into roomier buffers."""

        def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
            super().lazy_initialization(key_states, value_states)
            self._k: Any = None
            self._v: Any = None

        def _adopted(self) -> bool:
            """Whether ``keys`` is still the view of our buffer (no other operation replaced it)."""
            k = self._k
            return k is not None and self.keys.data_ptr() == k.data_ptr() and self.keys.shape[0] == k.shape[0]

        def _rebuffer(self, need: int) -> None:
            """New buffers with room for ``need`` positions holding the current keys/values."""
            n = self.get_seq_length()
            shape = (*self.keys.shape[:-2], _spare(need), self.keys.shape[-1]) if n else None
            old_k, old_v = self.keys, self.values
            self._k = self._v = None
            if shape is not None:
                self._k = old_k.new_empty(shape)
                self._v = old_v.new_empty((*shape[:-1], old_v.shape[-1]))
                self._k[..., :n, :].copy_(old_k)
                self._v[..., :n, :].copy_(old_v)

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
                   **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n = self.get_seq_length()
            need = n + key_states.shape[-2]
            if n == 0:
                shape = (*key_states.shape[:-2], _spare(need), key_states.shape[-1])
                self._k = key_states.new_empty(shape)
                self._v = value_states.new_empty((*shape[:-1], value_states.shape[-1]))
            elif not self._adopted() or need > self._k.shape[-2]:
                self._rebuffer(need)
            self._k[..., n:need, :].copy_(key_states)
            self._v[..., n:need, :].copy_(value_states)
            self.keys, self.values = self._k[..., :need, :], self._v[..., :need, :]
            return self.keys, self.values

        def reorder_cache(self, beam_idx: torch.LongTensor, room: Optional[int] = None) -> None:
            """Rows follow ``beam_idx`` (repeat / drop allowed): one gather of each buffer.

            ``room``: gather only the filled positions, into buffers with that many spare ones (a fork that
            multiplies the rows and feeds few ids: copying the spare room ``k`` times costs more than the cache).
            """
            n = self.get_seq_length()
            if n == 0:
                return
            if not self._adopted():
                super().reorder_cache(beam_idx)
                return
            idx = beam_idx.to(self._k.device)
            if room is None or self._k.requires_grad:  # out= does not record a gradient
                self._k, self._v = self._k.index_select(0, idx), self._v.index_select(0, idx)
            else:
                self._k, self._v = (_gather_filled(buf, idx, n, n + room) for buf in (self._k, self._v))
            self.keys, self.values = self._k[..., :n, :], self._v[..., :n, :]

else:  # pragma: no cover
    GrowingLayer = None  # type: ignore[assignment,misc]


def new_cache(model: torch.nn.Module, keep_all: bool = False) -> Any:
    """A DynamicCache for ``model`` whose full-attention layers append in place (:class:`GrowingLayer`).

    ``keep_all``: sliding-window layers keep every column too (GrowingLayers); the caller masks the window.
    """
    try:
        # Newer transformers derive per-layer cache types (sliding window, ...) from the config.
        cache = DynamicCache(config=model.config)
    except TypeError:  # pragma: no cover - older transformers
        return DynamicCache()
    layers = getattr(cache, "layers", None)
    if GrowingLayer is not None and isinstance(layers, list):
        plain = (DynamicLayer, DynamicSlidingWindowLayer) if keep_all else (DynamicLayer,)
        cache.layers = [GrowingLayer() if type(layer) in plain else layer for layer in layers]
    return cache
