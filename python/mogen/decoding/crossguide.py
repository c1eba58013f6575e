"""Guides that read the base model's text through their own tokenizer.

:class:`RetokenizingGroup` runs the models of every guide that uses one
tokenizer over a batch whose rows grow by different numbers of guide tokens
per step. All of them see the same ids, mask and positions, so they share one
bookkeeping:

- per row, an :class:`~mogen.decoding.retokenize.IncrementalDetokenizer` (base
  ids -> text) and a :class:`~mogen.decoding.retokenize.GuideTokenContext` (text
  -> guide ids, with retractions);
- one 2-D attention mask over all cache columns; a retracted position is
  masked (0) rather than cropped, since cropping a shared cache would cut
  every row; a row that feeds fewer ids than the widest one pads the step
  with masked columns;
- position ids count each row's live (unmasked) ids, so a row's positions are
  those of its text, whatever holes the cache has; sliding-window layers
  count their window in those positions too (:mod:`mogen.decoding.windows`),
  and models whose layers cannot skip a masked column (recurrent ones) are
  refused.

Each step costs one forward per distinct model for the whole batch (none at
all when no row has new text); a reference shared by several guides runs once.

Scoring (chunk search): :meth:`RetokenizingGroup.track` asks the group to keep,
per row and cache column, what a model gives the guide token fed there from
the output just before it (``log p(token | text before)``, or a value head's
``Q``). A retracted token's column is masked, so its contribution drops out of
:meth:`RetokenizingGroup.totals` with it, and the totals always equal scoring
the row's current guide ids from scratch. When a row retracts tokens the
group re-feeds the last kept id (the *anchor*) before the new ones, since the
output after it, which the first new token is scored from, is not kept.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from .models import LMRunner, RunnerRegistry, context_length
from .retokenize import NO_EDIT, GuideTokenContext, IncrementalDetokenizer, TextEdit, compose
from .tally import TokenScoreFn, score_columns

__all__ = ["RetokenizingGroup", "TokenScoreFn", "FIRST_ANCHOR"]

FIRST_ANCHOR = -1  # anchor value of a row whose first fed id is its first id (scored 0, as at prefill)


class RetokenizingGroup(RunnerRegistry):
    """The models of every guide that uses one tokenizer, over ``B`` rows.

    Guides sharing a tokenizer see the same text and hence the same ids, so
    they share the bookkeeping and each distinct model (an expert, or a
    reference shared by several guides) runs once per step.

    Args:
        tokenizer: the guides' tokenizer.
        base_tokenizer: the base model's tokenizer (to decode its new tokens).
        device: where :meth:`logits` returns its tensors (the fusion device).
        name: for error messages.
        max_lookbehind: see :class:`GuideTokenContext`.
    """

    def __init__(self, tokenizer: Any, base_tokenizer: Any, device: torch.device, name: str,
                 max_lookbehind: int = 32) -> None:
        self.tokenizer = tokenizer
        self.base_tokenizer = base_tokenizer
        self.device = device
        self.name = name
        self.max_lookbehind = max_lookbehind
        super().__init__()
        self.max_positions: Optional[int] = None
        pad = getattr(tokenizer, "pad_token_id", None)
        self._pad_id = int(pad) if pad is not None else 0
        self.detoks: list[IncrementalDetokenizer] = []
        self.contexts: list[GuideTokenContext] = []
        self._cols: list[list[int]] = []  # per row: cache column of each live id
        self._mask = torch.zeros(0, 0, dtype=torch.long)
        self._last: list[torch.Tensor] = []
        self._stale = torch.zeros(0, dtype=torch.bool)
        self._any_stale = False
        self.retracted = 0  # ids masked out after re-tokenization (statistics)
        self._trackers: list[tuple[int, TokenScoreFn]] = []  # (runner index, score fn) per slot
        self._contrib: list[torch.Tensor] = []  # per slot: float64 [B, columns], aligned with _mask

    @property
    def _anchored(self) -> bool:
        """Whether a retraction re-feeds the last kept id, so the first new id is scored in its context."""
        return bool(self._trackers)

    def _on_add(self, runner: LMRunner) -> None:
        runner.window_by_position()  # the cache has holes: sliding windows must count positions, not columns
        limit = context_length(runner.model)
        if limit is not None:
            self.max_positions = limit if self.max_positions is None else min(self.max_positions, limit)

    def prefill(self, prompt_ids: Sequence[Sequence[int]]) -> None:
        """Start every row from its prompt (base ids without padding)."""
        self.detoks = [IncrementalDetokenizer(self.base_tokenizer, ids) for ids in prompt_ids]
        self.contexts = [
            GuideTokenContext(self.tokenizer, d.prompt_text, max_lookbehind=self.max_lookbehind) for d in self.detoks
        ]
        rows = [c.ids for c in self.contexts]
        for b, ids in enumerate(rows):
            if not ids:
                raise ValueError(
                    f"{self.name}: the prompt of row {b} is empty in the guide's tokenizer, which adds no "
                    "start token; give every row a non-empty prompt"
                )
            self._check_length(b, len(ids))
        width = max(len(r) for r in rows)
        batch = len(rows)
        ids = torch.full((batch, width), self._pad_id, dtype=torch.long)
        mask = torch.zeros(batch, width, dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[b, width - len(r) :] = 1
        self._cols = [list(range(width - len(r), width)) for r in rows]
        self._mask = mask
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        stale = [d.pending for d in self.detoks]  # a prompt ending inside a character
        self._stale = torch.tensor(stale, dtype=torch.bool)
        self._any_stale = any(stale)
        self._last = []
        keep = width if self._trackers else 1
        outs = []
        for runner in self.runners:
            runner.reset()
            outs.append(runner.forward(ids, mask, positions, keep=keep).to(self.device))
            self._last.append(outs[-1][:, -1])
        self._contrib = [self._prompt_contributions(outs[k], fn, ids, mask) for k, fn in self._trackers]

    def _prompt_contributions(self, out: torch.Tensor, fn: TokenScoreFn, ids: torch.Tensor,
                              mask: torch.Tensor) -> torch.Tensor:
        """float64 ``[B, T]``: each prompt id scored from the output before it (0 for a row's first id)."""
        batch, width = ids.shape
        contrib = torch.zeros(batch, width, dtype=torch.float64, device=self.device)
        if width > 1:
            both = (mask[:, 1:] * mask[:, :-1]).bool()  # a real id after a real id: padding is never scored
            for b in range(batch):  # row by row: [T, V] at a time, not [B, T, V]
                rows = slice(b, b + 1)
                contrib[rows, 1:] = score_columns(fn, out[rows, :-1], ids[rows, 1:], both[rows])
        return contrib

    def track(self, runner_index: int, fn: TokenScoreFn) -> int:
        """Keep ``fn``'s score of every guide token of runner ``runner_index`` from now on; returns a slot.

        Call before :meth:`prefill`. See :meth:`totals` and :meth:`last_scores`.
        """
        self._trackers.append((runner_index, fn))
        return len(self._trackers) - 1

    def score_tokens(self, tokens: torch.Tensor, alive: torch.Tensor) -> None:
        """Nothing to do: this group scores each guide id as it is fed (the tracking interface of every group)."""

    def totals(self, slot: int) -> torch.Tensor:
        """float64 ``[B]``: the sum of the slot's scores over each row's live guide ids."""
        return (self._contrib[slot] * self._mask.to(self.device, torch.float64)).sum(dim=1)

    def last_scores(self, slot: int) -> torch.Tensor:
        """float64 ``[B]``: the slot's score of each row's last live guide id."""
        cols = torch.tensor([c[-1] for c in self._cols], dtype=torch.long, device=self.device)
        return self._contrib[slot].gather(1, cols.unsqueeze(1)).squeeze(1)

    def _check_length(self, row: int, n: int) -> None:
        if self.max_positions is not None and n > self.max_positions:
            raise ValueError(
                f"{self.name}: row {row} needs {n} guide tokens but the guide's context is "
                f"{self.max_positions}; shorten the prompt or max_new_tokens"
            )

    def push(self, tokens: Sequence[int], live: Sequence[bool]) -> None:
        """Append one base token per row (``live[b]`` False: row ``b`` is finished, skip it)."""
        self.push_many([[t] for t in tokens], [[x] for x in live])

    def push_many(self, tokens: Sequence[Sequence[int]], live: Sequence[Sequence[bool]]) -> None:
        """Append ``tokens[b]`` to row ``b`` (those with ``live[b][k]`` False are skipped): one forward in all.

        The guide then reads each row's new text at once (chunk search scores a chunk this way when no
        token-level guide output is needed in between).
        """
        batch = len(self.contexts)
        feeds: list[list[int]] = [[] for _ in range(batch)]
        anchors: list[Optional[int]] = [None] * batch  # cache column whose score the first fed id keeps
        stale = [False] * batch
        for b in range(batch):
            if not any(live[b]):
                continue
            edit = NO_EDIT
            for t, x in zip(tokens[b], live[b]):
                if x:
                    edit = compose(edit, self.detoks[b].push(t))
            if edit != NO_EDIT:
                feeds[b], anchors[b] = self._edit_row(b, edit)
            stale[b] = self.detoks[b].pending
        self._any_stale = any(stale)
        if self._any_stale:
            self._stale = torch.tensor(stale, dtype=torch.bool)
        if any(feeds):
            self._feed(feeds, anchors)

    def _padded(self, feeds: list[list[int]], width: int) -> torch.Tensor:
        """``feeds`` as ids ``[len(feeds), width]``, each row padded on the right with the pad id."""
        return torch.tensor([f + [self._pad_id] * (width - len(f)) for f in feeds], dtype=torch.long).view(-1, width)

    def _edit_row(self, b: int, edit: TextEdit) -> tuple[list[int], Optional[int]]:
        """Re-tokenize row ``b`` after ``edit``: mask retracted columns; return ``(ids to feed, anchor column)``."""
        masked: list[int] = []
        out = self._retract(b, *self.contexts[b].edit(*edit), masked)
        if masked:
            self._mask[b, masked] = 0
        return out

    def _retract(self, b: int, retract: int, feed: list[int], masked: list[int]) -> tuple[list[int], Optional[int]]:
        """Row ``b``'s part of an edit after its context's ``(retract, feed)``: drops its retracted columns, which
        it appends to ``masked`` (the caller masks them); returns ``(ids to feed, anchor column)``."""
        cols = self._cols[b]
        anchor = None
        if retract and self._anchored:
            if len(cols) > retract:
                # Scoring needs the output after the last kept id: feed that id again.
                anchor = cols[len(cols) - retract - 1]
                feed = [self.contexts[b].ids[len(cols) - retract - 1]] + feed
                retract += 1
            else:
                anchor = FIRST_ANCHOR  # every id retracted: the first new id has nothing before it
        for _ in range(retract):
            masked.append(cols.pop())
        self.retracted += retract
        return feed, anchor

    def _feed(self, feeds: list[list[int]], anchors: list[Optional[int]]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One forward per model over every row's new ids (rows without any pad the step with masked columns).

        Returns the ids fed ``[B, width]`` and per model its outputs: ``[B, width, D]``, or ``[B, 1 + width, D]``
        with the output before the first id in front when the group is anchored.
        """
        ids, new_mask, positions, last, fed = self._layout(feeds)
        batch, width = ids.shape
        rows = torch.arange(batch)
        everyone = bool(fed.all())
        keep_old = None if everyone else (~fed).to(self.device).unsqueeze(1)
        outs = []
        for k, runner in enumerate(self.runners):
            outs.append(runner.forward(ids, self._mask, positions, keep=width).to(self.device))
            if self._anchored:
                outs[-1] = torch.cat([self._last[k].unsqueeze(1), outs[-1]], dim=1)  # [B, 1 + width, D]
            new = outs[-1][rows, last + int(self._anchored)]
            self._last[k] = new if everyone else torch.where(keep_old, self._last[k], new)
        for slot, (k, fn) in enumerate(self._trackers):
            self._contrib[slot] = torch.cat([self._contrib[slot], self._scores(outs[k], fn, ids, new_mask, anchors,
                                                                               slot)], dim=1)
        return ids, outs

    def _layout(self, feeds: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                       torch.Tensor]:
        """Lay every row's new ids out in new cache columns (the mask and each row's columns grow).

        Returns ids ``[B, width]`` (padded), their mask, position ids, each row's last fed column ``[B]`` and
        which rows feed anything ``[B]``.
        """
        width = max(len(f) for f in feeds)
        start = self._mask.shape[1]
        for b, f in enumerate(feeds):
            if f:
                self._check_length(b, len(self._cols[b]) + len(f))
        live = torch.tensor([len(c) for c in self._cols], dtype=torch.long)
        for b, f in enumerate(feeds):
            if f:
                self._cols[b].extend(range(start, start + len(f)))
        lengths = torch.tensor([len(f) for f in feeds], dtype=torch.long)
        ids = self._padded(feeds, width)
        steps = torch.arange(width)
        new_mask = (steps < lengths.unsqueeze(1)).long()
        fed = lengths > 0
        positions = torch.where(fed.unsqueeze(1), live.unsqueeze(1) + steps, torch.zeros((), dtype=torch.long))
        last = torch.where(fed, lengths - 1, torch.zeros((), dtype=torch.long))
        self._mask = torch.cat([self._mask, new_mask], dim=1)
        return ids, new_mask, positions, last, fed

    def _scores(self, out: torch.Tensor, fn: TokenScoreFn, ids: torch.Tensor, new_mask: torch.Tensor,
                anchors: list[Optional[int]], slot: int) -> torch.Tensor:
        """float64 ``[B, width]``: each fed id scored from the output before it (``out [B, 1 + width, D]``).

        An anchor (an id fed again) keeps the score of its old column: the
        output before it was not kept, and its context has not changed.
        """
        needed = new_mask.bool()
        for b, col in enumerate(anchors):
            if col is not None:
                needed[b, 0] = False  # an anchor keeps its old score (below)
        flat = score_columns(fn, out[:, :-1], ids, needed)
        for b, col in enumerate(anchors):
            if col is not None:
                flat[b, 0] = 0.0 if col == FIRST_ANCHOR else self._contrib[slot][b, col]
        return flat

    def output(self, index: int) -> torch.Tensor:
        """Output of runner ``index`` after each row's latest guide token: logits ``[B, V_g]`` or hidden ``[B, H]``.

        Rows whose base text ends inside an incomplete character get zeros for
        every model, so their expert/reference log-ratio is exactly 0 this step
        (value terms use :meth:`stale_rows` to zero theirs).
        """
        last = self._last[index]
        if not self._any_stale:
            return last
        stale = self._stale.to(self.device).unsqueeze(1)
        return torch.where(stale, torch.zeros((), dtype=last.dtype, device=self.device), last)

    def stale_rows(self) -> Optional[torch.Tensor]:
        """Bool ``[B]``: rows whose text ends inside an incomplete character, or None when there is none."""
        return self._stale.to(self.device) if self._any_stale else None

    def reorder(self, index: torch.Tensor, room: Optional[int] = None) -> None:
        """Row ``b`` becomes old row ``index[b]``: text state, cache columns, mask, caches and last outputs.

        Rows may repeat (beam duplication): each copy gets its own text state. ``room``: see
        :meth:`~mogen.decoding.models.LMRunner.reorder`.
        """
        rows = index.tolist()
        self.detoks = [self.detoks[i].clone() for i in rows]
        self.contexts = [self.contexts[i].clone() for i in rows]
        self._cols = [list(self._cols[i]) for i in rows]
        cpu_index = index.cpu()
        self._mask = self._mask.index_select(0, cpu_index)
        if self._any_stale:  # otherwise _stale may hold an older step's flags
            self._stale = self._stale.index_select(0, cpu_index)
            self._any_stale = bool(self._stale.any())
        dev_index = index.to(self.device)
        self._last = [t.index_select(0, dev_index) for t in self._last]
        self._contrib = [t.index_select(0, dev_index) for t in self._contrib]
        for r in self.runners:
            r.reorder(index, room)
