"""The streaming merge engine, in place: :func:`merge_into` merges checkpoints into a live
model's parameters (CPU, or CUDA through pinned staging buffers)."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .. import _backend
from ..dtypes import FLOAT_TORCH_DTYPES
from . import methods as _methods
from .compute import Progress, linear_columns, merge_tensor, open_plan, read_bytes, source_paths
from .io import PathLike, kernels
from .plan import Item, MergePlan, parse_rules, rule_action
from .report import MergeReport, RssTracker, timed

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
    src_paths = source_paths(sources, "sources")
    spec = _methods.resolve(method, len(src_paths), coefficients, base is not None, method_params)
    if spec.num_outputs != 1:
        raise ValueError(f"merge_into writes one model; coefficients give {spec.num_outputs} merges")
    C = kernels()
    seconds: dict = {}
    with timed(seconds, "open"):
        plan = open_plan(spec, src_paths, base, spec.params.get("sft"))
    try:
        with timed(seconds, "plan"):
            by_name = plan_into(plan, model, rules, on_missing)
        with timed(seconds, "merge"):
            bytes_read, bytes_written = execute_into(C, plan, by_name, progress, f"mogen {method} (in place)")
    finally:
        plan.close()
    return MergeReport(method=method, outputs=[], num_tensors=len(plan.items), bytes_read=bytes_read,
                       bytes_written=bytes_written, seconds=seconds, baseline_rss=rss.baseline,
                       peak_rss=rss.peak())


def plan_into(plan: MergePlan, model: torch.nn.Module, rules, on_missing: str) -> dict:
    """Plans ``plan``'s items for the model's tensors (every check done, nothing written);
    returns name -> the model's tensor."""
    targets = _Targets(model)
    ck_names = plan.tensor_names()
    plan.plan(None, rules, on_missing, names=targets.chosen(ck_names, on_missing))
    targets.check(plan, ck_names, rules, on_missing)
    return targets.by_name


class _Targets:
    """The model's parameters and buffers, matched to checkpoint tensors by name."""

    def __init__(self, model: torch.nn.Module):
        self.by_name, self.groups = _targets(model)

    def chosen(self, ck_names: set, on_missing: str) -> list[str]:
        """Per tensor of the model (tied ones once), the first of its names the checkpoints hold."""
        chosen = []
        for names in self.groups.values():
            hit = next((n for n in names if n in ck_names), None)
            t = self.by_name[names[0]]
            if hit is None:
                if isinstance(t, torch.nn.Parameter) and on_missing == "error":
                    raise ValueError(f"parameter {names[0]!r} of the model is in none of the checkpoints; "
                                     "pass on_missing='skip' to leave it unchanged")
                continue
            chosen.append(hit)
        return chosen

    def check(self, plan: MergePlan, ck_names: set, rules, on_missing: str) -> None:
        """Refuses checkpoint tensors the model lacks (unless skipped), and shapes or dtypes that differ."""
        by_name, items = self.by_name, plan.items
        if on_missing == "error":
            compiled = parse_rules(rules, plan.used[1], plan.spec.num_sources)
            extra = sorted(n for n in ck_names - set(by_name) if rule_action(compiled, n)[0] != "skip")
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


def execute_into(C, plan: MergePlan, by_name: dict, progress: bool, label: str) -> tuple[int, int]:
    """Writes a planned in-place merge into the model's tensors; returns (bytes read, bytes written)."""
    items = plan.items
    bar = Progress(sum(read_bytes(it) for it in items), progress, label)
    bytes_read = bytes_written = 0
    staging = C.MergeStaging()  # CUDA staging buffers, reused across tensors
    try:
        with torch.no_grad():
            for it in items:
                t = by_name[it.name]
                bytes_read += _produce_into(C, plan.spec, it, t, bar, staging)
                bytes_written += t.numel() * t.element_size()
    finally:
        bar.close()
    if any(by_name[it.name].is_cuda for it in items):
        torch.cuda.synchronize()
    return bytes_read, bytes_written


def _produce_into(C, spec, it: Item, t: torch.Tensor, bar, staging) -> int:
    data = t.data
    if it.action == "copy":
        ref = it.refs[it.copy_from]
        data.copy_(ref.read())
        bar.update(ref.nbytes)
        return ref.nbytes
    if not spec.linear:
        data.copy_(merge_tensor(spec, it, 0))
        n = read_bytes(it)
        bar.update(n)
        return n
    cols, coef = linear_columns(spec, it)
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
