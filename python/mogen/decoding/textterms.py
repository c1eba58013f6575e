"""Guide terms of ``cross_vocab="text"`` guides: scored at the step's candidates on the text they append.

For candidate ids ``ids [B, k]`` (the ``k`` best of the rest of the fused
score, :meth:`~mogen.decoding.terms.StepScores.candidates`):

- :class:`TextProxyTerm`: ``log p_e(A'[c:] | A'[:c]) - log p_r(A'[c:] | A'[:c])``, each
  ``log_softmax(z / t)`` in the guide's own tokenization
  (:mod:`mogen.decoding.textcandidates` defines ``A'`` and ``c``);
- :class:`TextValueTerm`: the value at the last guide id of ``A'``.

Every other token is out (``-inf``), as with a value guide's ``top_k``. A
candidate the group could not read as text (a special token, text ending
inside a character; for a value term, text that adds no guide id) gets the
vocabulary-map term instead: the guide's score of the mapped token after the
text read so far, 0 where the map has no entry or the row's text ends inside
a character. Chunk search's sequence scores are those of the map-mode terms
(each guide id scored as it is read), which these terms inherit.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from ..value_format import LinearHead, try_linear_head
from .terms import ProxyTerm, ValueTerm
from .tally import HeadValue, HiddenValue, LogProb

__all__ = ["TextProxyTerm", "TextValueTerm", "TEXT_KINDS"]


def _mapped_log_prob(logits: torch.Tensor, gids: torch.Tensor, temperature: float) -> torch.Tensor:
    """float64 ``[B, k]``: ``log_softmax(logits / t)`` at guide ids ``gids [B, k]`` (clamped; the caller masks
    unmapped ones)."""
    x = logits.double() / temperature
    return x.gather(1, gids.clamp(min=0)) - torch.logsumexp(x, dim=-1, keepdim=True)


class TextProxyTerm(ProxyTerm):
    """A proxy guide's log-ratio at the step's candidates, on the text each appends."""

    fused = False  # valued at candidates (K1 fuses full-vocabulary log-ratios only)

    def __init__(self, guide: Any, column: int, expert: tuple, reference: tuple, vmap: Optional[torch.Tensor],
                 temperature: float) -> None:
        super().__init__(guide, column, expert, reference, vmap, temperature)
        self.top_k = guide.top_k
        key = ("logp", temperature)
        self.slots = tuple(group.request(index, LogProb(temperature), "sum", key)
                           for group, index in (expert, reference))

    def _mapped(self, ids: torch.Tensor) -> torch.Tensor:
        """float64 ``[B, k]``: the vocabulary-map log-ratio at base ids ``ids`` (0 where unmapped)."""
        gids = self.vmap[ids].long()
        expert, reference = self.logits()
        ratio = (_mapped_log_prob(expert, gids, self.temperature)
                 - _mapped_log_prob(reference, gids, self.temperature))
        return ratio.masked_fill(gids < 0, 0.0)

    def at(self, ids: torch.Tensor) -> torch.Tensor:
        """float32 ``[B, k]``: the log-ratio of each candidate's text (the map's where it has none)."""
        group = self.expert[0]
        e, r = (group.candidate_scores(ids)[slot] for slot in self.slots)
        return torch.where(e.valid & r.valid, e.values - r.values, self._mapped(ids)).float()


class TextValueTerm(ValueTerm):
    """A value guide's ``Q`` at the last guide id of each candidate's text."""

    @classmethod
    def bind(cls, binder: Any, index: int, column: int, guide: Any, shared: bool) -> "TextValueTerm":
        name = f"guides[{index}].model"
        # the head at one id per candidate; a head that is not linear (up to forward's transform) runs in full
        head = try_linear_head(guide.model, name)
        run = binder.runner(guide.model, len(guide.tokenizer), name, guide, shared,
                            "logits" if head is None else "hidden")
        return cls(guide, column, run, binder.vmap(guide, shared), head)

    def __init__(self, guide: Any, column: int, runner: tuple, vmap: Optional[torch.Tensor],
                 head: Optional[LinearHead]) -> None:
        super().__init__(guide, column, runner, vmap, head)
        self.top_k = guide.top_k
        fn = HeadValue() if head is None else HiddenValue(head)
        group, index = runner
        self.slot = group.request(index, fn, "last", ("value",))

    def _mapped(self, ids: torch.Tensor) -> torch.Tensor:
        """float32 ``[B, k]``: ``Q`` of the mapped guide ids after the text read so far (0 where unmapped)."""
        group, index = self.runner
        out = group.output(index)
        gids = self.vmap[ids].long()
        if self.head is None:
            q = out.float().gather(1, gids.clamp(min=0))
        else:
            q = self.head.scores(out, gids.clamp(min=0))
        return self._stale_zeroed(q.masked_fill(gids < 0, 0.0))

    def at(self, ids: torch.Tensor) -> torch.Tensor:
        """float32 ``[B, k]``: the value of each candidate's text (the map's where it has none)."""
        group = self.runner[0]
        score = group.candidate_scores(ids)[self.slot]
        return torch.where(score.valid, score.values.float(), self._mapped(ids))


#: The term class of a ``cross_vocab="text"`` guide, by the term class of its kind.
TEXT_KINDS: dict[type, type] = {ProxyTerm: TextProxyTerm, ValueTerm: TextValueTerm}
