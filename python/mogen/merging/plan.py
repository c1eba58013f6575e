"""Which tensors a merge produces, from which inputs, in which dtype.

Tensor-name rules are ``(regex, action)`` pairs, the first whose pattern
``re.search``-matches a name deciding: ``"merge"``, ``"skip"``, or
``"copy:K"`` / ``("copy", K)`` (take the tensor from source K unchanged; K may
be ``"base"``). Tensors missing from some inputs a merge needs follow
``on_missing``: ``"error"`` (default), ``"skip"`` (leave them out) or
``"first"`` (copy from the first input that has them). Tensors that are not
fp32 / bf16 / fp16 in every input (integer buffers, ...) are copied from the
first input that has them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Optional, Sequence

from ..dtypes import FLOAT_CODES, itemsize
from .io import Checkpoint, TensorRef, natural_key
from .methods import MergeMethodSpec

ON_MISSING = ("error", "skip", "first")


@dataclass
class Item:
    name: str
    shape: tuple
    out_dtype: str
    action: str  # "merge" | "copy"
    refs: list  # per input: TensorRef or None
    copy_from: Optional[int] = None
    spec: Optional[MergeMethodSpec] = None  # this tensor's own method parameters (per-layer configs); else the merge's

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def out_nbytes(self) -> int:
        return self.numel * itemsize(self.out_dtype)


def parse_rules(rules, input_names: Sequence[str], num_sources: int) -> list[tuple]:
    """Rules as ``[(compiled regex, action, copy input index or None)]``."""
    if rules is None:
        return []
    if isinstance(rules, dict):
        rules = list(rules.items())
    out = []
    for r in rules:
        if not isinstance(r, (tuple, list)) or len(r) != 2:
            raise ValueError(f"each rule must be (regex, action), got {r!r}")
        pattern, action = r
        try:
            rx = re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"rule pattern {pattern!r} is not a valid regex: {exc}") from None
        src = None
        if isinstance(action, (tuple, list)) and len(action) == 2 and action[0] == "copy":
            action, src = "copy", action[1]
        elif isinstance(action, str) and action.startswith("copy:"):
            action, src = "copy", action.split(":", 1)[1]
        if action not in ("merge", "skip", "copy"):
            raise ValueError(f"rule action must be 'merge', 'skip' or 'copy:K', got {r[1]!r}")
        if action == "copy":
            if src == "base":
                if "base" not in input_names:
                    raise ValueError(f"rule {r!r} copies from base, but no base was given")
                src = input_names.index("base")
            else:
                try:
                    src = int(src)
                except (TypeError, ValueError):
                    raise ValueError(f"rule {r!r}: copy takes a source index or 'base'") from None
                if not 0 <= src < num_sources:
                    raise ValueError(f"rule {r!r}: source index {src} is not in [0, {num_sources})")
        out.append((rx, action, src))
    return out


def rule_action(compiled: list, name: str) -> tuple:
    """``(action, copy input index or None)`` of the first parsed rule matching ``name``; ("merge", None)
    when none does."""
    for rx, action, src in compiled:
        if rx.search(name):
            return action, src
    return "merge", None


class MergePlan:
    """A merge's opened inputs and, once planned, its output tensors: what :func:`mogen.merge` and
    :func:`mogen.merge_into` execute. ``inputs``: the sources, then base and the SFT checkpoint where
    given, named ``"source i"``, ``"base"``, ``"sft"``; the plan owns them (:meth:`close`)."""

    def __init__(self, spec: MergeMethodSpec, inputs: list, input_names: list):
        self.spec = spec
        self.inputs = inputs
        self.input_names = input_names
        self.items: list[Item] = []

    @property
    def used(self) -> tuple[list, list]:
        """The inputs the method combines (sources, then base and sft where it uses them) and their names."""
        used = list(range(self.spec.num_sources))
        if self.spec.uses_base:
            used.append(self.input_names.index("base"))
        if self.spec.uses_sft:
            used.append(self.input_names.index("sft"))
        return [self.inputs[i] for i in used], [self.input_names[i] for i in used]

    @property
    def side_folder(self):
        """The folder config and tokenizer files come from: the base's when given, else the first source's."""
        ck = self.inputs[self.input_names.index("base")] if "base" in self.input_names else self.inputs[0]
        return ck.folder

    def tensor_names(self) -> set:
        """Every tensor of the inputs the method combines, the SFT checkpoint's aside."""
        names = set()
        for ck, role in zip(*self.used):
            if role != "sft":
                names.update(ck.tensors)
        return names

    def plan(self, dtype: Optional[str], rules, on_missing: str, names: Optional[Sequence[str]] = None) -> list:
        """Plans the output tensors (:func:`build_plan`) into :attr:`items`."""
        used, used_names = self.used
        self.items = build_plan(self.spec, used, used_names, dtype, rules, on_missing, names=names)
        return self.items

    def close(self) -> None:
        for ck in self.inputs:
            ck.close()


