"""Layer 2 of decoding (docs/design.md section 2): guide terms and their fusion.

A guide term turns its runners' outputs into what the guide adds to the fused
score of docs/design.md section 1::

    s(v) = log_softmax(z_b / tau)(v) + beta * sum_i w_i term_i(v) + gamma * sum_j u_j Q_j(m_j(v))

- :class:`ProxyTerm`: expert and reference logits (kernel K1 fuses every proxy
  term with the base in one pass);
- :class:`ValueTerm`: a value head's ``Q``, over the whole vocabulary (full
  head) or at a few candidate ids from the backbone's hidden state (K2).

:class:`Fusion` combines the terms of one call; :meth:`Fusion.step` gives a
:class:`StepScores` from which a driver asks for the full row or the best
``k`` only. A driver never knows which kinds of terms it holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .. import ops
from .guides import Guide

__all__ = ["ProxyTerm", "ValueTerm", "Fusion", "StepScores"]


def _gather_mapped(values: torch.Tensor, vmap: Optional[torch.Tensor]) -> torch.Tensor:
    """``values[b, m(v)]`` over base ids ``v`` (0 where ``m(v) = -1``); ``values`` itself without a map."""
    if vmap is None:
        return values
    idx = vmap.long().clamp(min=0)
    out = values.index_select(1, idx)
    return out.masked_fill((vmap < 0).unsqueeze(0), 0.0)


@dataclass
class ProxyTerm:
    """``log p_e(m(v)) - log p_r(m(v))`` of one :class:`~mogen.ProxyGuide`."""

    guide: Guide
    column: int  # the guide's column in the call's weights
    expert: tuple  # RunnerRef
    reference: tuple
    vmap: Optional[torch.Tensor]  # int32 [V_b] or None
    temperature: float

    def logits(self) -> tuple[torch.Tensor, torch.Tensor]:
        (ge, e), (gr, r) = self.expert, self.reference
        return ge.output(e), gr.output(r)


@dataclass
class ValueTerm:
    """``Q(m(v))`` of one :class:`~mogen.ValueGuide`; 0 where ``m(v) = -1`` or the guide lags a character."""

    guide: Guide
    column: int
    runner: tuple  # RunnerRef: logits [B, V_j] (full head) or hidden [B, H] (top-k)
    vmap: Optional[torch.Tensor]
    head: Optional[tuple]  # (weight [V_j, H], bias [V_j] or None) in top-k mode

    def _stale_zeroed(self, q: torch.Tensor) -> torch.Tensor:
        stale = self.runner[0].stale_rows()
        return q if stale is None else q.masked_fill(stale.unsqueeze(1), 0.0)

    def full(self) -> torch.Tensor:
        """``Q`` over the base vocabulary, float32 ``[B, V_b]``."""
        group, index = self.runner
        return self._stale_zeroed(_gather_mapped(group.output(index).float(), self.vmap))

    def at(self, ids: torch.Tensor) -> torch.Tensor:
        """``Q`` at base ids ``ids [B, k]``, float32 ``[B, k]`` (kernel K2)."""
        group, index = self.runner
        hidden = group.output(index)
        weight, bias = self.head
        if self.vmap is None:
            return self._stale_zeroed(ops.topk_value_scores(hidden, weight, ids, bias))
        gids = self.vmap[ids].long()
        unmapped = gids < 0
        q = ops.topk_value_scores(hidden, weight, gids.clamp(min=0), bias)
        return self._stale_zeroed(q.masked_fill(unmapped, 0.0))


def _stable_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best of ``scores [B, V]``, best first, equal scores lower id first."""
    if k == 1:  # argmax returns the first (lowest) id of the maximum
        ids = torch.argmax(scores, dim=-1, keepdim=True)
        return scores.gather(1, ids), ids
    values, ids = torch.sort(scores, dim=-1, descending=True, stable=True)
    return values[:, :k], ids[:, :k]


