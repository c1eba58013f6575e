"""Layer 1 of decoding (docs/design.md section 2): runners, the models fed step by step.

Every model of a decoding call is an :class:`~mogen.decoding.models.LMRunner`
(one KV cache) in a *group* that says what it reads:

- :class:`LockstepGroup`: the base's token ids as they are (guides that share
  the base's tokenizer);
- :class:`~mogen.decoding.crossguide.RetokenizingGroup`: the generated text
  through one other tokenizer (look-behind re-tokenization).

:class:`RunnerSet` holds all groups of one call, so a driver (``generate``,
the logits processor, chunk search) feeds, reorders and resets them without
knowing which guides they serve. Every group can reorder and duplicate its rows
by index (beam selection), which costs a cache gather, never a new prefill.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import torch

from .crossguide import RetokenizingGroup
from .textcandidates import CandidateGroup
from .guides import shares_tokenizer
from .models import LMRunner, RunnerRegistry
from .tally import TokenScoreFn, TokenTally

__all__ = ["LockstepGroup", "RunnerSet", "RunnerRef"]


class LockstepGroup(RunnerRegistry):
    """Models that read the base's token ids as they are.

    Tracking (chunk search), the interface every group offers: :meth:`track` a token score of a runner
    before the prefill, :meth:`score_tokens` with each row's next token before it is fed, then
    :meth:`totals` and :meth:`last_scores`.
    """

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = device
        self._last: list[torch.Tensor] = []
        self._tally = TokenTally(self.output)

    def reset(self) -> None:
        for r in self.runners:
            r.reset()
        self._last = []

    def feed(self, ids: torch.Tensor, mask: Optional[torch.Tensor], positions: torch.Tensor) -> None:
        """Run every model once on ``ids [B, n]`` and keep its last output ``[B, D]``."""
        self._last = [r.forward(ids, mask, positions)[:, -1].to(self.device) for r in self.runners]

    def prefill(self, ids: torch.Tensor, mask: Optional[torch.Tensor], positions: torch.Tensor) -> None:
        """Start from the prompt ``ids [B, T]``: caches reset, tracked sums 0."""
        self.reset()
        self.feed(ids, mask, positions)
        self._tally.start(ids.shape[0], self.device)

    def track(self, runner_index: int, fn: TokenScoreFn) -> int:
        """Keep ``fn``'s score of every token of runner ``runner_index`` from the next prefill; returns a slot."""
        return self._tally.track(runner_index, fn)

    def score_tokens(self, tokens: torch.Tensor, alive: torch.Tensor) -> None:
        """Score ``tokens [B]`` from the outputs before them (call before feeding them)."""
        self._tally.score_tokens(tokens, alive)

    def totals(self, slot: int) -> torch.Tensor:
        """float64 ``[B]``: the slot's sum over the tokens since the prefill."""
        return self._tally.totals(slot)

    def last_scores(self, slot: int) -> torch.Tensor:
        """float64 ``[B]``: the slot's score of each row's last token."""
        return self._tally.last_scores(slot)

    def output(self, index: int) -> torch.Tensor:
        """The last output of runner ``index``: logits ``[B, V]`` or a hidden state ``[B, H]``."""
        return self._last[index]

    def stale_rows(self) -> Optional[torch.Tensor]:
        """Rows whose guide has not seen the latest text (never, in lockstep)."""
        return None

    def reorder(self, index: torch.Tensor) -> None:
        """Row ``b`` becomes old row ``index[b]`` (caches and last outputs)."""
        for r in self.runners:
            r.reorder(index)
        dev_index = index.to(self.device)
        self._last = [t.index_select(0, dev_index) for t in self._last]
        self._tally.reorder(dev_index)


Group = Union[LockstepGroup, RetokenizingGroup]
RunnerRef = tuple[Any, int]  # (group, runner index): where a guide term reads its model's output


class RunnerSet:
    """Every guide model of one decoding call, grouped by what it reads.

    Args:
        device: where outputs are returned (the fusion device).
        base_tokenizer: the base's tokenizer (None: every guide must read the base's ids).
    """

    def __init__(self, device: torch.device, base_tokenizer: Any = None) -> None:
        self.device = device
        self.base_tokenizer = base_tokenizer
        self.lockstep = LockstepGroup(device)
        self.cross: list[RetokenizingGroup] = []

    def add(self, runner: LMRunner, tokenizer: Any = None, name: str = "", *, candidates: bool = False) -> RunnerRef:
        """Register a runner reading the base's ids (``tokenizer`` None or the base's) or text through ``tokenizer``
        (``candidates``: also each step's candidates, :class:`~mogen.decoding.textcandidates.CandidateGroup`)."""
        if shares_tokenizer(self.base_tokenizer, tokenizer):
            group: Any = self.lockstep
        else:
            kind = CandidateGroup if candidates else RetokenizingGroup
            # Identical tokenizers (e.g. loaded once per guide folder) share a group.
            group = next((c for c in self.cross if type(c) is kind and shares_tokenizer(c.tokenizer, tokenizer)), None)
            if group is None:
                group = kind(tokenizer, self.base_tokenizer, self.device, name)
                self.cross.append(group)
        return group, group.add(runner)

    @property
    def groups(self) -> list[Group]:
        return ([self.lockstep] if self.lockstep.runners else []) + list(self.cross)

    @property
    def empty(self) -> bool:
        return not self.groups

    def prefill(self, ids: torch.Tensor, mask: Optional[torch.Tensor], positions: torch.Tensor,
                prompt_mask: torch.Tensor) -> None:
        """Start every group from the prompt ``ids [B, T]`` (left padded; ``prompt_mask [B, T]``)."""
        if self.lockstep.runners:
            self.lockstep.prefill(ids, mask, positions)
        if self.cross:
            rows = [row[m.bool()].tolist() for row, m in zip(ids.cpu(), prompt_mask.cpu())]
            for g in self.cross:
                g.prefill(rows)

    def step(self, tokens: torch.Tensor, mask: Optional[torch.Tensor], positions: torch.Tensor,
             unfinished: Optional[torch.Tensor] = None, *, lockstep: bool = True, text: bool = True) -> None:
        """Append one base token per row (``tokens [B]``); rows not ``unfinished`` are skipped by text readers.

        ``lockstep=False`` / ``text=False`` leave out the models reading the base's ids / the text (chunk
        search: nothing is chosen after a chunk's last token; text readers may take a chunk at once,
        :meth:`push_text`).
        """
        if self.lockstep.runners and lockstep:
            self.lockstep.feed(tokens.unsqueeze(1), mask, positions)
        if self.cross and text:
            host_tokens = tokens.tolist()
            live = [True] * len(host_tokens) if unfinished is None else unfinished.tolist()
            for g in self.cross:
                g.push(host_tokens, live)

    def push_text(self, tokens: torch.Tensor, live: torch.Tensor) -> None:
        """Text readers take ``tokens [B, n]`` at once (entries with ``live [B, n]`` False skipped)."""
        if self.cross:
            host_tokens, host_live = tokens.tolist(), live.tolist()
            for g in self.cross:
                g.push_many(host_tokens, host_live)

    def reorder(self, index: torch.Tensor) -> None:
        """Row ``b`` of every group becomes old row ``index[b]`` (``index`` int64 ``[B']``)."""
        for g in self.groups:
            g.reorder(index)
