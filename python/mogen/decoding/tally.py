"""Per-token scores (what a model gives a token from its output before it) and their per-row tallies.

A *token score* is ``fn(outputs [N, D], ids [N]) -> float64 [N]``:
:class:`LogProb` (a token's log-probability), :class:`HeadValue` (a full value
head's ``Q`` at the token), :class:`HiddenValue` (a value head applied at the
token only, kernel K2). Chunk search sums them per row
(:mod:`mogen.decoding.scoring`).

:class:`TokenTally` keeps tracked scores for models fed the base's ids one
token at a time; every runner group offers the same tracking interface
(``track``, ``score_tokens``, ``totals``, ``last_scores``), the lockstep group
through a tally, the text-reading group through its cache columns
(:class:`~mogen.decoding.crossguide.RetokenizingGroup`).
"""

from __future__ import annotations

from typing import Callable

import torch

from ..value_format import LinearHead

__all__ = ["LogProb", "HeadValue", "HiddenValue", "TokenTally", "TokenScoreFn", "score_columns", "score_rows"]

#: ``fn(outputs [N, D], ids [N]) -> float64 [N]``: what a model gives token ``ids[n]`` from the output before it.
TokenScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def score_columns(fn: TokenScoreFn, before: torch.Tensor, ids: torch.Tensor, needed: torch.Tensor) -> torch.Tensor:
    """float64 ``[B, W]``: ``fn(before[b, w], ids[b, w])`` where ``needed [B, W]`` (bool) is set, 0 elsewhere.

    ``before [B, W, D]`` holds the output before each id. Only the needed columns reach ``fn``: a
    log-probability costs a pass over the whole vocabulary per column, and padded or anchor columns
    would waste it.
    """
    out = torch.zeros(ids.shape, dtype=torch.float64, device=before.device)
    rows, cols = needed.to(before.device).nonzero(as_tuple=True)
    if rows.numel():
        out[rows, cols] = fn(before[rows, cols], ids.to(before.device)[rows, cols])
    return out


def score_rows(fn: TokenScoreFn, outputs: torch.Tensor, row_of: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """float64 ``[N]``: ``fn(outputs[row_of], ids)`` for ``outputs [M, D]`` shared by many of the ``N`` scores.

    A score fn with an ``at_rows`` method (:class:`LogProb`) does the vocabulary-wide part once per output row
    instead of once per score: ``B * k`` candidates of a step share ``B`` outputs.
    """
    if ids.numel() == 0:
        return torch.zeros(0, dtype=torch.float64, device=outputs.device)
    at_rows = getattr(fn, "at_rows", None)
    if at_rows is not None:
        return at_rows(outputs, row_of, ids)
    return fn(outputs[row_of], ids)


class LogProb:
    """``log_softmax(out / temperature)[id]`` in float64: a token's log-probability."""

    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature = float(temperature)

    def __call__(self, out: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        x = out.double() / self.temperature
        return x.gather(1, ids.unsqueeze(1)).squeeze(1) - torch.logsumexp(x, dim=-1)

    def at_rows(self, out: torch.Tensor, row_of: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """``self(out[row_of], ids)`` with one ``logsumexp`` per row of ``out [M, D]``, not per score."""
        norm = torch.logsumexp(out.double() / self.temperature, dim=-1)
        picked = out[row_of, ids].double() / self.temperature
        return picked - norm[row_of]


class HeadValue:
    """``out[id]``: a full value head's ``Q`` at the token."""

    def __call__(self, out: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return out.gather(1, ids.unsqueeze(1)).squeeze(1).double()


class HiddenValue:
    """``transform(hidden . W[id] + b[id])`` (kernel K2 with one candidate, then the model forward's transform of
    its head output): a value head applied at the token only. ``hidden [N, H]``, ``ids [N]`` -> float64 ``[N]``."""

    def __init__(self, head: LinearHead) -> None:
        self.head = head

    def __call__(self, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        if ids.numel() == 0:
            return torch.zeros(0, dtype=torch.float64, device=hidden.device)
        return self.head.scores(hidden, ids.unsqueeze(1).to(hidden.device))[:, 0].double()


class TokenTally:
    """Tracked token scores of models fed the base's ids: per slot a running sum and the last score per row.

    Args:
        source: ``source(runner)`` is the output of runner ``runner`` before the token being scored.
    """

    def __init__(self, source: Callable[[int], torch.Tensor]) -> None:
        self._source = source
        self._slots: list[tuple[int, TokenScoreFn]] = []
        self._total: list[torch.Tensor] = []
        self._last: list[torch.Tensor] = []

    def track(self, runner: int, fn: TokenScoreFn) -> int:
        """Keep ``fn``'s score of every token for runner ``runner`` from the next :meth:`start`; returns a slot."""
        self._slots.append((runner, fn))
        return len(self._slots) - 1

    def start(self, rows: int, device: torch.device) -> None:
        """Sums and last scores 0 for ``rows`` rows (at prefill)."""
        self._total = [torch.zeros(rows, dtype=torch.float64, device=device) for _ in self._slots]
        self._last = [torch.zeros(rows, dtype=torch.float64, device=device) for _ in self._slots]

    def score_tokens(self, tokens: torch.Tensor, alive: torch.Tensor) -> None:
        """Score ``tokens [R]`` from the sources' current outputs (rows not ``alive`` unchanged)."""
        for k, (runner, fn) in enumerate(self._slots):
            v = fn(self._source(runner), tokens)
            self._total[k] += torch.where(alive, v, 0.0)
            self._last[k] = torch.where(alive, v, self._last[k])

    def totals(self, slot: int) -> torch.Tensor:
        """float64 ``[R]``: the slot's sum since :meth:`start`."""
        return self._total[slot]

    def last_scores(self, slot: int) -> torch.Tensor:
        """float64 ``[R]``: the slot's score of each row's last token."""
        return self._last[slot]

    def reorder(self, index: torch.Tensor) -> None:
        """Row ``r`` becomes old row ``index[r]``."""
        self._total = [t.index_select(0, index) for t in self._total]
        self._last = [t.index_select(0, index) for t in self._last]
