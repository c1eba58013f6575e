"""Layer 2 of decoding (docs/design.md section 2): guide terms and their fusion.

A guide term turns its runners' outputs into what the guide adds to the fused
score of docs/design.md section 1::

    s(v) = log_softmax(z_b / tau)(v) + beta * sum_i w_i term_i(v) + gamma * sum_j u_j Q_j(m_j(v))

- :class:`ProxyTerm`: expert and reference logits (kernel K1 fuses every proxy
  term with the base in one pass);
- :class:`ValueTerm`: a value head's ``Q``, over the whole vocabulary (full
  head) or at a few candidate ids from the backbone's hidden state (K2);
- any other kind registered with :func:`mogen.decoding.kinds.register_guide_kind`.

Each term gives its step contribution and its sequence contribution for
chunk search (:mod:`mogen.decoding.kinds`).

:class:`Fusion` combines the terms of one call; :meth:`Fusion.step` gives a
:class:`StepScores` from which a driver asks for the full row or the best
``k`` only. A driver never knows which kinds of terms it holds.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from .. import ops
from ..value_format import LinearHead, linear_head
from .guides import Guide, ProxyGuide, ValueGuide, logits_width
from .kinds import GuideTerm, register_guide_kind
from .tally import HeadValue, HiddenValue, LogProb

__all__ = ["ProxyTerm", "ValueTerm", "Fusion", "StepScores"]


def _gather_mapped(values: torch.Tensor, vmap: Optional[torch.Tensor]) -> torch.Tensor:
    """``values[b, m(v)]`` over base ids ``v`` (0 where ``m(v) = -1``); ``values`` itself without a map."""
    if vmap is None:
        return values
    idx = vmap.long().clamp(min=0)
    out = values.index_select(1, idx)
    return out.masked_fill((vmap < 0).unsqueeze(0), 0.0)


class ProxyTerm(GuideTerm):
    """``log p_e(m(v)) - log p_r(m(v))`` of one :class:`~mogen.ProxyGuide` (fused with the others by kernel K1)."""

    scale = "beta"
    fused = True

    def __init__(self, guide: Guide, column: int, expert: tuple, reference: tuple, vmap: Optional[torch.Tensor],
                 temperature: float) -> None:
        super().__init__(guide, column)
        self.expert, self.reference = expert, reference  # RunnerRef
        self.vmap = vmap  # int32 [V_b] or None
        self.temperature = temperature

    @classmethod
    def bind(cls, binder: Any, index: int, column: int, guide: Any, shared: bool) -> "ProxyTerm":
        need = binder.need(guide, shared)
        for role, model in (("expert", guide.expert), ("reference", guide.reference)):
            if shared:
                binder.check_width(model, need, f"guides[{index}].{role}", "a vocabulary")
            elif logits_width(model) < need:
                raise ValueError(f"guides[{index}].{role} has a vocabulary of {logits_width(model)} but its "
                                 f"tokenizer has {need} tokens")
        e = binder.runner(guide.expert, need, f"guides[{index}].expert", guide, shared)
        r = binder.runner(guide.reference, need, f"guides[{index}].reference", guide, shared)
        return cls(guide, column, e, r, binder.vmap(guide, shared), guide.temperature)

    def logits(self) -> tuple[torch.Tensor, torch.Tensor]:
        (ge, e), (gr, r) = self.expert, self.reference
        return ge.output(e), gr.output(r)

    def full(self) -> torch.Tensor:
        """The log-ratio alone, float32 ``[B, V_b]`` (decoding fuses every proxy term in K1 instead)."""
        expert, reference = (torch.log_softmax(x.float() / self.temperature, dim=-1) for x in self.logits())
        return _gather_mapped(expert - reference, self.vmap)

    def track(self, tracking: Any) -> tuple:
        key = ("logp", self.temperature)
        return (tracking.add(self.expert, key, LogProb(self.temperature)),
                tracking.add(self.reference, key, LogProb(self.temperature)))

    def sequence(self, tracking: Any, handles: tuple) -> torch.Tensor:
        """``log pi_e(y|x) - log pi_r(y|x)``."""
        e, r = handles
        return tracking.sum(e) - tracking.sum(r)


class ValueTerm(GuideTerm):
    """``Q(m(v))`` of one :class:`~mogen.ValueGuide`; 0 where ``m(v) = -1`` or the guide lags a character."""

    scale = "gamma"

    def __init__(self, guide: Guide, column: int, runner: tuple, vmap: Optional[torch.Tensor],
                 head: Optional[LinearHead]) -> None:
        super().__init__(guide, column)
        self.runner = runner  # RunnerRef: logits [B, V_j] (full head) or hidden [B, H] (top-k)
        self.vmap = vmap
        self.head = head  # the head (weight [V_j, H], bias, forward's transform) in top-k mode
        self.top_k = None if head is None else guide.top_k

    @classmethod
    def runs(cls, guide: Any, *, beta: float, gamma: float) -> bool:
        return gamma != 0.0

    @classmethod
    def bind(cls, binder: Any, index: int, column: int, guide: Any, shared: bool) -> "ValueTerm":
        need = binder.need(guide, shared)
        name = f"guides[{index}].model"
        if shared:  # own tokenizers were checked by ValueGuide itself
            binder.check_width(guide.model, need, name, "a value head")
        head = None
        if guide.top_k is not None and getattr(guide, "cross_vocab", "map") == "map":  # "text": shared, so exact
            head = linear_head(guide.model, name)
        run = binder.runner(guide.model, need, name, guide, shared, "logits" if head is None else "hidden")
        return cls(guide, column, run, binder.vmap(guide, shared), head)

    def _stale_zeroed(self, q: torch.Tensor) -> torch.Tensor:
        stale = self.runner[0].stale_rows()
        return q if stale is None else q.masked_fill(stale.unsqueeze(1), 0.0)

    def full(self) -> torch.Tensor:
        """``Q`` over the base vocabulary, float32 ``[B, V_b]``."""
        group, index = self.runner
        return self._stale_zeroed(_gather_mapped(group.output(index).float(), self.vmap))

    def at(self, ids: torch.Tensor) -> torch.Tensor:
        """``Q`` at base ids ``ids [B, k]``, float32 ``[B, k]`` (kernel K2, then forward's transform)."""
        group, index = self.runner
        hidden = group.output(index)
        if self.vmap is None:
            return self._stale_zeroed(self.head.scores(hidden, ids))
        gids = self.vmap[ids].long()
        unmapped = gids < 0
        q = self.head.scores(hidden, gids.clamp(min=0))
        return self._stale_zeroed(q.masked_fill(unmapped, 0.0))

    def track(self, tracking: Any) -> Any:
        return tracking.add(self.runner, ("value",), HeadValue() if self.head is None else HiddenValue(self.head))

    def sequence(self, tracking: Any, handle: Any) -> torch.Tensor:
        """``Q(x, y)``: the head's output before the last id, at that id."""
        return tracking.last(handle)


register_guide_kind(ProxyGuide, ProxyTerm)
register_guide_kind(ValueGuide, ValueTerm)


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
        terms: the active terms (any registered kinds).
        weights: float32 ``[B, M]`` or ``[M]`` over the active guides, on the fusion device.
        beta, gamma: the scales a term's ``scale`` names.
        value_top_k: the candidate count of the top-k terms (they share one).
    """

    def __init__(self, terms: list[GuideTerm], weights: torch.Tensor, *, beta: float, gamma: float,
                 value_top_k: Optional[int]) -> None:
        self.terms = sorted(terms, key=lambda t: t.column)
        self.proxies = [t for t in self.terms if t.fused]
        self.full_terms = [t for t in self.terms if not t.fused and t.top_k is None]
        self.topk_terms = [t for t in self.terms if not t.fused and t.top_k is not None]
        self.value_top_k = value_top_k
        self.beta, self.gamma = beta, gamma
        self.weights = weights
        # One tensor object per call for K1's weights, so mogen.ops checks it once.
        cols = [t.column for t in self.proxies]
        self.proxy_weights = weights[..., cols].contiguous() if self.proxies else None
        self.proxy_maps = None if all(t.vmap is None for t in self.proxies) else [t.vmap for t in self.proxies]
        self.temperatures = [t.temperature for t in self.proxies]

    @property
    def empty(self) -> bool:
        return not self.terms

    def reorder(self, index: torch.Tensor) -> None:
        """Per-row weights follow their rows when a driver reorders them (beam selection)."""
        if self.weights.dim() == 2:
            self.weights = self.weights.index_select(0, index.to(self.weights.device))
            if self.proxy_weights is not None:
                self.proxy_weights = self.weights[:, [t.column for t in self.proxies]].contiguous()

    def scale(self, term: GuideTerm) -> float:
        """``beta`` or ``gamma``, as the term's kind says."""
        return self.beta if term.scale == "beta" else self.gamma

    def coef(self, term: GuideTerm) -> torch.Tensor:
        """``scale * w`` of one term as ``[B, 1]`` (or ``[1]``), float32."""
        return self.scale(term) * self.weights[..., term.column : term.column + 1]


    def sequence_coefficients(self, rows: int, device: torch.device) -> torch.Tensor:
        """float64 ``[R, A]``: ``scale * w`` per row and active guide (chunk search's sequence score)."""
        w = self.weights.to(device, torch.float64)
        w = w.unsqueeze(0).expand(rows, -1) if w.dim() == 1 else w
        scale = torch.ones(w.shape[1], dtype=torch.float64, device=device)
        for t in self.terms:
            scale[t.column] = self.scale(t)
        return (w * scale).contiguous()

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
            for t in self.f.full_terms:
                rest = rest + self.f.coef(t) * t.full()
            self._rest = rest
        return self._rest

    def _rest_topk(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.f
        if f.full_terms:
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
            if f.proxies or f.full_terms:
                values, ids = self._rest_topk(k)
            else:  # Q adds to log-probabilities, not to raw logits
                values, ids = torch.topk(self._rest_full(), k, dim=-1)
            for t in f.topk_terms:
                values = values + f.coef(t) * t.at(ids)
            ids, by_id = torch.sort(ids, dim=1)
            values = values.gather(1, by_id)
            values, by_value = torch.sort(values, dim=1, descending=True, stable=True)
            self._cand = (values, ids.gather(1, by_value))
        return self._cand

    def full(self) -> torch.Tensor:
        """The fused scores ``[B, V_b]`` float32 (``-inf`` outside the candidates in top-k value mode)."""
        if not self.f.topk_terms:
            return self._rest_full()
        values, ids = self.candidates()
        out = torch.full((self.base.shape[0], self.base.shape[1]), float("-inf"), device=values.device)
        return out.scatter_(1, ids, values)

    def topk(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` best ``(values, ids)``, best first, lower id first on ties (fewer in top-k value mode)."""
        if not self.f.topk_terms:
            return self._rest_topk(k)
        values, ids = self.candidates()
        return values[:, :k], ids[:, :k]
