"""One causal LM fed step by step with its own KV cache.

:class:`LMRunner` hides the differences between ``transformers`` versions
(``cache=`` vs ``past_key_values=``, ``logits_to_keep``) and keeps the model's
:class:`~transformers.DynamicCache`. Callers own the attention mask and the
position ids, which is what lets a guide with its own tokenizer retract stale
positions of one row by masking them out instead of cropping the whole batch.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any, Optional

import torch

from .kvcache import GrowingLayer, new_cache
from .windows import PositionWindows, position_windows, recurrent_only

__all__ = ["LMRunner", "input_device", "output_device", "param_devices", "has_placement", "context_length",
           "backbone", "RunnerRegistry"]


def param_devices(model: torch.nn.Module) -> set[torch.device]:
    """Every device holding a parameter or buffer of ``model``."""
    devs = {p.device for p in model.parameters()}
    devs.update(b.device for b in model.buffers())
    return devs or {torch.device("cpu")}


def input_device(model: torch.nn.Module) -> torch.device:
    """Where the model wants its input ids: the device of its token embedding."""
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if emb is not None and getattr(emb, "weight", None) is not None:
        return emb.weight.device
    return next(iter(param_devices(model)))


def output_device(model: torch.nn.Module) -> torch.device:
    """Where the model's logits come out: the device of its LM head."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and getattr(head, "weight", None) is not None:
        return head.weight.device
    return input_device(model)


def has_placement(model: torch.nn.Module) -> bool:
    """Whether the model was placed by ``from_pretrained(device_map=...)`` (accelerate hooks move tensors)."""
    return bool(getattr(model, "hf_device_map", None))


def context_length(model: torch.nn.Module) -> Optional[int]:
    """The longest sequence the model's positions allow, or None if the config does not say."""
    cfg = model.config
    if hasattr(cfg, "get_text_config"):
        cfg = cfg.get_text_config(decoder=True)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def backbone(model: torch.nn.Module) -> torch.nn.Module:
    """The causal LM without its output head (what produces the last hidden state)."""
    inner = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if isinstance(inner, torch.nn.Module) and inner is not model:
        return inner
    if hasattr(model, "get_decoder"):
        return model.get_decoder()
    raise TypeError(f"cannot find the backbone (the model without its head) of {type(model).__name__}")


# forward() arguments through which a model keeps a recurrent state instead of a transformers Cache.
_STATE_ARGS = {"state", "mems", "use_mems"}


def _no_cache_message(name: str, module: torch.nn.Module, params: Any) -> str:
    kept = sorted(_STATE_ARGS & set(params or ()))
    how = f" (it keeps its state in {', '.join(repr(k) for k in kept)})" if kept else ""
    return (f"{name}: {type(module).__name__} does not keep its state in a transformers KV cache{how}; mogen feeds "
            "models step by step through a Cache (cache= / past_key_values=), which it reorders for beam selection")


def _holds_state(cache: Any) -> bool:
    """Whether a forward stored anything in ``cache`` (attention keys, or recurrent / convolution states)."""
    for layer in getattr(cache, "layers", None) or ():
        if getattr(layer, "is_initialized", False):
            return True
        for flags in ("is_conv_states_initialized", "is_recurrent_states_initialized"):
            if any(getattr(layer, flags, {}).values()):
                return True
    if getattr(cache, "layers", None) is None:  # pragma: no cover - caches of older transformers
        try:
            return cache.get_seq_length() > 0
        except Exception:
            return True
    return False