def build_plan(spec: MergeMethodSpec, inputs: Sequence[Checkpoint], input_names: Sequence[str], dtype: Optional[str],
               rules, on_missing: str, names: Optional[Sequence[str]] = None) -> list[Item]:
    """One Item per output tensor, every check done (nothing is written before this returns).

    ``inputs``/``input_names``: sources, then base / sft where the method uses them.
    ``names`` restricts the tensors considered (merge_into: the model's names)."""
    if on_missing not in ON_MISSING:
        raise ValueError(f"on_missing must be one of {ON_MISSING}, got {on_missing!r}")
    compiled = parse_rules(rules, input_names, spec.num_sources)
    required = spec.required_inputs()
    if names is None:
        pool = set()
        for ck, role in zip(inputs, input_names):
            if role != "sft":
                pool.update(ck.tensors)
        names = sorted(pool, key=natural_key)
    base_idx = input_names.index("base") if "base" in input_names else None
    items = []
    for name in names:
        action, src = rule_action(compiled, name)
        if action == "skip":
            continue
        refs = [ck.tensors.get(name) for ck in inputs]
        if action == "copy":
            if refs[src] is None:
                raise ValueError(f"rule copies tensor {name!r} from {input_names[src]} ({inputs[src].path}), "
                                 "which does not have it")
            items.append(copy_item(name, refs, src, dtype))
            continue
        missing = [i for i in required if refs[i] is None]
        if missing:
            if on_missing == "skip":
                continue
            if on_missing == "first":
                order = ([base_idx] if base_idx is not None else []) + list(range(len(inputs)))
                first = next(i for i in order if refs[i] is not None)
                items.append(copy_item(name, refs, first, dtype))
                continue
            where = ", ".join(f"{input_names[i]} ({inputs[i].path})" for i in missing)
            raise ValueError(f"tensor {name!r} is missing from {where}; pass on_missing='skip' or 'first', "
                             "or a rule for it")
        item = merge_item(name, refs, [i for i in required if refs[i] is not None], input_names, dtype, base_idx)
        if item is not None:
            items.append(item)
    return items


def merge_item(name: str, refs: list, present: list[int], input_names: Sequence[str], dtype: Optional[str],
               base_idx: Optional[int]) -> Optional[Item]:
    """The Item merging ``refs[present]`` into ``name`` after checking shapes and dtypes (a copy
    when they are not floating point); None when no input has it."""
    if not present:  # all coefficients zero and nobody has it: impossible by construction
        return None
    shapes = {refs[i].shape for i in present}
    if len(shapes) > 1:
        detail = ", ".join(f"{input_names[i]}: {list(refs[i].shape)}" for i in present)
        raise ValueError(f"tensor {name!r} has different shapes across inputs ({detail})")
    dtypes = {refs[i].dtype for i in present}
    if not dtypes <= set(FLOAT_CODES):
        if dtypes & set(FLOAT_CODES) or len(dtypes) > 1:
            detail = ", ".join(f"{input_names[i]}: {refs[i].dtype}" for i in present)
            raise ValueError(f"tensor {name!r} cannot be merged: dtypes {detail}; merging takes F32, BF16 "
                             "and F16 (add a copy or skip rule)")
        first = base_idx if base_idx is not None and refs[base_idx] is not None else present[0]
        return Item(name, refs[first].shape, refs[first].dtype, "copy", refs, copy_from=first)
    if dtype is not None:
        out = dtype
    elif base_idx is not None and refs[base_idx] is not None:
        out = refs[base_idx].dtype
    else:
        out = refs[present[0]].dtype
    return Item(name, refs[present[0]].shape, out, "merge", refs)


def copy_item(name: str, refs: list, src: int, dtype: Optional[str]) -> Item:
    """``name`` copied from ``refs[src]`` (cast to ``dtype`` when it is floating point)."""
    r: TensorRef = refs[src]
    out = dtype if dtype is not None and r.dtype in FLOAT_CODES else r.dtype
    return Item(name, r.shape, out, "copy", refs, copy_from=src)
