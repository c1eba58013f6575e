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
  those of its text, whatever holes the cache has.

Each step costs one forward per distinct model for the whole batch (none at
all when no row has new text); a reference shared by several guides runs once.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from .models import LMRunner, RunnerRegistry, context_length
from .retokenize import GuideTokenContext, IncrementalDetokenizer

__all__ = ["RetokenizingGroup"]


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

    def _on_add(self, runner: LMRunner) -> None:
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
        for runner in self.runners:
            runner.reset()
            self._last.append(runner.forward(ids, mask, positions, keep=1)[:, -1].to(self.device))

    def _check_length(self, row: int, n: int) -> None:
        if self.max_positions is not None and n > self.max_positions:
            raise ValueError(
                f"{self.name}: row {row} needs {n} guide tokens but the guide's context is "
                f"{self.max_positions}; shorten the prompt or max_new_tokens"
            )

    def push(self, tokens: Sequence[int], live: Sequence[bool]) -> None:
        """Append one base token per row (``live[b]`` False: row ``b`` is finished, skip it)."""
        batch = len(self.contexts)
        feeds: list[list[int]] = [[] for _ in range(batch)]
        stale = [False] * batch
        for b in range(batch):
            if not live[b]:
                continue
            delta = self.detoks[b].push(tokens[b])
            if delta:
                retract, feed = self.contexts[b].extend(delta)
                cols = self._cols[b]
                for _ in range(retract):
                    self._mask[b, cols.pop()] = 0
                self.retracted += retract
                feeds[b] = feed
            stale[b] = self.detoks[b].pending
        self._any_stale = any(stale)
        if self._any_stale:
            self._stale = torch.tensor(stale, dtype=torch.bool)
        width = max(len(f) for f in feeds)
        if width == 0:
            return
        start = self._mask.shape[1]
        ids = torch.full((batch, width), self._pad_id, dtype=torch.long)
        new_mask = torch.zeros(batch, width, dtype=torch.long)
        positions = torch.zeros(batch, width, dtype=torch.long)
        last = torch.zeros(batch, dtype=torch.long)
        fed = torch.zeros(batch, dtype=torch.bool)
        for b, f in enumerate(feeds):
            if not f:
                continue
            n, live_count = len(f), len(self._cols[b])
            self._check_length(b, live_count + n)
            ids[b, :n] = torch.tensor(f, dtype=torch.long)
            new_mask[b, :n] = 1
            positions[b, :] = torch.arange(live_count, live_count + width)
            self._cols[b].extend(range(start, start + n))
            last[b] = n - 1
            fed[b] = True
        self._mask = torch.cat([self._mask, new_mask], dim=1)
        rows = torch.arange(batch)
        everyone = bool(fed.all())
        keep_old = None if everyone else (~fed).to(self.device).unsqueeze(1)
        for k, runner in enumerate(self.runners):
            new = runner.forward(ids, self._mask, positions, keep=width)[rows, last].to(self.device)
            self._last[k] = new if everyone else torch.where(keep_old, self._last[k], new)

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

    def reorder(self, index: torch.Tensor) -> None:
        """Row ``b`` becomes old row ``index[b]``: text state, cache columns, mask, caches and last outputs.

        Rows may repeat (beam duplication): each copy gets its own text state.
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
        for r in self.runners:
            r.reorder(index)
