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

import dataclasses
import os
from pathlib import Path
from typing import Any

import yaml

from ..configs import ConfigError, config_errors
from .methods import METHODS, get_method
from .schema import LABEL, MergeConfig, merge_error, parse_merge_config

__all__ = ["load_config", "config_to_merge_args", "MODEL_PARAMS", "IGNORED_KEYS", "TOP_KEYS", "global_params"]

MODEL_PARAMS = ("weight", "density")  # per-model parameters of whole-model configs
IGNORED_KEYS = ("tokenizer_source", "chat_template", "name")  # accepted top-level keys without effect on tensors
#: the top-level keys of whole-model configs (the schema's, less ``slices``)
TOP_KEYS = tuple(f.name for f in dataclasses.fields(MergeConfig) if f.name != "slices")
_NO_EFFECT_PARAMS = ("int8_mask",)  # a mergekit memory option; no effect on the result


def global_params(layerwise: bool = False) -> tuple:
    """The merge-wide ``parameters`` keys a config may give: those of every registered method (usable
    in layerwise configs, with ``layerwise``), and int8_mask."""
    keys = [p for name in METHODS for p in get_method(name).config_parameters
            if not layerwise or get_method(name).layerwise]
    return tuple(dict.fromkeys(keys + list(_NO_EFFECT_PARAMS)))


def load_config(path) -> dict:
    """The YAML mapping in file ``path``, its shape checked (:func:`mogen.merging.schema.parse_merge_config`);
    errors name the file and the key path."""
    with open(path) as f:
        try:
            cfg = yaml.safe_load(f)
        except yaml.YAMLError as exc:
            raise merge_error("", f"not valid YAML ({exc})", path) from None
    if not isinstance(cfg, dict):
        raise merge_error("", "a merge config must be a YAML mapping", path)
    parse_merge_config(cfg, path)
    return cfg


def _scalar_param(value: Any, where: str):
    if isinstance(value, (list, dict)):
        raise merge_error(where, "per-layer gradients and filtered parameters are not supported "
                          f"(got {value!r}); give one number")
    return value


def _model_path(entry, root: Path, where: str) -> str:
    if isinstance(entry, dict):
        where, entry = f"{where}.model", entry.get("model")
    if not isinstance(entry, str):
        raise merge_error(where, f"expected a model path, got {entry!r}")
    if "+" in entry:
        raise merge_error(where, f"LoRA models ('model+lora') are not supported: {entry!r}")
    p = Path(os.path.expanduser(entry))
    return str(p if p.is_absolute() else (root / p))


def config_to_merge_args(cfg: dict, root=".", file=None) -> dict:
    """The keyword arguments of :func:`mogen.merge` (less ``out``) for a mergekit-style config.
    Relative model paths are taken from ``root``; errors name ``file`` (where the config was read)."""
    with config_errors(file, LABEL):
        parse_merge_config(cfg)
        if "slices" in cfg:
            raise merge_error("slices", "layer-range merges are read by mogen.merging.layerwise "
                              "(mogen merge --config sends them there); config_to_merge_args takes whole models")
        return _merge_args(cfg, Path(root))


def _params(cfg: dict) -> dict:
    params = dict(cfg.get("parameters") or {})
    allowed = global_params()
    for k in params:
        if k not in allowed:
            raise merge_error(f"parameters.{k}", f"unknown parameter {k!r} (known: {', '.join(allowed)})")
        params[k] = _scalar_param(params[k], f"parameters.{k}")
    for k in _NO_EFFECT_PARAMS:
        params.pop(k, None)
    return params


def _merge_args(cfg: dict, root: Path) -> dict:
    name = cfg["merge_method"]
    method = get_method(name)
    base = cfg.get("base_model")
    base = _model_path(base, root, "base_model") if base is not None else None
    params = _params(cfg)
    sources, weights, densities = [], [], []
    for i, m in enumerate(cfg["models"]):
        path = _model_path(m, root, f"models[{i}]")
        mp = (m.get("parameters") or {}) if isinstance(m, dict) else {}
        for k in mp:
            if k not in MODEL_PARAMS:
                raise merge_error(f"models[{i}].parameters.{k}", f"unknown parameter {k!r} "
                                  f"(known: {', '.join(MODEL_PARAMS)})")
        if method.needs_base and base is not None and os.path.abspath(path) == os.path.abspath(base):
            continue  # the base contributes no delta
        sources.append(path)
        weights.append(_scalar_param(mp.get("weight", method.config_weight), f"models[{i}].parameters.weight"))
        densities.append(_scalar_param(mp.get("density", 1.0), f"models[{i}].parameters.density"))
    args: dict = {"method": name}
    dtype = cfg.get("out_dtype") or cfg.get("dtype")
    if dtype is not None:
        args["dtype"] = dtype
    try:
        args.update(method.config_args(sources, weights, densities, base, params))
    except ConfigError:
        raise
    except ValueError as exc:  # what the method needs of the config (its own keys named in the message)
        raise merge_error("merge_method", str(exc).removeprefix(LABEL + ": ")) from None
    return args
