"""mergekit configs whose parameters change from tensor to tensor: ``slices`` with
``layer_range`` (passthrough frankenmerges included), per-layer gradients and
``filter`` entries (see :mod:`mogen.merging.slices` and :mod:`mogen.merging.settings`).

Each output tensor gets its own parameters, looked up as mergekit does: a
model's parameter (``weight``, ``density``, passthrough's ``scale``) from that
source's ``parameters``, else the slice's, else the top level, evaluated for the
source's input tensor name; a merge-wide one (``t``, ``normalize``, ...) from the
slice's, else the top level, evaluated for the output tensor name. Those scalars
form a plain config, which :func:`mogen.merging.config.config_to_merge_args` maps
to a method spec exactly as for whole-model configs; the streaming engine then
writes every tensor with its own spec, each input tensor read once.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Optional

from ..configs import ConfigError, config_errors
from . import methods as _methods
from .config import MODEL_PARAMS, config_to_merge_args, global_params
from .engine import WriteJob, check_outputs, write_outputs
from .io import open_checkpoint, parse_dtype, parse_size
from .plan import Item, copy_item, merge_item
from .report import MergeReport, RssTracker
from .schema import LABEL, merge_error, parse_merge_config
from .settings import evaluate_setting, is_scalar_setting
from .slices import OutSlice, TensorJob, check_params, layer_count, model_path, parse_slices, tensor_jobs

__all__ = ["needs_layerwise", "merge_config", "plan_config"]

def layerwise_methods() -> tuple:
    """The registered methods a config with slices or per-layer parameters may name."""
    return tuple(m for m in _methods.METHODS if _methods.get_method(m).layerwise)


def needs_layerwise(cfg: dict) -> bool:
    """Whether a config needs per-tensor parameters: slices, passthrough, gradients, filters, or
    model parameters (weight, density) given at the top level."""
    if not isinstance(cfg, dict):
        return False
    method = cfg.get("merge_method")
    if "slices" in cfg or (method in _methods.METHODS and _methods.get_method(method).layerwise_only):
        return True
    top = cfg.get("parameters") or {}
    models = cfg.get("models") if isinstance(cfg.get("models"), list) else []
    per_model = [m.get("parameters") or {} for m in models if isinstance(m, dict)]
    if isinstance(top, dict) and any(k in MODEL_PARAMS for k in top):
        return True
    return any(not is_scalar_setting(v) for d in [top, *per_model] if isinstance(d, dict) for v in d.values())


def _model_params(method: str) -> tuple:
    return _methods.get_method(method).model_parameters


def _check_top(cfg: dict) -> str:
    """The method of a config whose shape :func:`~mogen.merging.schema.parse_merge_config` accepts."""
    parse_merge_config(cfg)
    method = cfg["merge_method"]
    supported = layerwise_methods()
    if method not in supported:
        raise merge_error("merge_method", f"{method!r} is not supported with slices or per-layer "
                          f"parameters (supported: {', '.join(supported)})")
    return method


def _lookup(name: str, levels: list, t: float) -> Optional[Any]:
    """The first level (params dict, tensor name) that sets ``name`` for that tensor."""
    for params, tensor_name in levels:
        if name in params:
            v = evaluate_setting(params[name], tensor_name, t)
            if v is not None:
                return v
    return None


def _scalar_config(method: str, job: TensorJob, top: dict) -> dict:
    """The plain (scalar) config of one output tensor."""
    sl = job.slice
    models = []
    for src, in_name in zip(sl.sources, job.in_names):
        p = {}
        for key in _model_params(method):
            v = _lookup(key, [(src.params, in_name), (sl.params, in_name), (top, in_name)], job.t)
            if v is not None:
                p[key] = v
        models.append({"model": src.path, "parameters": p})
    params = {}
    for key in (set(sl.params) | set(top)) - set(_model_params(method)):
        v = _lookup(key, [(sl.params, job.out_name), (top, job.out_name)], job.t)
        if v is not None:
            params[key] = v
    base = sl.base.path if sl.base is not None else None
    return {"models": models, "merge_method": method, "base_model": base, "parameters": params}


class _Specs:
    """Method specs by their scalar config (a few distinct ones serve thousands of tensors)."""

    def __init__(self) -> None:
        self.cache: dict = {}

    def get(self, scalar_cfg: dict, job: TensorJob) -> tuple:
        key = json.dumps(scalar_cfg, sort_keys=True)
        if key not in self.cache:
            try:
                args = config_to_merge_args(scalar_cfg, root="/")
                args.pop("dtype", None)
                sources, method, base = args.pop("sources"), args.pop("method"), args.pop("base")
                coef = args.pop("coefficients", None)
                spec = _methods.resolve(method, len(sources), coef, base is not None, args)
            except ConfigError as exc:  # the per-tensor scalar config's keys are the slice's
                raise merge_error(job.slice.where, f"{exc.path}: {exc.message} (for tensor {job.out_name!r})") from None
            except (ValueError, TypeError) as exc:
                raise merge_error(job.slice.where, f"{exc} (for tensor {job.out_name!r})") from None
            self.cache[key] = (spec, sources, base)
        return self.cache[key]


def _item(job: TensorJob, method: str, top: dict, specs: _Specs, cks: dict, dtype: Optional[str]) -> Item:
    """The planned output tensor of one job, with its own spec."""
    sl: OutSlice = job.slice
    names = {s.path: n for s, n in zip(sl.sources + ([sl.base] if sl.base else []), job.in_names)}
    scalar = _scalar_config(method, job, top)
    if method == "passthrough":
        if len(sl.sources) != 1:
            raise merge_error(f"{sl.where}.sources", f"passthrough takes one source per slice, "
                              f"got {len(sl.sources)}")
        scale = scalar["models"][0]["parameters"].get("scale")
        paths = [sl.sources[0].path]
        spec = None if scale is None else _methods.resolve("passthrough", 1, None, False, {"scale": scale})
    else:
        spec, paths, base = specs.get(scalar, job)
        paths = list(paths) + ([base] if spec.uses_base else [])
    refs = [cks[p].tensors.get(names[p]) for p in paths]
    required = list(range(len(paths))) if spec is None else spec.required_inputs()
    for i in required:
        if refs[i] is None:
            raise ValueError(f"tensor {names[paths[i]]!r} (output {job.out_name!r}) is missing from {paths[i]}")
    if spec is None:
        return copy_item(job.out_name, refs, 0, dtype)
    base_idx = spec.num_sources if spec.uses_base else None
    item = merge_item(job.out_name, refs, required, paths, dtype, base_idx)
    item.spec = spec
    return item


def plan_config(cfg: dict, root: str, cks: dict, dtype: Optional[str]) -> tuple[list[Item], int]:
    """Every output tensor of a checked config, planned; and the output's layer count."""
    method = _check_top(cfg)
    base = cfg.get("base_model")
    slices = parse_slices(cfg, root, _abs(base, root) if base else None, _model_params(method), _all_params(method))
    top = _top_params(cfg, method)
    jobs, layers = tensor_jobs(slices, cks)
    specs = _Specs()
    return [_item(j, method, top, specs, cks, dtype) for j in jobs], layers