class LMRunner:
    """A causal LM with its own KV cache, over a batch of rows that can be reordered.

    Args:
        model: a ``transformers`` causal LM (eval mode is the caller's business).
        vocab_size: real vocabulary size; logits are sliced to ``[..., :vocab_size]``
            (a row-strided view, no copy), which drops padded LM-head rows.
        name: used in error messages ("base", "guides[0].expert", ...).
        output: ``"logits"`` (the head's output ``[B, keep, V]``) or ``"hidden"``
            (the backbone's last hidden state ``[B, keep, H]``, head not run: for
            scoring a few candidates of a value head, docs/design.md, K2).
    """

    def __init__(self, model: torch.nn.Module, vocab_size: int, name: str, output: str = "logits") -> None:
        if output not in ("logits", "hidden"):
            raise ValueError(f"output must be 'logits' or 'hidden', got {output!r}")
        self.model = model
        self.name = name
        self.output = output
        self.vocab_size = int(vocab_size)
        self._module = model if output == "logits" else backbone(model)
        params = inspect.signature(self._module.forward).parameters
        accepts_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        if "cache" in params:
            self._cache_kw = "cache"
        elif "past_key_values" in params or (accepts_kwargs and not _STATE_ARGS & set(params)):
            self._cache_kw = "past_key_values"
        else:
            raise TypeError(_no_cache_message(name, self._module, params))
        self._keep_kw = None if output == "hidden" else next(
            (k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)
        self._takes_positions = "position_ids" in params
        self.input_device = input_device(model)
        self.output_device = output_device(model)
        self._windows: Optional[PositionWindows] = None
        self._positions: Optional[torch.Tensor] = None  # [B, columns]: position ids fed (windows by position)
        self._checked = False  # whether a forward showed that the model keeps its state in our cache
        self._mask_fed_only = recurrent_only(model)  # Mamba-like: the mask covers the ids fed, not the cache
        self.cache = new_cache(model)
        self._hidden_runner: Optional[LMRunner] = None  # forward(hidden=True) of an output="logits" runner

    def window_by_position(self) -> None:
        """Apply sliding windows over position ids instead of cache columns (:mod:`mogen.decoding.windows`).

        For a runner whose cache has holes (a guide with its own tokenizer); call before the first forward.
        Raises ValueError for models whose layers cannot skip masked columns.
        """
        self._windows = position_windows(self.model, backbone(self.model), self.name)
        self.reset()

    def reset(self) -> None:
        """Forget everything seen so far (a new generation)."""
        self.cache = new_cache(self.model, keep_all=self._windows is not None)
        self._positions = None

    def reorder(self, index: torch.Tensor, room: Optional[int] = None) -> None:
        """Row ``b`` of the cache becomes old row ``index[b]`` (rows may repeat or drop: beam selection).

        ``room``: in-place layers (:class:`~mogen.decoding.kvcache.GrowingLayer`) copy only their filled
        positions and keep that many spare ones (a fork: see its ``reorder_cache``).
        """
        if self.cache is not None and room is not None and isinstance(getattr(self.cache, "layers", None), list):
            idx = index.to(self.input_device)
            for layer in self.cache.layers:
                if GrowingLayer is not None and isinstance(layer, GrowingLayer):
                    layer.reorder_cache(idx, room)
                else:
                    layer.reorder_cache(idx)
        elif self.cache is not None:  # every cache layer skips the reorder while it is empty
            self.cache.reorder_cache(index.to(self.input_device))
        if self._positions is not None:
            self._positions = self._positions.index_select(0, index.to(self._positions.device))

    def subset(self, index: torch.Tensor) -> "LMRunner":
        """A runner over rows ``index [M]`` of this one's cache: a gathered copy, so feeding it leaves this
        runner as it is (a few rows fed further than the rest of the batch)."""
        out = copy.copy(self)
        out.__dict__.pop("forward", None)  # an instance-level wrapper (a test's counter) would feed this runner
        out.cache = new_cache(self.model, keep_all=True)  # every column: masks and windows are the caller's
        idx = index.to(self.input_device)
        for mine, theirs in zip(out.cache.layers, self.cache.layers):
            if getattr(theirs, "is_initialized", False):
                mine.update(theirs.keys.index_select(0, idx), theirs.values.index_select(0, idx))
        if self._positions is not None:
            out._positions = self._positions.index_select(0, index.to(self._positions.device))
        return out

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor],
        position_ids: Optional[torch.Tensor],
        keep: int = 1,
        hidden: bool = False,
    ) -> torch.Tensor:
        """Feed ``input_ids [B, n]`` after everything cached; return the last ``keep`` outputs.

        ``attention_mask`` is ``[B, cached + n]`` (1 = attend) or None for "no
        padding anywhere"; ``position_ids`` is ``[B, n]``. Returns logits
        ``[B, keep, V]`` sliced to the real vocabulary (``output="logits"``) or
        hidden states ``[B, keep, H]`` (``output="hidden"``, or ``hidden=True``:
        the backbone only, whatever ``output`` is), on the model's output device.
        """
        if hidden and self.output == "logits":
            if self._hidden_runner is None:  # shares the cache: only the module called differs
                self._hidden_runner = LMRunner(self.model, self.vocab_size, self.name, "hidden")
            inner = self._hidden_runner
            inner.cache, inner._positions, inner._windows = self.cache, self._positions, self._windows
            out = inner.forward(input_ids, attention_mask, position_ids, keep)
            self.cache, self._positions = inner.cache, inner._positions
            return out
        dev = self.input_device
        kwargs: dict[str, Any] = {self._cache_kw: self.cache, "use_cache": True}
        if attention_mask is not None:
            if self._mask_fed_only:
                attention_mask = attention_mask[:, -input_ids.shape[1]:]
            kwargs["attention_mask"] = attention_mask.to(dev, non_blocking=True)
        if position_ids is not None and self._takes_positions:
            kwargs["position_ids"] = position_ids.to(dev, non_blocking=True)
        if self._windows is not None:
            if attention_mask is None or position_ids is None:
                raise ValueError(f"{self.name}: windows by position need the attention mask and position ids")
            pos = position_ids.to(dev, non_blocking=True)
            self._positions = pos if self._positions is None else torch.cat([self._positions, pos], dim=1)
            kwargs["attention_mask"] = self._windows.masks(kwargs["attention_mask"], self._positions,
                                                           input_ids.shape[1])
        if self._keep_kw is not None:
            kwargs[self._keep_kw] = keep
        out = self._module(input_ids=input_ids.to(dev, non_blocking=True), return_dict=True, **kwargs)
        # Old-style models may hand back a new cache object instead of updating ours.
        new_cache = getattr(out, self._cache_kw, None) if self._cache_kw != "cache" else getattr(out, "cache", None)
        if new_cache is None:
            new_cache = getattr(out, "past_key_values", None)
        if new_cache is not None:
            self.cache = new_cache
        elif not self._checked and not _holds_state(self.cache):
            raise TypeError(_no_cache_message(self.name, self._module, None))
        self._checked = True
        if self.output == "hidden":
            return out.last_hidden_state[:, -keep:].to(self.output_device, non_blocking=True)
        logits = out.logits
        if self._keep_kw is None or logits.shape[1] != keep:
            logits = logits[:, -keep:]
        return logits[..., : self.vocab_size]


class RunnerRegistry:
    """One runner per distinct (model, output kind): a reference shared by several guides runs once."""

    def __init__(self) -> None:
        self.runners: list[LMRunner] = []
        self._index: dict[tuple[int, str], int] = {}

    def add(self, runner: LMRunner) -> int:
        """Register a runner; returns its index for ``output``."""
        key = (id(runner.model), runner.output)
        if key not in self._index:
            self._index[key] = len(self.runners)
            self.runners.append(runner)
            self._on_add(runner)
        return self._index[key]

    def _on_add(self, runner: LMRunner) -> None:
        pass
