"""The streaming merge engine, in place: :func:`merge_into` merges checkpoints into a live
model's parameters (CPU, or CUDA through pinned staging buffers)."""

from __future__ import annotations

import re
import time
from typing import Optional

import numpy as np
import torch

from .. import _backend
from ..dtypes import FLOAT_TORCH_DTYPES
from . import methods as _methods
from .engine import PathLike, _linear_row, _nonlinear, _open_inputs, _paths, _Progress, _used_inputs
from .io import kernels
from .plan import Item, build_plan
from .report import MergeReport, RssTracker

__all__ = ["merge_into"]

def _targets(model: torch.nn.Module) -> tuple[dict, dict]:
    """name -> tensor for parameters and buffers (aliases included), and id -> [names]."""
    by_name, groups = {}, {}
    for name, t in list(model.named_parameters(remove_duplicate=False)) + list(
            model.named_buffers(remove_duplicate=False)):
        by_name[name] = t
        groups.setdefault(id(t), []).append(name)
    return by_name, groups


def merge_into(
    model: torch.nn.Module,
    sources,
    coefficients=None,
    *,
    base: Optional[PathLike] = None,
    method: str = "linear",
    rules=None,
    on_missing: str = "error",
    progress: bool = False,
    **method_params,
) -> MergeReport:
    """Merges checkpoints in place into ``model``'s parameters (CPU or CUDA), by name.

    Each parameter is overwritten with the merge of the same-named tensor of the
    sources, computed straight into its memory (on CUDA through pinned staging
    buffers), so no second copy of the model is ever held: this is how a decoder
    re-merges its base for a new preference without reloading. Tied parameters
    are written once, under whichever of their names the checkpoints hold.
    Parameters absent from the checkpoints, and checkpoint tensors the model
    lacks, are errors unless ``on_missing="skip"`` or a ``skip`` rule covers them.
    Buffers are merged when the checkpoints hold them. Every check runs before
    the first parameter is written. Arguments as :func:`merge` (K must be 1).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    rss = RssTracker()
    src_paths = _paths(sources, "sources")
    spec = _methods.resolve(method, len(src_paths), coefficients, base is not None, method_params)
    if spec.num_outputs != 1:
        raise ValueError(f"merge_into writes one model; coefficients give {spec.num_outputs} merges")
    C = kernels()
    seconds = {}
    t0 = time.perf_counter()
    inputs, input_names = _open_inputs(src_paths, base, spec.params.get("sft"))
    seconds["open"] = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        used_inputs, used_names, base_idx = _used_inputs(spec, inputs, input_names)
        by_name, groups = _targets(model)
        ck_names = set()
        for ck, role in zip(used_inputs, used_names):
            if role != "sft":
                ck_names.update(ck.tensors)
        chosen = []  # (names of the target, the checkpoint name used)
        for tid, names in groups.items():
            hit = next((n for n in names if n in ck_names), None)
            t = by_name[names[0]]
            if hit is None:
                if isinstance(t, torch.nn.Parameter) and on_missing == "error":
                    raise ValueError(f"parameter {names[0]!r} of the model is in none of the checkpoints; "
                                     "pass on_missing='skip' to leave it unchanged")
                continue
            chosen.append(hit)
        items = build_plan(spec, used_inputs, used_names, None, rules, on_missing, names=chosen)
        planned = {it.name for it in items}
        if on_missing == "error":
            extra = sorted(n for n in ck_names - set(by_name) if n not in planned)
            skipped = set(chosen) - planned  # removed by skip rules
            extra = [n for n in extra if n not in skipped and not _skipped_by_rule(n, rules)]
            if extra:
                raise ValueError(f"checkpoint tensors {extra[:5]} have no counterpart in the model; "
                                 "pass on_missing='skip' or a skip rule")
        for it in items:
            t = by_name[it.name]
            if tuple(t.shape) != tuple(it.shape):
                raise ValueError(f"tensor {it.name!r} is {list(it.shape)} in the checkpoints but "
                                 f"{list(t.shape)} in the model")
            if it.action == "merge" and t.dtype not in FLOAT_TORCH_DTYPES:
                raise ValueError(f"model tensor {it.name!r} is {t.dtype}; merging writes float32, bfloat16 or float16")
        seconds["plan"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        total = sum(sum(r.nbytes for r in it.refs if r is not None) for it in items)
        bar = _Progress(total, progress, f"mogen {method} (in place)")
        bytes_read = bytes_written = 0
        staging = C.MergeStaging()  # CUDA staging buffers, reused across tensors
        try:
            with torch.no_grad():
                for it in items:
                    t = by_name[it.name]
                    bytes_read += _produce_into(C, spec, it, t, base_idx, bar, staging)
                    bytes_written += t.numel() * t.element_size()
        finally:
            bar.close()
        if any(by_name[it.name].is_cuda for it in items):
            torch.cuda.synchronize()
        seconds["merge"] = time.perf_counter() - t0
    finally:
        for ck in inputs:
            ck.close()
    return MergeReport(method=method, outputs=[], num_tensors=len(items), bytes_read=bytes_read,
                       bytes_written=bytes_written, seconds=seconds, baseline_rss=rss.baseline,
                       peak_rss=rss.peak())


def _skipped_by_rule(name: str, rules) -> bool:
    if not rules:
        return False
    for pattern, action in (rules.items() if isinstance(rules, dict) else rules):
        if re.search(pattern, name):
            return action == "skip"
    return False


def _produce_into(C, spec, it: Item, t: torch.Tensor, base_idx, bar, staging) -> int:
    data = t.data
    if it.action == "copy":
        ref = it.refs[it.copy_from]
        data.copy_(ref.read())
        bar.update(ref.nbytes)
        return ref.nbytes
    if not spec.linear:
        data.copy_(_nonlinear(spec, it, 0))
        n = sum(r.nbytes for r in it.refs if r is not None)
        bar.update(n)
        return n
    cols, coef = _linear_row(spec, it)
    refs = [it.refs[i] for i in cols]
    flat = [float(x) for x in np.asarray(coef, dtype=np.float64).reshape(-1)]
    srcs = [(r.reader, r.begin, r.dtype) for r in refs]
    on_device = data.device.type != "cpu"
    if on_device and not _backend.has_kernels_for(data.device):
        # No CUDA kernels in this build: merge on the CPU into a pinned buffer, then copy.
        tmp = torch.empty(data.shape, dtype=data.dtype, pin_memory=torch.cuda.is_available())
        C.merge_to_tensor(srcs, flat, tmp)
        data.copy_(tmp)
    elif data.is_contiguous():
        C.merge_to_tensor(srcs, flat, data, staging)
    else:
        tmp = torch.empty(data.shape, dtype=data.dtype, device=data.device)
        C.merge_to_tensor(srcs, flat, tmp, staging)
        data.copy_(tmp)
    n = sum(r.nbytes for r in refs)
    bar.update(n)
    return n
