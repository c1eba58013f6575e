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
Sums are float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from .. import ops
from .binding import Guidance
from .crossguide import RetokenizingGroup
from .terms import ProxyTerm, ValueTerm

__all__ = ["LogProb", "HeadValue", "HiddenValue", "SequenceScorer"]


class LogProb:
    """``log_softmax(out / temperature)[id]`` in float64: a token's log-probability."""

    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature = float(temperature)

    def __call__(self, out: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        x = out.double() / self.temperature
        return x.gather(1, ids.unsqueeze(1)).squeeze(1) - torch.logsumexp(x, dim=-1)


class HeadValue:
    """``out[id]``: a full value head's ``Q`` at the token."""

    def __call__(self, out: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return out.gather(1, ids.unsqueeze(1)).squeeze(1).double()


class HiddenValue:
    """``hidden . W[id] + b[id]`` (kernel K2 with one candidate): a value head applied at the token only."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
        self.weight, self.bias = weight, bias

    def __call__(self, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        if ids.numel() == 0:
            return torch.zeros(0, dtype=torch.float64, device=hidden.device)
        q = ops.topk_value_scores(hidden, self.weight, ids.unsqueeze(1).to(hidden.device), self.bias)
        return q[:, 0].double()


@dataclass
class _Tracker:
    """One model's per-token score in one group: a running sum and the last token's score per row."""

    group: Any
    runner: int
    fn: Any
    slot: int = -1  # RetokenizingGroup slot (text readers)
    total: Optional[torch.Tensor] = None  # lockstep: float64 [R]; text readers: the baseline at the prompt
    last: Optional[torch.Tensor] = None  # lockstep: float64 [R]

    @property
    def reads_text(self) -> bool:
        return isinstance(self.group, RetokenizingGroup)


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
        self._trackers: list[_Tracker] = []
        self._keys: dict[tuple, int] = {}
        self._terms: list[tuple[int, str, tuple[int, ...]]] = []  # (column, kind, tracker indices)
        for t in f.proxies:
            e = self._track(t.expert, ("logp", t.temperature), LogProb(t.temperature))
            r = self._track(t.reference, ("logp", t.temperature), LogProb(t.temperature))
            self._terms.append((t.column, "proxy", (e, r)))
        for t in f.full_values + f.topk_values:
            fn = HeadValue() if t.head is None else HiddenValue(*t.head)
            self._terms.append((t.column, "value", (self._track(t.runner, ("value",), fn),)))
        self._terms.sort()
        w = f.weights.to(device, torch.float64)
        w = w.unsqueeze(0).expand(batch, -1) if w.dim() == 1 else w
        scale = torch.ones(self.columns, dtype=torch.float64, device=device)
        for column, kind, _ in self._terms:
            scale[column] = f.beta if kind == "proxy" else f.gamma
        self.coef = (w * scale).contiguous()  # [R, A]: beta * w or gamma * u per row and term
        self.base = torch.zeros(batch, dtype=torch.float64, device=device)

    def _track(self, ref: tuple, key: tuple, fn: Any) -> int:
        group, runner = ref
        full_key = (id(group), runner, *key)
        if full_key not in self._keys:
            tracker = _Tracker(group, runner, fn)
            if tracker.reads_text:
                tracker.slot = group.track(runner, fn)
            self._keys[full_key] = len(self._trackers)
            self._trackers.append(tracker)
        return self._keys[full_key]

    def start(self) -> None:
        """After the runners' prefill: text readers' baselines (the prompt's own score), lockstep sums 0."""
        rows = self.base.shape[0]
        for t in self._trackers:
            if t.reads_text:
                t.total = t.group.totals(t.slot)
            else:
                t.total = torch.zeros(rows, dtype=torch.float64, device=self.device)
                t.last = torch.zeros(rows, dtype=torch.float64, device=self.device)

    def on_tokens(self, base_logits: torch.Tensor, tokens: torch.Tensor, alive: torch.Tensor) -> None:
        """Score ``tokens [R]`` by the base (``base_logits [R, V]`` before them) and the lockstep guides."""
        self.base += torch.where(alive, LogProb()(base_logits, tokens), 0.0)
        for t in self._trackers:
            if not t.reads_text:
                v = t.fn(t.group.output(t.runner), tokens)
                t.total += torch.where(alive, v, 0.0)
                t.last = torch.where(alive, v, t.last)

    def _sum(self, t: _Tracker) -> torch.Tensor:
        return t.group.totals(t.slot) - t.total if t.reads_text else t.total

    def _last(self, t: _Tracker) -> torch.Tensor:
        return t.group.last_scores(t.slot) if t.reads_text else t.last

    def terms(self) -> torch.Tensor:
        """float64 ``[R, A]``: per active guide, ``log pi_e(y|x) - log pi_r(y|x)`` or ``Q(x, y)``."""
        out = torch.zeros(self.base.shape[0], self.columns, dtype=torch.float64, device=self.device)
        for column, kind, idx in self._terms:
            if kind == "proxy":
                e, r = (self._trackers[i] for i in idx)
                out[:, column] = self._sum(e) - self._sum(r)
            else:
                out[:, column] = self._last(self._trackers[idx[0]])
        return out

    def scores(self, terms: torch.Tensor) -> torch.Tensor:
        """float64 ``[R]``: ``log pi_b(y|x) + sum_a coef[r, a] * terms[r, a]``."""
        return self.base + (self.coef * terms).sum(dim=1)

    def reorder(self, index: torch.Tensor) -> None:
        """Row ``r`` becomes old row ``index[r]`` (the runners reorder themselves)."""
        index = index.to(self.device)
        self.base = self.base.index_select(0, index)
        self.coef = self.coef.index_select(0, index)
        for t in self._trackers:
            t.total = t.total.index_select(0, index)
            if t.last is not None:
                t.last = t.last.index_select(0, index)
