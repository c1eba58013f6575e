"""Sequence scores of chunk search (docs/design.md section 1), kept incrementally from the runners' outputs.

For a candidate continuation ``y`` of prompt ``x`` (row ``r`` of a search)::

    score(y) = log pi_b(y|x) + beta * sum_i w[r, i] * (log pi_ei(y|x) - log pi_ri(y|x))
                             + gamma * sum_j u[r, j] * Q_j(x, y)

- ``log pi(y|x) = sum_t log_softmax(z_t / tau)[y_t]`` over the tokens of ``y``
  in the model's own tokenizer: the base's ids for the base and for guides
  that share its tokenizer (eos included), ``prefix + encode(text)`` for a
  guide with its own tokenizer, where ``log pi(y|x)`` is the log-probability
  of the ids of ``x + y`` minus that of the ids of ``x`` (re-tokenization may
  change the last ids of ``x``). The base scores with temperature 1; proxy
  guides with their own temperature ``t_i``.
- ``Q_j(x, y)`` is the value head's output before the last id of ``x + y``,
  at that id (MAGE eq. 15: the value of the state reached); top-k value
  guides use the same head through kernel K2.

Every score comes from the forward passes that decoding runs anyway: the
base's and lockstep guides' logits before each new id are gathered at the id
(:meth:`SequenceScorer.on_tokens`); guides reading text keep one score per
live guide id (:meth:`~mogen.decoding.crossguide.RetokenizingGroup.track`),
so retracted ids drop out and the total equals scoring the text afresh.
Sums are float64. Each guide term gives its own sequence contribution
(:meth:`~mogen.decoding.kinds.GuideTerm.sequence`) from the tallies it asked
:class:`Tracking` for; the scorer only loops over the terms.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from .binding import Guidance
from .tally import LogProb, TokenScoreFn, TokenTally

__all__ = ["Tracking", "SequenceScorer"]


class Tracking:
    """The per-token tallies the guide terms of one search ask for, shared when two terms ask for the same.

    A handle from :meth:`add` or :meth:`add_base` reads back as :meth:`sum` (over the continuation) or
    :meth:`last` (the continuation's last token). Every runner group offers the same interface
    (``track``, ``score_tokens``, ``totals``, ``last_scores``), so no group is told apart here.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._base_logits: Optional[torch.Tensor] = None
        self.base_ids = TokenTally(lambda _runner: self._base_logits)
        self._handles: dict[tuple, int] = {}
        self._slots: list[tuple[Any, int]] = []  # (group, slot)
        self._groups: list[Any] = []
        self._baselines: list[torch.Tensor] = []

    def add(self, ref: tuple, key: tuple, fn: TokenScoreFn) -> int:
        """Tally ``fn`` over the tokens of runner ``ref = (group, index)`` (``key`` names ``fn`` for sharing)."""
        group, runner = ref
        return self._slot((id(group), runner, *key), group, runner, fn)

    def add_base(self, key: tuple, fn: TokenScoreFn) -> int:
        """Tally ``fn(base_logits before the token, base ids)`` over the base's tokens (terms without a model)."""
        return self._slot(("base", *key), self.base_ids, 0, fn)

    def _slot(self, full_key: tuple, group: Any, runner: int, fn: TokenScoreFn) -> int:
        if full_key not in self._handles:
            self._handles[full_key] = len(self._slots)
            self._slots.append((group, group.track(runner, fn)))
            if all(g is not group for g in self._groups):
                self._groups.append(group)
        return self._handles[full_key]

    def start(self, rows: int) -> None:
        """After the runners' prefill: each tally's baseline (the prompt's own score; 0 for id-fed tallies)."""
        self.base_ids.start(rows, self.device)
        self._baselines = [group.totals(slot).clone() for group, slot in self._slots]

    def on_tokens(self, base_logits: torch.Tensor, tokens: torch.Tensor, alive: torch.Tensor) -> None:
        """Every group scores ``tokens [R]`` from the outputs before them (text readers as they read)."""
        self._base_logits = base_logits
        for group in self._groups:
            group.score_tokens(tokens, alive)

    def sum(self, handle: int) -> torch.Tensor:
        """float64 ``[R]``: the tally's sum over each row's continuation."""
        group, slot = self._slots[handle]
        return group.totals(slot) - self._baselines[handle]

    def last(self, handle: int) -> torch.Tensor:
        """float64 ``[R]``: the tally's score of each row's last token."""
        group, slot = self._slots[handle]
        return group.last_scores(slot)

    def reorder(self, index: torch.Tensor) -> None:
        self.base_ids.reorder(index)
        self._baselines = [b.index_select(0, index) for b in self._baselines]


class SequenceScorer:
    """The base's log-probability and every active guide's term per row, kept as tokens arrive.

    Args:
        guidance: the bound guides (register before ``guidance.runners.prefill``).
        batch: prompts ``B`` (rows before the search duplicates them).
        device: where scores live.

    Call :meth:`start` after the runners' prefill, :meth:`on_tokens` with
    each row's new token before the runners are fed it, and :meth:`reorder`
    whenever rows are selected.
    """

    def __init__(self, guidance: Guidance, batch: int, device: torch.device) -> None:
        f = guidance.fusion
        self.device = device
        self.columns = len(guidance.active)
        self.tracking = Tracking(device)
        self._terms = [(t, t.track(self.tracking)) for t in f.terms]
        self.coef = f.sequence_coefficients(batch, device)  # [R, A]: scale * w per row and term
        self.base = torch.zeros(batch, dtype=torch.float64, device=device)

    def start(self) -> None:
        """After the runners' prefill."""
        self.tracking.start(self.base.shape[0])

    def on_tokens(self, base_logits: torch.Tensor, tokens: torch.Tensor, alive: torch.Tensor) -> None:
        """Score ``tokens [R]`` by the base (``base_logits [R, V]`` before them) and every tally."""
        self.base += torch.where(alive, LogProb()(base_logits, tokens), 0.0)
        self.tracking.on_tokens(base_logits, tokens, alive)

    def terms(self) -> torch.Tensor:
        """float64 ``[R, A]``: per active guide its sequence contribution (e.g. ``log pi_e - log pi_r``, ``Q``)."""
        out = torch.zeros(self.base.shape[0], self.columns, dtype=torch.float64, device=self.device)
        for term, handles in self._terms:
            out[:, term.column] = term.sequence(self.tracking, handles)
        return out

    def scores(self, terms: torch.Tensor) -> torch.Tensor:
        """float64 ``[R]``: ``log pi_b(y|x) + sum_a coef[r, a] * terms[r, a]``."""
        return self.base + (self.coef * terms).sum(dim=1)

    def reorder(self, index: torch.Tensor) -> None:
        """Row ``r`` becomes old row ``index[r]`` (the runner groups reorder their own tallies)."""
        index = index.to(self.device)
        self.base = self.base.index_select(0, index)
        self.coef = self.coef.index_select(0, index)
        self.tracking.reorder(index)