class Fusion:
    """The guide terms of one decoding call, with their weights.

    Args:
        proxies, values: the active terms.
        weights: float32 ``[B, M]`` or ``[M]`` over the active guides, on the fusion device.
        beta, gamma: scales of the proxy and the value terms.
        value_top_k: the candidate count of the top-k value terms (they share one).
    """

    def __init__(self, proxies: list[ProxyTerm], values: list[ValueTerm], weights: torch.Tensor, *,
                 beta: float, gamma: float, value_top_k: Optional[int]) -> None:
        self.proxies = proxies
        self.full_values = [t for t in values if t.head is None]
        self.topk_values = [t for t in values if t.head is not None]
        self.value_top_k = value_top_k
        self.beta, self.gamma = beta, gamma
        self.weights = weights
        # One tensor object per call for K1's weights, so mogen.ops checks it once.
        cols = [t.column for t in proxies]
        self.proxy_weights = weights[..., cols].contiguous() if proxies else None
        self.proxy_maps = None if all(t.vmap is None for t in proxies) else [t.vmap for t in proxies]
        self.temperatures = [t.temperature for t in proxies]

    @property
    def empty(self) -> bool:
        return not (self.proxies or self.full_values or self.topk_values)

    def reorder(self, index: torch.Tensor) -> None:
        """Per-row weights follow their rows when a driver reorders them (beam selection)."""
        if self.weights.dim() == 2:
            self.weights = self.weights.index_select(0, index.to(self.weights.device))
            if self.proxy_weights is not None:
                self.proxy_weights = self.weights[:, [t.column for t in self.proxies]].contiguous()

    def value_coef(self, term: ValueTerm) -> torch.Tensor:
        """``gamma * u_j`` as ``[B, 1]`` (or ``[1]``)."""
        return self.gamma * self.weights[..., term.column : term.column + 1]

    def step(self, base_logits: torch.Tensor) -> "StepScores":
        return StepScores(self, base_logits)


class StepScores:
    """The fused scores of one step; computes only what the driver asks for."""

    def __init__(self, fusion: Fusion, base_logits: torch.Tensor) -> None:
        self.f = fusion
        self.base = base_logits
        self._rest: Optional[torch.Tensor] = None
        self._cand: Optional[tuple[torch.Tensor, torch.Tensor]] = None

    def _k1_args(self) -> tuple:
        f = self.f
        experts, refs = zip(*(t.logits() for t in f.proxies))
        kwargs = dict(vocab_maps=f.proxy_maps, beta=f.beta, temperatures=f.temperatures)
        return (self.base, list(experts), list(refs), f.proxy_weights), kwargs

    def _rest_full(self) -> torch.Tensor:
        """Everything but the top-k value terms, float32 ``[B, V_b]``."""
        if self._rest is None:
            if self.f.proxies:
                args, kwargs = self._k1_args()
                rest = ops.fused_log_ratio(*args, **kwargs)
            else:
                rest = torch.log_softmax(self.base.float(), dim=-1)
            for t in self.f.full_values:
                rest = rest + self.f.value_coef(t) * t.full()
            self._rest = rest
        return self._rest

    def _rest_topk(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.f
        if f.full_values:
            return _stable_topk(self._rest_full(), k)
        if f.proxies:
            args, kwargs = self._k1_args()
            return ops.fused_log_ratio_topk(*args, k, **kwargs)
        if k == 1:  # argmax keeps transformers' tie-breaking (first index)
            ids = torch.argmax(self.base, dim=-1, keepdim=True)
            return self.base.gather(1, ids).float(), ids
        return torch.topk(self.base.float(), k, dim=-1)

    def candidates(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k value mode: the candidates' fused scores and ids ``[B, k]``, best first, lower id first on ties."""
        if self._cand is None:
            f = self.f
            k = min(f.value_top_k, self.base.shape[1])
            if f.proxies or f.full_values:
                values, ids = self._rest_topk(k)
            else:  # Q adds to log-probabilities, not to raw logits
                values, ids = torch.topk(self._rest_full(), k, dim=-1)
            for t in f.topk_values:
                values = values + f.value_coef(t) * t.at(ids)
            ids, by_id = torch.sort(ids, dim=1)
            values = values.gather(1, by_id)
            values, by_value = torch.sort(values, dim=1, descending=True, stable=True)
            self._cand = (values, ids.gather(1, by_value))
        return self._cand

    def full(self) -> torch.Tensor:
        """The fused scores ``[B, V_b]`` float32 (``-inf`` outside the candidates in top-k value mode)."""
        if not self.f.topk_values:
            return self._rest_full()
        values, ids = self.candidates()
        out = torch.full((self.base.shape[0], self.base.shape[1]), float("-inf"), device=values.device)
        return out.scatter_(1, ids, values)

    def topk(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` best ``(values, ids)``, best first, lower id first on ties (fewer in top-k value mode)."""
        if not self.f.topk_values:
            return self._rest_topk(k)
        values, ids = self.candidates()
        return values[:, :k], ids[:, :k]
