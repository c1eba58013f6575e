"""mergekit-style YAML merge configs, so existing configs run unchanged.

This module reads whole-model configs: ``models`` (each ``model`` with optional
``parameters``: ``weight``, ``density``), ``merge_method`` (any registered
method, :data:`mogen.merging.METHODS`: mergekit's linear, task_arithmetic, ties,
dare_linear, dare_ties, slerp, plus mogen's bone_soup), ``base_model``, ``dtype`` /
``out_dtype``, top-level ``parameters`` (the methods' ``config_parameters``:
normalize, lambda, t, rescale, seed, bone_soup's beta / alpha / sft, ...; and
int8_mask, which changes nothing), ``tokenizer_source: base`` (the default here).
Configs with ``slices``, per-layer gradients (lists), ``filter`` entries or
``passthrough`` go to :mod:`mogen.merging.layerwise` instead (``mogen merge
--config`` sends them there, :func:`mogen.merging.layerwise.needs_layerwise` says
which); :func:`config_to_merge_args` itself refuses them. The keys both readers
accept are the tables below.

How a method maps a config's models onto :func:`mogen.merge`'s arguments is the
method's own :meth:`~mogen.merging.methods.MergeMethod.config_args`; defaults
follow mergekit where it differs from :func:`mogen.merge`: ``linear`` normalises
its weights unless ``normalize: false``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from .methods import METHODS, get_method

__all__ = ["load_config", "config_to_merge_args", "MODEL_PARAMS", "IGNORED_KEYS", "TOP_KEYS", "global_params"]

MODEL_PARAMS = ("weight", "density")  # per-model parameters of whole-model configs
IGNORED_KEYS = ("tokenizer_source", "chat_template", "name")  # accepted top-level keys without effect on tensors
TOP_KEYS = ("models", "merge_method", "base_model", "dtype", "out_dtype", "parameters", *IGNORED_KEYS)
_NO_EFFECT_PARAMS = ("int8_mask",)  # a mergekit memory option; no effect on the result


def global_params(layerwise: bool = False) -> tuple:
    """The merge-wide ``parameters`` keys a config may give: those of every registered method (usable
    in layerwise configs, with ``layerwise``), and int8_mask."""
    keys = [p for name in METHODS for p in get_method(name).config_parameters
            if not layerwise or get_method(name).layerwise]
    return tuple(dict.fromkeys(keys + list(_NO_EFFECT_PARAMS)))


def load_config(path) -> dict:
    """The YAML mapping in file ``path``."""
    with open(path) as f:
        try:
            cfg = yaml.safe_load(f)
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: a merge config must be a YAML mapping")
    return cfg


def _scalar_param(value: Any, where: str):
    if isinstance(value, (list, dict)):
        raise ValueError(f"{where}: per-layer gradients and filtered parameters are not supported "
                         f"(got {value!r}); give one number")
    return value


def _model_path(entry, root: Path, where: str) -> str:
    if isinstance(entry, dict):
        entry = entry.get("model")
    if not isinstance(entry, str):
        raise ValueError(f"{where}: expected a model path, got {entry!r}")
    if "+" in entry:
        raise ValueError(f"{where}: LoRA models ('model+lora') are not supported: {entry!r}")
    p = Path(os.path.expanduser(entry))
    return str(p if p.is_absolute() else (root / p))


def config_to_merge_args(cfg: dict, root=".") -> dict:
    """The keyword arguments of :func:`mogen.merge` (less ``out``) for a mergekit-style config.
    Relative model paths are taken from ``root``."""
    root = Path(root)
    unknown = set(cfg) - set(TOP_KEYS)
    if "slices" in cfg:
        raise ValueError("merge config: 'slices' (layer-range merges) are read by mogen.merging.layerwise "
                         "(mogen merge --config sends them there); config_to_merge_args takes whole models")
    if unknown:
        raise ValueError(f"merge config: unknown keys {sorted(unknown)}")
    name = cfg.get("merge_method")
    if not isinstance(name, str):
        raise ValueError("merge config: merge_method is required")
    method = get_method(name)
    if cfg.get("tokenizer_source") not in (None, "base"):
        raise ValueError(f"merge config: tokenizer_source {cfg['tokenizer_source']!r} is not supported (only 'base')")
    base = cfg.get("base_model")
    base = _model_path(base, root, "base_model") if base is not None else None
    models = cfg.get("models") or []
    if not isinstance(models, list) or not models:
        raise ValueError("merge config: models must be a non-empty list")
    params = dict(cfg.get("parameters") or {})
    allowed = global_params()
    for k in params:
        if k not in allowed:
            raise ValueError(f"merge config: unknown parameter {k!r}")
        params[k] = _scalar_param(params[k], f"parameters.{k}")
    for k in _NO_EFFECT_PARAMS:
        params.pop(k, None)
    sources, weights, densities = [], [], []
    for i, m in enumerate(models):
        path = _model_path(m, root, f"models[{i}]")
        mp = (m.get("parameters") or {}) if isinstance(m, dict) else {}
        for k in mp:
            if k not in MODEL_PARAMS:
                raise ValueError(f"merge config: models[{i}]: unknown parameter {k!r}")
        if method.needs_base and base is not None and os.path.abspath(path) == os.path.abspath(base):
            continue  # the base contributes no delta
        sources.append(path)
        weights.append(_scalar_param(mp.get("weight", method.config_weight), f"models[{i}].weight"))
        densities.append(_scalar_param(mp.get("density", 1.0), f"models[{i}].density"))
    args: dict = {"method": name}
    dtype = cfg.get("out_dtype") or cfg.get("dtype")
    if dtype is not None:
        args["dtype"] = dtype
    args.update(method.config_args(sources, weights, densities, base, params))
    return args
