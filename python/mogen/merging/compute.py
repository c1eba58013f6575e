"""What :func:`mogen.merge` and :func:`mogen.merge_into` share: the paths check, opening a
:class:`~mogen.merging.plan.MergePlan`, the progress bar, and one planned tensor's linear
coefficients or per-tensor result."""

from __future__ import annotations

import os

import numpy as np
import torch
from tqdm.auto import tqdm

from .io import open_checkpoint
from .methods import MergeMethodSpec
from .plan import Item, MergePlan

__all__ = ["source_paths", "open_plan", "Progress", "linear_columns", "merge_tensor", "read_bytes"]


def source_paths(x, what: str) -> list[str]:
    """A path or a non-empty list of paths, as a list of strings."""
    if isinstance(x, (str, os.PathLike)):
        return [os.fspath(x)]
    if not isinstance(x, (list, tuple)) or not x:
        raise TypeError(f"{what} must be a path or a non-empty list of paths, got {x!r}")
    for p in x:
        if not isinstance(p, (str, os.PathLike)):
            raise TypeError(f"{what} must hold paths, got {p!r}")
    return [os.fspath(p) for p in x]


def open_plan(spec: MergeMethodSpec, sources: list[str], base, sft) -> MergePlan:
    """A plan with its inputs opened (sources, then base and sft where given), nothing planned yet."""
    inputs, names = [], []
    try:
        for i, s in enumerate(sources):
            inputs.append(open_checkpoint(s))
            names.append(f"source {i}")
        for role, path in (("base", base), ("sft", sft)):
            if path is not None:
                inputs.append(open_checkpoint(path))
                names.append(role)
    except BaseException:
        for ck in inputs:
            ck.close()
        raise
    return MergePlan(spec, inputs, names)


class Progress:
    """A tqdm bar over bytes read, or nothing."""

    def __init__(self, total: int, enabled: bool, desc: str):
        self.bar = None
        if enabled:
            self.bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1000, desc=desc,
                            dynamic_ncols=True, smoothing=0.1)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def linear_columns(spec: MergeMethodSpec, item: Item) -> tuple[list[int], np.ndarray]:
    """Inputs with a nonzero coefficient for this tensor, and their [K, n] coefficients."""
    cols = [i for i in range(spec.num_inputs) if np.any(spec.coef[:, i] != 0.0) and item.refs[i] is not None]
    if not cols:  # all coefficients zero: any present input times 0
        cols = [next(i for i, r in enumerate(item.refs) if r is not None)]
    return cols, spec.coef[:, cols]


def merge_tensor(spec: MergeMethodSpec, item: Item, k: int) -> torch.Tensor:
    """Output k of a per-tensor (non-linear) method, fp32 (inputs: the sources, then base)."""
    n = spec.num_sources
    xs = [item.refs[i].read().to(torch.float32) for i in range(n)]
    base = item.refs[n].read().to(torch.float32) if spec.uses_base else None
    return spec.method.merge_tensor(spec, k, item.name, xs, base)


def read_bytes(item: Item) -> int:
    """The bytes of every input tensor of ``item``."""
    return sum(r.nbytes for r in item.refs if r is not None)