def _all_params(method: str) -> tuple:
    return _model_params(method) + global_params(layerwise=True)


def _top_params(cfg: dict, method: str) -> dict:
    return check_params(cfg.get("parameters"), "parameters", _all_params(method))


def _abs(path: str, root: str) -> str:
    return model_path(path, root, "base_model")


def config_paths(cfg: dict, root: str) -> list[str]:
    """Every model a config names (absolute paths), in order of first mention."""
    method = _check_top(cfg)
    base = _abs(cfg["base_model"], root) if cfg.get("base_model") else None
    slices = parse_slices(cfg, root, base, _model_params(method), _all_params(method))
    paths = [s.path for sl in slices for s in sl.sources] + [sl.base.path for sl in slices if sl.base]
    return list(dict.fromkeys(paths))


def merge_config(cfg: dict, out, root: str = ".", *, dtype=None, shard_size="5GB", progress: bool = True,
                 overwrite: bool = False, fsync: bool = True, file=None) -> MergeReport:
    """Merges a mergekit config with slices or per-layer parameters into folder ``out``.
    Relative model paths are taken from ``root``; ``dtype`` overrides the config's. Config errors are
    :class:`~mogen.configs.ConfigError` naming the key path and ``file`` (where the config was read)."""
    with config_errors(file, LABEL):
        return _merge_config(cfg, out, root, dtype, shard_size, progress, overwrite, fsync)


def _merge_config(cfg: dict, out, root: str, dtype, shard_size, progress: bool, overwrite: bool,
                  fsync: bool) -> MergeReport:
    rss = RssTracker()
    root = os.path.abspath(root)
    paths = config_paths(cfg, root)
    outs = [os.fspath(out)]
    check_outputs(outs, paths)
    dtype_code = parse_dtype(dtype or cfg.get("out_dtype") or cfg.get("dtype"))
    shard_bytes = parse_size(shard_size)
    seconds: dict = {}
    t0 = time.perf_counter()
    cks: dict = {}
    try:
        for p in paths:
            cks[p] = open_checkpoint(p)
        seconds["open"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        items, layers = plan_config(cfg, root, cks, dtype_code)
        side = cks[config_paths(cfg, root)[0] if not cfg.get("base_model") else _abs(cfg["base_model"], root)]
        updates = {"num_hidden_layers": layers} if layers != layer_count(side) else {}
        seconds["plan"] = time.perf_counter() - t0
        job = WriteJob(outs, overwrite, fsync, shard_bytes, dtype_code, side.folder, progress,
                       cfg["merge_method"], updates)
        return write_outputs(None, items, job, seconds, rss)
    finally:
        for ck in cks.values():
            ck.close()
