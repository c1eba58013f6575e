"""Text-level candidate scoring: a guide's opinion on each base candidate, in the guide's own tokenization.

A guide with ``cross_vocab="text"`` scores the base's ``k`` best candidates of a
step (the rest of the fused score decides which; docs/design.md section 1) by
the text each one appends. For row ``b`` with guide ids ``A`` (the encoding of
the text read so far) and candidate ``v``, let ``A'`` be the encoding of that
text with ``v``'s text appended, as the look-behind re-tokenizer produces it
(:class:`~mogen.decoding.retokenize.GuideTokenContext`), and ``c`` the length of
the longest common prefix of ``A`` and ``A'``: ids ``A[c:]`` are retracted and
``A'[c:]`` are new. Then

- a proxy model's score is ``log p(A'[c:] | A'[:c]) = sum_{i >= c} log p(A'[i] | A'[:i])``
  (an id with nothing before it, at the start of a guide without a start token,
  scores 0, as at prefill);
- a value model's score is the head's output before ``A'[-1]`` at ``A'[-1]``
  (:class:`~mogen.decoding.tally.HeadValue` / ``HiddenValue``: the value of the
  state reached).

How (:class:`CandidateGroup`, one per guide tokenizer):

- *fork*: each row's cache, text state and mask are copied ``k`` times (a row
  gather, as beam selection does: the prompt is never run again); copy
  ``(b, j)`` reads candidate ``ids[b, j]`` exactly as the group reads a chosen
  token (:meth:`~mogen.decoding.crossguide.RetokenizingGroup.push_many`), and a
  retraction re-feeds the last kept id (the *anchor*) so ``A'[c]`` is scored
  from the output after ``A'[c - 1]``;
- one forward per model scores all ``B * k`` copies at once, on hidden
  states, with the head only where a score needs it
  (:mod:`mogen.decoding.textfork`); where padding every copy to the longest
  feed would cost more, it feeds each copy's first id and the few copies with
  more ids go on in small sub-forwards of their own (:meth:`CandidateGroup._fork_feed`);
- *commit*: the token chosen for row ``b`` selects its copy, whose cache
  already holds the new ids: the step costs no second forward. A row whose
  token was not a scored candidate (eos forced by a processor, a finished row),
  or whose copy went on in a sub-forward, gets its state from before the fork
  and reads the token normally.

A candidate without text of its own (a special token), or whose text ends
inside a multi-byte character, is not forked: its term falls back to the
vocabulary map (:mod:`mogen.decoding.textterms`), as does a value term whose
candidate adds no guide id. :attr:`CandidateGroup.counts` keeps how often each
case happened.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from .crossguide import FIRST_ANCHOR, RetokenizingGroup
from .detokenize import token_kinds
from .tally import TokenScoreFn, score_columns
from .textbatch import read_texts
from .textfork import ForkOutputs, fork_score, head_of

__all__ = ["CandidateGroup", "CandidateScores"]

HOW = ("sum", "last")
#: What a sub-forward of a fork costs beyond its ids, in ids of the main forward: a forward reads every weight
#: whatever its rows, and its copy may be read again (about 15 ids' compute for a 0.5B model on 2 CPU cores,
#: doubled for the re-read). A fork splits off its longer copies only when that saves more than this.
SPLIT_COST = 32
FORK_ROOM = 8  # spare cache positions of a fork's copies (a step feeds few ids; more re-buffer, still exact)


@dataclass
class CandidateScores:
    """One request's scores of a step's candidates: ``values`` float64 ``[B, k]`` and ``valid`` bool ``[B, k]``
    (False: no text-level score, the term falls back to the vocabulary map)."""

    values: torch.Tensor
    valid: torch.Tensor


@dataclass
class _Fork:
    """A step's forked state: the candidates ``ids [B, k]`` (CPU), which copies read theirs (``read``), the
    retractions of each copy, the scores, and the group's state before the fork (restored for rows whose
    token was not a read candidate)."""

    ids: torch.Tensor
    read: list[bool]
    retracted: list[int]
    scores: list[CandidateScores]
    before: dict[str, Any]
    outs: Optional[list[ForkOutputs]] = None  # on hidden states (mogen.decoding.textfork): rows' _last not forked
    whole: Optional[list[bool]] = None  # copies whose cache holds all their ids (None: all); only those are taken


class CandidateGroup(RetokenizingGroup):
    """A :class:`~mogen.decoding.crossguide.RetokenizingGroup` that also scores each step's candidates.

    Register what to score with :meth:`request` before the prefill; :meth:`candidate_scores` forks and scores,
    :meth:`push_many` commits the chosen tokens. Between the two, :meth:`output` and :meth:`stale_rows`
    still describe the rows before the fork (the vocabulary-map fallback reads them).
    """

    _STATE = ("detoks", "contexts", "_cols", "_mask", "_stale", "_any_stale", "_last", "_contrib", "retracted")

    def __init__(self, tokenizer: Any, base_tokenizer: Any, device: torch.device, name: str,
                 max_lookbehind: int = 32) -> None:
        super().__init__(tokenizer, base_tokenizer, device, name, max_lookbehind)
        self._requests: list[tuple[int, TokenScoreFn, str]] = []
        self._request_keys: dict[tuple, int] = {}
        self._fork: Optional[_Fork] = None
        self._special = token_kinds(base_tokenizer).textless
        self._heads: Optional[list] = None  # per runner, what textfork.ForkOutputs applies (False: cannot)
        self._whole: list[bool] = []  # per copy of the last fork on hidden states: its cache holds all its ids
        #: candidates scored on their text ("text"; "retracting": those that retract guide ids), and fallbacks
        #: to the map: "special" (no text), "partial" (text ends inside a character, or none), "no_new_id" (a
        #: value request whose candidate adds no guide id)
        self.counts: Counter = Counter()

    @property
    def _anchored(self) -> bool:
        return True  # a retracting candidate's first new id is scored in its context

    def request(self, runner_index: int, fn: TokenScoreFn, how: str, key: tuple) -> int:
        """Score every candidate with runner ``runner_index``: ``how="sum"`` adds ``fn`` over the new ids,
        ``"last"`` takes ``fn`` at the last id. ``key`` names ``fn`` so equal requests share a slot."""
        if how not in HOW:
            raise ValueError(f"how must be one of {HOW}, got {how!r}")
        full = (runner_index, how, *key)
        if full not in self._request_keys:
            self._request_keys[full] = len(self._requests)
            self._requests.append((runner_index, fn, how))
        return self._request_keys[full]

    def prefill(self, prompt_ids: Sequence[Sequence[int]]) -> None:
        self._fork = None
        super().prefill(prompt_ids)

    def output(self, index: int) -> torch.Tensor:
        """As :meth:`RetokenizingGroup.output`, for the rows before the fork while one is open."""
        with self._unforked():
            return super().output(index)

    def stale_rows(self) -> Optional[torch.Tensor]:
        with self._unforked():
            return super().stale_rows()

    def _unforked(self) -> "_Swap":
        return _Swap(self, None if self._fork is None else self._fork.before)

    def _snapshot(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._STATE}

    def candidate_scores(self, ids: torch.Tensor) -> list[CandidateScores]:
        """Per request (in :meth:`request` order), the scores of candidates ``ids [B, k]`` (module docstring).

        Forks the rows; a second call with the same ids returns the same scores.
        """
        host = ids.detach().to("cpu", torch.long)
        if self._fork is not None:
            if torch.equal(self._fork.ids, host):
                return self._fork.scores
            self._settle(None)
        batch, k = host.shape
        before = self._snapshot()
        lazy = self._lazy_heads()
        if lazy is not None:  # the rows' last outputs stay [B, D]: ForkOutputs reads them per copy
            self._last = []
        # k copies of each row's cache: filled positions only, room for this step's first ids
        RetokenizingGroup.reorder(self, torch.arange(batch).repeat_interleave(k), room=FORK_ROOM)
        feeds, anchors, read, retracted, new = self._read_candidates(host.reshape(-1).tolist())
        if lazy is not None:
            self._last = before["_last"]
        zeros = torch.zeros(batch, k, dtype=torch.float64, device=self.device)
        read_t = torch.tensor(read, dtype=torch.bool, device=self.device).view(batch, k)
        # Before any forward: a copy whose text adds no guide id has log-probability 0 and no last id.
        scores = [CandidateScores(zeros, read_t if how == "sum" else torch.zeros_like(read_t))
                  for _, _, how in self._requests]
        fork_outs = None
        if any(feeds):
            if lazy is not None:
                fed, fork_outs = self._fork_feed(feeds, lazy, k)
                outs: list = fork_outs
            else:
                fed, outs = self._feed(feeds, anchors)
            span = _new_span(feeds, new, anchors)
            for req, score in zip(self._requests, scores):
                values, valid = self._request_scores(req, fed, outs, span)
                score.values = values.view(batch, k)
                if req[2] == "last":
                    score.valid = valid.view(batch, k)
        for req, score in zip(self._requests, scores):
            if req[2] == "last":
                self.counts["no_new_id"] += int((read_t & ~score.valid).sum())
        self._fork = _Fork(host, read, retracted, scores, before,
                           fork_outs if lazy is not None else None, self._whole if fork_outs is not None else None)
        if lazy is not None and fork_outs is None:  # nothing fed: every copy keeps its row's last output
            self._fork.outs = [ForkOutputs(last, last.new_zeros(batch * k, 0, 0), None, k,
                                           torch.full((batch * k,), -1)) for last in self._last]
        return scores

    def _lazy_heads(self) -> Optional[list]:
        """Per runner its head for :class:`~mogen.decoding.textfork.ForkOutputs`, or None: fork with full
        outputs (a head that is not plain linear, or scores tracked for chunk search)."""
        if self._heads is None:
            self._heads = [head_of(r) for r in self.runners]
        if self._trackers or any(h is False for h in self._heads):
            return None
        return self._heads

    def _fork_feed(self, feeds: list[list[int]], heads: list, k: int) -> tuple[torch.Tensor, list[ForkOutputs]]:
        """Every copy's new ids through each model's backbone (the head waits: :mod:`mogen.decoding.textfork`).

        One forward of all ``R`` copies feeds each its first id, in the group's cache, unless padding every
        copy to the longest feed costs less (:data:`SPLIT_COST`): then it feeds every id. The copies with more
        ids (a fifth, at ``width`` 5 in the benchmark's steps) go on in gathered copies of their cache rows
        (:meth:`~mogen.decoding.models.LMRunner.subset`), which the step drops: such a copy is never taken
        (:meth:`_settle`), its row reads the chosen token again. Returns the ids fed ``[R, width]`` (padded)
        and per model its outputs.
        """
        width = max(len(f) for f in feeds)
        extra = [r for r, f in enumerate(feeds) if len(f) > 1]
        # Copies with one more id (mostly a retraction's anchor and one new id) apart from the rest: padding
        # those to the longest feed would cost a forward of every one of them at the longest width.
        buckets = [b for b in ([r for r in extra if len(feeds[r]) == 2], [r for r in extra if len(feeds[r]) > 2])
                   if b]
        split = sum(len(b) * (max(len(feeds[r]) for r in b) - 1) + SPLIT_COST for b in buckets)
        if len(feeds) * width <= len(feeds) + split:  # padding is cheaper: one forward of every id
            extra, buckets = [], []
        ids, _, positions, _, fed = self._layout([f if not buckets else f[:1] for f in feeds])
        for r in extra:
            self._check_length(r, len(self._cols[r]) + len(feeds[r]) - 1)
        all_ids = ids if not buckets else self._padded(feeds, width)
        lengths = torch.tensor([len(f) for f in feeds])
        last_col = torch.where(fed, lengths - 1, torch.full_like(lengths, -1)).to(self.device)
        subs = [self._extra_inputs(b, feeds, all_ids, positions) for b in buckets]
        outs = []
        for runner, head, before in zip(self.runners, heads, self._last):
            first = runner.forward(ids, self._mask, positions, keep=ids.shape[1], hidden=True).to(self.device)
            hidden = first.new_zeros(len(feeds), width, first.shape[-1])
            hidden[:, :first.shape[1]] = first
            for rows, sub_ids, sub_mask, sub_pos in subs:
                n = sub_ids.shape[1]
                more = runner.subset(rows).forward(sub_ids, sub_mask, sub_pos, keep=n, hidden=True)
                hidden[rows.to(self.device), 1:1 + n] = more.to(self.device)
            outs.append(ForkOutputs(before, hidden, head, k, last_col))
        self._whole = [len(f) <= 1 or not buckets for f in feeds]
        return all_ids, outs

    def _extra_inputs(self, extra: list[int], feeds: list[list[int]], all_ids: torch.Tensor,
                      positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The copies ``extra`` that feed more than one id: their rows ``[M]``, later ids ``[M, n]`` (padded to
        the longest), mask over their cache and the ``n`` new columns, and positions (after their first id's)."""
        rows = torch.tensor(extra, dtype=torch.long)
        later = all_ids[rows, 1:max(len(feeds[r]) for r in extra)]
        more = torch.tensor([len(feeds[r]) - 1 for r in extra], dtype=torch.long)
        new_mask = (torch.arange(later.shape[1]) < more.unsqueeze(1)).to(later.dtype)
        steps = torch.arange(1, later.shape[1] + 1)
        return rows, later, torch.cat([self._mask[rows], new_mask], dim=1), positions[rows, :1] + steps

    def _read_candidates(self, flat: list[int]) -> tuple[list[list[int]], list[Optional[int]], list[bool],
                                                         list[int], list[int]]:
        """Copy ``r`` reads candidate ``flat[r]``: its ids to feed, anchor, whether it read text, its retracted
        ids and its new ids (those of the candidate's encoding that differ from before)."""
        rows = len(flat)
        feeds: list[list[int]] = [[] for _ in range(rows)]
        anchors: list[Optional[int]] = [None] * rows
        read, retracted, new = [False] * rows, [0] * rows, [0] * rows
        masked_rows: list[int] = []
        masked_cols: list[int] = []
        for r, (v, edit) in enumerate(zip(flat, read_texts(self.detoks, self.contexts, flat))):
            if edit is None:  # no text, or it ends inside a character: the map scores it
                self.counts["special" if v in self._special else "partial"] += 1
                continue
            was, before = self.retracted, len(masked_cols)
            feeds[r], anchors[r] = self._retract(r, *edit, masked_cols)
            masked_rows += [r] * (len(masked_cols) - before)
            read[r], retracted[r], new[r] = True, self.retracted - was, self.contexts[r].last_new
            self.counts["text"] += 1
            self.counts["retracting"] += retracted[r] > 0
        if masked_rows:
            self._mask[masked_rows, masked_cols] = 0
        return feeds, anchors, read, retracted, new

    def _request_scores(self, request: tuple[int, TokenScoreFn, str], fed: torch.Tensor, outs: list,
                        span: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """float64 ``[R]`` values of one request over the ``R`` copies, and bool ``[R]``: whether the copy has
        a last new id (what a ``"last"`` request needs).

        ``outs[runner] [R, 1 + width, D]`` holds before fed id ``i`` the output at ``i`` (or a
        :class:`~mogen.decoding.textfork.ForkOutputs` that gives it); copy ``r`` scores its fed columns
        ``span[0][r] <= i < span[1][r]`` (:func:`_new_span`).
        """
        runner, fn, how = request
        first, end = span
        cols = torch.arange(fed.shape[1])
        if how == "sum":
            needed = (cols >= first.unsqueeze(1)) & (cols < end.unsqueeze(1))
        else:
            needed = (cols == (end - 1).unsqueeze(1)) & (first < end).unsqueeze(1)
        out = outs[runner]
        if isinstance(out, ForkOutputs):
            values = fork_score(fn, out, fed, needed).sum(dim=1)
        else:
            values = score_columns(fn, out[:, :-1], fed, needed).sum(dim=1)
        return values, needed.any(dim=1).to(self.device)

    def push_many(self, tokens: Sequence[Sequence[int]], live: Sequence[Sequence[bool]]) -> None:
        """As :meth:`RetokenizingGroup.push_many`; after :meth:`candidate_scores`, a row whose one token was a
        candidate that read text takes that copy (no forward), the others read their tokens as usual."""
        if self._fork is None:
            super().push_many(tokens, live)
            return
        single = all(len(t) == 1 for t in tokens)
        chosen = [t[0] if single and x[0] else None for t, x in zip(tokens, live)]
        taken = self._settle(chosen)
        rest = [[x and not taken[b] for x in xs] for b, xs in enumerate(live)]
        if any(any(xs) for xs in rest):
            super().push_many(tokens, rest)

    def reorder(self, index: torch.Tensor) -> None:
        self._settle(None)
        super().reorder(index)

    def _settle(self, chosen: Optional[list[Optional[int]]]) -> list[bool]:
        """Close the fork: row ``b`` takes the copy that read ``chosen[b]`` when there is one, else its state
        from before the fork (with the fork's columns masked). Returns which rows took a copy."""
        fork = self._fork
        if fork is None:
            return [False] * len(self.contexts)
        self._fork = None
        batch, k = fork.ids.shape
        taken: list[Optional[int]] = [None] * batch
        for b, row in enumerate(fork.ids.tolist() if chosen is not None else []):
            for j, v in enumerate(row):
                whole = fork.whole is None or fork.whole[b * k + j]
                if fork.read[b * k + j] and whole and chosen[b] == v:
                    taken[b] = j
                    break
        index = torch.tensor([b * k + (j or 0) for b, j in enumerate(taken)])
        if fork.outs is not None:  # _last holds the rows before the fork: each row reads its copy's output
            self._last = []
        RetokenizingGroup.reorder(self, index)
        if fork.outs is not None:
            self._last = [o.last(index.to(self.device)) for o in fork.outs]
        self._restore(fork, taken)
        self.retracted = fork.before["retracted"] + sum(
            fork.retracted[b * k + j] for b, j in enumerate(taken) if j is not None)
        return [j is not None for j in taken]

    def _restore(self, fork: _Fork, taken: list[Optional[int]]) -> None:
        """Rows that took no copy get back their state from before the fork; no row is stale after a step."""
        before = fork.before
        old = before["_mask"].shape[1]
        for b, j in enumerate(taken):
            if j is not None:
                continue
            self.detoks[b], self.contexts[b] = before["detoks"][b], before["contexts"][b]
            self._cols[b] = list(before["_cols"][b])
            self._mask[b, :old] = before["_mask"][b]
            self._mask[b, old:] = 0
            for n, last in enumerate(before["_last"]):
                self._last[n][b] = last[b]
            for n, contrib in enumerate(before["_contrib"]):
                self._contrib[n][b, :old] = contrib[b]
                self._contrib[n][b, old:] = 0
        # As RetokenizingGroup.push_many marks them: rows that read text now are not stale, rows that read
        # their token below get their own flag there.
        self._stale = torch.zeros(len(taken), dtype=torch.bool)
        self._any_stale = False


def _new_span(feeds: list[list[int]], new: list[int], anchors: list[Optional[int]]) -> tuple[torch.Tensor,
                                                                                               torch.Tensor]:
    """Per copy ``[R]`` each, the fed columns a score reads: ``first <= i < end``, the last ``new[r]`` of its
    ``len(feeds[r])`` fed ids, less a guide's first id (nothing before it scores it: 0, as at prefill); an empty
    span (``first == end``) where the copy adds no id."""
    end = torch.tensor([len(f) for f in feeds], dtype=torch.long)
    added = torch.tensor(new, dtype=torch.long)
    first = end - added
    at_start = torch.tensor([a == FIRST_ANCHOR for a in anchors], dtype=torch.bool)
    first = torch.where((first == 0) & at_start, torch.ones_like(first), first)
    return torch.where(added == 0, end, first), end


class _Swap:
    """Within the block, the group's state is ``state`` (the rows before a fork); None changes nothing."""

    def __init__(self, group: CandidateGroup, state: Optional[dict[str, Any]]) -> None:
        self.group, self.state = group, state
        self.saved: Optional[dict[str, Any]] = None

    def __enter__(self) -> None:
        if self.state is not None:
            self.saved = self.group._snapshot()
            for name, value in self.state.items():
                setattr(self.group, name, value)

    def __exit__(self, *exc: Any) -> None:
        if self.saved is not None:
            for name, value in self.saved.items():
                setattr(self.group, name, value)
