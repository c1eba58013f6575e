"""mergekit-style YAML merge configs, so existing configs run unchanged.

Accepted: ``models`` (each ``model`` with optional ``parameters``: ``weight``,
``density``), ``merge_method`` (linear, task_arithmetic, ties, dare_linear,
dare_ties, slerp; plus mogen's bone_soup), ``base_model``, ``dtype`` /
``out_dtype``, top-level ``parameters`` (normalize, lambda, t, rescale, int8_mask,
and bone_soup's beta / alpha / sft), ``tokenizer_source: base`` (the default
here). Per-layer gradients (lists), ``filter`` entries and ``slices`` are not
supported and are refused with a clear error.

Defaults follow mergekit where it differs from :func:`mogen.merge`: ``linear``
normalises its weights unless ``normalize: false``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

__all__ = ["load_config", "config_to_merge_args"]

_MODEL_PARAMS = ("weight", "density")
_GLOBAL_PARAMS = ("normalize", "lambda", "t", "rescale", "int8_mask", "beta", "alpha", "sft", "seed")
_IGNORED_KEYS = ("tokenizer_source", "chat_template", "name")


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
    unknown = set(cfg) - {"models", "merge_method", "base_model", "dtype", "out_dtype", "parameters", *_IGNORED_KEYS}
    if "slices" in cfg:
        raise ValueError("merge config: 'slices' (layer-range merges) are not supported; list whole models")
    if unknown:
        raise ValueError(f"merge config: unknown keys {sorted(unknown)}")
    method = cfg.get("merge_method")
    if not isinstance(method, str):
        raise ValueError("merge config: merge_method is required")
    if cfg.get("tokenizer_source") not in (None, "base"):
        raise ValueError(f"merge config: tokenizer_source {cfg['tokenizer_source']!r} is not supported (only 'base')")
    base = cfg.get("base_model")
    base = _model_path(base, root, "base_model") if base is not None else None
    models = cfg.get("models") or []
    if not isinstance(models, list) or not models:
        raise ValueError("merge config: models must be a non-empty list")
    params = dict(cfg.get("parameters") or {})
    for k in params:
        if k not in _GLOBAL_PARAMS:
            raise ValueError(f"merge config: unknown parameter {k!r}")
        params[k] = _scalar_param(params[k], f"parameters.{k}")
    params.pop("int8_mask", None)  # a mergekit memory option; no effect on the result
    sources, weights, densities = [], [], []
    for i, m in enumerate(models):
        path = _model_path(m, root, f"models[{i}]")
        mp = (m.get("parameters") or {}) if isinstance(m, dict) else {}
        for k in mp:
            if k not in _MODEL_PARAMS:
                raise ValueError(f"merge config: models[{i}]: unknown parameter {k!r}")
        if method in ("task_arithmetic", "ties", "dare_linear", "dare_ties") and base is not None \
                and os.path.abspath(path) == os.path.abspath(base):
            continue  # the base contributes no delta
        sources.append(path)
        weights.append(_scalar_param(mp.get("weight", 1.0 if method != "linear" else None), f"models[{i}].weight"))
        densities.append(_scalar_param(mp.get("density", 1.0), f"models[{i}].density"))
    args: dict = {"sources": sources, "method": method, "base": base}
    dtype = cfg.get("out_dtype") or cfg.get("dtype")
    if dtype is not None:
        args["dtype"] = dtype
    if method == "slerp":
        if base is None:
            raise ValueError("merge config: slerp needs base_model (the t = 0 end)")
        others = [s for s in sources if os.path.abspath(s) != os.path.abspath(base)]
        if len(others) != 1:
            raise ValueError("merge config: slerp merges base_model with exactly one other model")
        args.update(sources=[base, others[0]], base=None, t=params.pop("t", None))
        if args["t"] is None:
            raise ValueError("merge config: slerp needs parameters.t")
        args.update(params)
        return args
    if method == "linear":
        if any(w is None for w in weights):
            raise ValueError("merge config: linear needs parameters.weight for every model")
        params.setdefault("normalize", True)  # mergekit's default
        args["base"] = base
    args["coefficients"] = weights
    if method in ("ties", "dare_linear", "dare_ties"):
        args["density"] = densities
    elif any(d != 1.0 for d in densities):
        raise ValueError(f"merge config: density applies to ties / dare methods, not {method}")
    if method == "bone_soup":
        params["beta"] = params.get("beta")
    args.update(params)
    return args
