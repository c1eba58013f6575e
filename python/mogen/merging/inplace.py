"""The streaming merge engine, in place: :func:`merge_into` merges checkpoints into a live
model's parameters (CPU, or CUDA through pinned staging buffers)."""

from __future__ import annotations

import sys
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


def checkpoint_names(model: torch.nn.Module, ck_names: set, by_name: dict) -> dict:
    """checkpoint name -> the model's name for it, as ``from_pretrained`` renames when loading.

    ``transformers`` (>= 5) saves some tensors under other names than the live model's (GPT-NeoX's
    ``embed_out`` is ``lm_head`` in the model; legacy ``gamma`` / ``beta``; a checkpoint of the bare
    backbone lacks the head class's prefix). Names that load unchanged map to themselves. A tensor that
    loading *converts* (several checkpoint tensors fused into one parameter, or one split) cannot be merged
    in place by name: ValueError, naming it, with the alternative.
    """
    same = {n: n for n in ck_names}
    # A transformers model means transformers is imported already; never import it for another module.
    modeling = sys.modules.get("transformers.modeling_utils")
    if modeling is None or not isinstance(model, modeling.PreTrainedModel):
        return same
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
    except ImportError:  # pragma: no cover - transformers < 5 loads checkpoints by name
        return same
    conversions = get_model_conversion_mapping(model)
    renamings = [c for c in conversions if isinstance(c, WeightRenaming)]
    converters = [c for c in conversions if isinstance(c, WeightConverter)]
    prefix = getattr(model, "base_model_prefix", None) or None
    out = {}
    for name in sorted(ck_names):  # sorted: the same tensor is named in an error every time
        if name in by_name:
            out[name] = name
            continue
        renamed, pattern = rename_source_key(name, renamings, converters, prefix, by_name)
        if pattern is not None:
            raise ValueError(
                f"checkpoint tensor {name!r} is converted by transformers when {type(model).__name__} loads it "
                f"(pattern {pattern!r}), so it has no one parameter to merge into in place; merge to a folder "
                "with mogen.merge and load the result with from_pretrained"
            )
        out[name] = renamed
    return out


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
    returns checkpoint name -> the model's tensor."""
    ck_names = plan.tensor_names()
    targets = _Targets(model, ck_names)
    plan.plan(None, rules, on_missing, names=targets.chosen(ck_names, on_missing))
    targets.check(plan, ck_names, rules, on_missing)
    return targets.by_ck_name


class _Targets:
    """The model's parameters and buffers, matched to checkpoint tensors by name (renamed as ``from_pretrained``
    does)."""

    def __init__(self, model: torch.nn.Module, ck_names: set):
        self.by_name, self.groups = _targets(model)
        self.model_name = checkpoint_names(model, ck_names, self.by_name)  # checkpoint name -> model name
        self.ck_name: dict = {}  # model name -> checkpoint name
        for ck, name in sorted(self.model_name.items()):
            self.ck_name.setdefault(name, ck)
        self.by_ck_name = {ck: self.by_name[name] for ck, name in self.model_name.items() if name in self.by_name}

    def chosen(self, ck_names: set, on_missing: str) -> list[str]:
        """Per tensor of the model (tied ones once), the checkpoint name of the first of its names the
        checkpoints hold."""
        chosen = []
        for names in self.groups.values():
            hit = next((self.ck_name[n] for n in names if n in self.ck_name), None)
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
            extra = sorted(n for n in ck_names if self.model_name[n] not in by_name
                           and rule_action(compiled, n)[0] != "skip")
            if extra:
                raise ValueError(f"checkpoint tensors {extra[:5]} have no counterpart in the model; "
                                 "pass on_missing='skip' or a skip rule")
        for it in items:
            t = self.by_ck_name[it.name]
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
