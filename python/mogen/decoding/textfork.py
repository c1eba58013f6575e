"""The forward of a text-scoring fork on hidden states: the output head only where a score needs it.

A fork feeds ``R = B * k`` copies of the rows ``width`` ids each (padded to
the longest feed), but a score needs the head's output at only a few of those
``R * width`` positions: before each new id, and at each copy's last id only
for the copy the step chooses. With a vocabulary of 150k ids the head and a
float64 ``log_softmax`` over ``R * width`` rows cost more than the models'
bodies. :class:`ForkOutputs` keeps the backbone's hidden states and applies the
head lazily:

- the output before a copy's first fed id is its row's output before the fork,
  shared by the ``k`` copies of the row (``[B, D]``, never expanded: a
  log-probability normalizes each of the ``B`` rows once, :func:`score_rows`);
- the output before any later fed id is the head at the hidden state of the
  id before it (a retraction's anchor, or a candidate whose text adds several
  guide ids);
- the output after a copy's last id goes through the head only when the copy
  is chosen (:meth:`ForkOutputs.last`).

This needs heads that are ``hidden @ W.T + b`` up to forward's elementwise transform (:func:`head_of`);
a group with any other head, or tracking scores for chunk search, forks with
full outputs (:meth:`~mogen.decoding.crossguide.RetokenizingGroup._feed`).
The results are the same: the head is the same matmul (and transform) on the same hidden state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch

from ..value_format import LinearHead, try_linear_head
from .models import LMRunner
from .tally import TokenScoreFn, score_rows

__all__ = ["ForkOutputs", "head_of", "fork_score"]

#: a runner's head: None (the runner's output is the hidden state) or the linear head and forward's transform
Head = Optional[LinearHead]


def head_of(runner: LMRunner) -> Union[Head, bool]:
    """The head :class:`ForkOutputs` applies for ``runner``, or False when it cannot (not a linear head up to
    a transform :func:`~mogen.value_format.linear_head` knows)."""
    if runner.output == "hidden":
        return None
    head = try_linear_head(runner.model, runner.name)
    if head is None:
        return False
    return head.rows(runner.vocab_size)  # the runner slices padded head rows off its logits: so do we


@dataclass
class ForkOutputs:
    """One model's outputs over a fork: ``before [B, D]`` (each row's output before the fork), ``hidden
    [R, width, H]`` (after each fed id), the head, ``k`` copies per row and each copy's last fed column
    ``last_col [R]`` (-1: the copy fed nothing)."""

    before: torch.Tensor
    hidden: torch.Tensor
    head: Head
    k: int
    last_col: torch.Tensor

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """The head's output ``[N, D]`` at hidden states ``[N, H]``."""
        if self.head is None:
            return hidden
        return self.head.project(hidden).to(self.before.dtype)

    def last(self, copies: torch.Tensor) -> torch.Tensor:
        """``[N, D]``: the output after the last id of each of ``copies [N]`` (its row's old one if it fed none)."""
        cols = self.last_col[copies]
        out = self.before[torch.div(copies, self.k, rounding_mode="floor")].clone()
        fed = cols >= 0
        if bool(fed.any()):
            out[fed] = self.project(self.hidden[copies[fed], cols[fed]])
        return out


def fork_score(fn: TokenScoreFn, outs: ForkOutputs, fed: torch.Tensor, needed: torch.Tensor) -> torch.Tensor:
    """float64 ``[R, width]``: ``fn`` of fed id ``fed[r, i]`` from the output before it, where ``needed``.

    ``needed [R, width]`` bool (CPU). The output before column 0 is the row's output before the fork; before
    column ``i > 0`` it is the head at ``hidden[r, i - 1]``.
    """
    device = outs.before.device
    out = torch.zeros(needed.shape, dtype=torch.float64, device=device)
    rows, cols = needed.nonzero(as_tuple=True)
    if rows.numel() == 0:
        return out
    ids = fed[rows, cols].to(device)
    first = cols == 0
    if bool(first.any()):
        r = rows[first]
        out[r, 0] = score_rows(fn, outs.before, torch.div(r, outs.k, rounding_mode="floor").to(device),
                               ids[first.to(device)])
    later = ~first
    if bool(later.any()):
        r, c = rows[later], cols[later]
        before = outs.project(outs.hidden[r.to(device), (c - 1).to(device)])
        out[r.to(device), c.to(device)] = fn(before, ids[later.to(device)])
    return out
