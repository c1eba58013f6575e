"""mergekit's output slices: which input layers make which output layers.

A config either lists ``models`` (one slice: every layer of every model) or
``slices``, each with ``sources`` (``model`` and ``layer_range: [begin, end)``,
the same number of layers in every source of a slice). Output layers are
numbered across slices in order, so passthrough slices of different models
stack into a "frankenmerge" with as many layers as the slices hold together.
Tensors outside the layers come from the first slice's sources (embeddings) or
the last slice's (final norm, LM head, any other). Each tensor has a position
``t`` in [0, 1] for gradient parameters: ``i / (n - 1)`` for layer ``i`` of an
n-layer slice (1 when n is 1), and 0 for every tensor outside the layers (as in
mergekit 0.1.5; earlier releases gave the tensors after the layers 1).

Layer tensors are the ones named ``...layers.<i>.<rest>``, ``...h.<i>.<rest>`` or
``...blocks.<i>.<rest>``; embeddings are the non-layer tensors whose name holds
``embed``, ``wte`` or ``wpe``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Optional

from .io import Checkpoint, natural_key
from .schema import merge_error
from .settings import check_setting

__all__ = ["SliceSource", "OutSlice", "TensorJob", "parse_slices", "tensor_jobs", "layer_count", "model_path",
           "check_params"]

_LAYER = re.compile(r"(^|\.)(layers|h|blocks)\.(\d+)\.")
_EMBED = re.compile(r"embed|(^|\.)(wte|wpe)\.")


@dataclass
class SliceSource:
    path: str  # absolute
    layer_range: Optional[tuple]  # [begin, end); None: every layer of the model
    params: dict
    where: str  # the config key, for errors


@dataclass
class OutSlice:
    sources: list  # SliceSource
    params: dict
    base: Optional[SliceSource]  # the base model's source (also among sources, or not)
    where: str


@dataclass
class TensorJob:
    """One output tensor: its name, slice, the input tensor names (per source, then the base's) and t."""

    out_name: str
    slice: OutSlice
    in_names: list
    t: float


@dataclass
class _Layers:
    """A checkpoint's tensors split into layers (index -> names) and the rest."""

    layers: dict = field(default_factory=dict)
    other: list = field(default_factory=list)


def layer_of(name: str) -> Optional[int]:
    m = _LAYER.search(name)
    return int(m.group(3)) if m else None


def _with_layer(name: str, index: int) -> str:
    return _LAYER.sub(lambda m: f"{m.group(1)}{m.group(2)}.{index}.", name, count=1)


def _split(ck: Checkpoint) -> _Layers:
    out = _Layers()
    for name in sorted(ck.tensors, key=natural_key):
        i = layer_of(name)
        if i is None:
            out.other.append(name)
        else:
            out.layers.setdefault(i, []).append(name)
    return out


def layer_count(ck: Checkpoint) -> int:
    """Layers of a checkpoint: one more than its highest layer index (0 without layers)."""
    idx = [layer_of(n) for n in ck.tensors]
    return max((i for i in idx if i is not None), default=-1) + 1


def model_path(entry, root: str, where: str) -> str:
    """An absolute model path from a config entry (relative ones from ``root``)."""
    if not isinstance(entry, str):
        raise merge_error(where, f"expected a model path, got {entry!r}")
    if "+" in entry:
        raise merge_error(where, f"LoRA models ('model+lora') are not supported: {entry!r}")
    p = os.path.expanduser(entry)
    return os.path.abspath(p if os.path.isabs(p) else os.path.join(root, p))


def check_params(d, where: str, allowed: tuple) -> dict:
    """A ``parameters`` mapping with every name in ``allowed`` and every setting well-formed."""
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise merge_error(where, f"expected a mapping of parameters, got {d!r}")
    for k, v in d.items():
        if k not in allowed:
            raise merge_error(f"{where}.{k}", f"unknown parameter for this merge (known: {', '.join(allowed)})")
        check_setting(v, f"{where}.{k}")
    return dict(d)


def _keys(d: dict, allowed: set, where: str) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise merge_error(f"{where}.{unknown[0]}",
                          f"not supported by mogen (supported here: {', '.join(sorted(allowed))})")


def _source(entry, root: str, where: str, model_params: tuple, ranged: bool) -> SliceSource:
    if not isinstance(entry, dict):
        raise merge_error(where, "expected a mapping with 'model'" + (" and 'layer_range'" if ranged else ""))
    _keys(entry, {"model", "parameters"} | ({"layer_range"} if ranged else set()), where)
    path = model_path(entry.get("model"), root, f"{where}.model")
    rng = None
    if ranged:
        rng = entry.get("layer_range")
        ok = isinstance(rng, list) and len(rng) == 2 and all(isinstance(x, int) and not isinstance(x, bool)
                                                              for x in rng)
        if not ok or not 0 <= rng[0] < rng[1]:
            raise merge_error(f"{where}.layer_range", f"expected [begin, end) with 0 <= begin < end, got {rng!r}")
        rng = tuple(rng)
    return SliceSource(path, rng, check_params(entry.get("parameters"), f"{where}.parameters", model_params), where)


def parse_slices(cfg: dict, root: str, base: Optional[str], model_params: tuple,
                 all_params: tuple) -> list[OutSlice]:
    """The config's output slices (``models`` is one slice of whole models), checked."""
    if "slices" in cfg and "models" in cfg:
        raise merge_error("slices", "give either 'slices' or 'models', not both")
    ranged = "slices" in cfg
    entries = cfg.get("slices") if ranged else [{"sources": cfg.get("models")}]
    key = "slices" if ranged else "models"
    if not isinstance(entries, list) or not entries:
        raise merge_error(key, "expected a non-empty list")
    out = []
    for s_i, sl in enumerate(entries):
        where = f"slices[{s_i}]" if ranged else "models"
        if not isinstance(sl, dict):
            raise merge_error(where, "expected a mapping with 'sources'")
        _keys(sl, {"sources", "parameters", "base_model"} if ranged else {"sources"}, where)
        srcs = sl.get("sources")
        if not isinstance(srcs, list) or not srcs:
            raise merge_error(f"{where}.sources", "expected a non-empty list")
        sources = [_source(e, root, f"{where}.sources[{i}]" if ranged else f"models[{i}]", model_params, ranged)
                   for i, e in enumerate(srcs)]
        paths = [s.path for s in sources]
        if len(set(paths)) != len(paths):
            raise merge_error(f"{where}.sources", "a model appears twice in one slice")
        sl_base = model_path(sl["base_model"], root, f"{where}.base_model") if sl.get("base_model") else base
        base_src = next((s for s in sources if s.path == sl_base), None)
        if sl_base is not None and base_src is None:
            if ranged:
                raise merge_error(f"{where}.sources", f"the base model {sl_base} must be one of the "
                                  "slice's sources (with the layer range its layers come from)")
            base_src = SliceSource(sl_base, None, {}, "base_model")
        params = check_params(sl.get("parameters"), f"{where}.parameters", all_params)
        out.append(OutSlice(sources, params, base_src, where))
    return out


def _resolve_ranges(sl: OutSlice, counts: dict) -> int:
    """Fills in whole-model ranges and checks every range; returns the slice's layer count."""
    lengths = set()
    for s in sl.sources + ([sl.base] if sl.base is not None else []):
        n = counts[s.path]
        if s.layer_range is None:
            s.layer_range = (0, n)
        elif s.layer_range[1] > n:
            raise merge_error(f"{s.where}.layer_range", f"{list(s.layer_range)} is beyond the "
                              f"{n} layers of {s.path}")
        lengths.add(s.layer_range[1] - s.layer_range[0])
    if len(lengths) > 1:
        raise merge_error(f"{sl.where}.sources", "every source of a slice needs the same number of "
                          f"layers, got {sorted(lengths)}")
    return lengths.pop()


def _inputs_of(sl: OutSlice) -> list:
    return sl.sources + ([sl.base] if sl.base is not None else [])


def tensor_jobs(slices: list[OutSlice], cks: dict) -> tuple[list[TensorJob], int]:
    """Every output tensor in order (embeddings, layers slice by slice, the rest) and the output's
    layer count. ``cks``: path -> opened Checkpoint."""
    counts = {p: layer_count(ck) for p, ck in cks.items()}
    splits = {p: _split(ck) for p, ck in cks.items()}
    jobs: list[TensorJob] = []
    first, last = slices[0], slices[-1]
    for name in _union(first, splits, lambda n: _EMBED.search(n) is not None):
        jobs.append(TensorJob(name, first, [name] * len(_inputs_of(first)), 0.0))
    out_layer = 0
    for sl in slices:
        n = _resolve_ranges(sl, counts)
        lead = sl.sources[0]
        for j in range(n):
            t = j / (n - 1) if n > 1 else 1.0
            for name in splits[lead.path].layers.get(lead.layer_range[0] + j, []):
                ins = [_with_layer(name, s.layer_range[0] + j) for s in _inputs_of(sl)]
                jobs.append(TensorJob(_with_layer(name, out_layer), sl, ins, t))
            out_layer += 1
    for name in _union(last, splits, lambda n: _EMBED.search(n) is None):
        jobs.append(TensorJob(name, last, [name] * len(_inputs_of(last)), 0.0))
    return jobs, out_layer


def _union(sl: OutSlice, splits: dict, keep) -> list[str]:
    """The non-layer tensor names of a slice's models that ``keep`` accepts, in natural order."""
    names = set()
    for s in _inputs_of(sl):
        names.update(n for n in splits[s.path].other if keep(n))
    return sorted(names, key=natural_key)
