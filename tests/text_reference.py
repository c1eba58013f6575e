"""Uncached float64 reference of cross_vocab="text" candidate scores (tests/test_text_candidates.py).

For a row (prompt ids ``p``, generated ids ``g``) and each of the base's ``k`` best candidates ``v`` (float64
``log_softmax`` of the base run on the whole row)::

    before = the row's text: decode(p + g), where the last ids left it complete (as tests/real_pairs.py tracks it)
    A      = guide_ids(before)                 A' = guide_ids(decode(p + g + [v]))
    c      = len(longest common prefix of A and A')
    proxy  = sum_{i >= max(c, 1)} log_softmax(z(A'[:i]) / t)[A'[i]]        (expert minus reference)
    value  = Q(A'[:-1])[A'[-1]]                 (only when A'[c:] is not empty and len(A') > 1)

Every model is run afresh on each whole sequence. A candidate whose text is unchanged (a special token) or ends in
U+FFFD (inside a character), and a value candidate without a last new id, gets the vocabulary-map term: the guide's
score of ``m(v)`` after ``A``, 0 where ``m(v) = -1`` or the row's text ends inside a character or after a token
without text. The fused score is ``log p_b(v) + beta * sum_i w_i proxy_i(v) + gamma * sum_j u_j value_j(v)``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from real_pairs import REPLACEMENT, decode, guide_ids, prompt_text

try:
    from transformers import LogitsProcessor
except ImportError:  # pragma: no cover
    LogitsProcessor = object


class Recorder(LogitsProcessor):
    """A logits processor that keeps every call's ``(input_ids, scores)`` (the fused scores when it runs after
    mogen's fusion) and returns the scores unchanged."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.calls.append((input_ids.clone(), scores.detach().clone()))
        return scores


def row_text(tok, prompt: Sequence[int], generated: Sequence[int]) -> tuple[str, bool]:
    """``(text, stale)``: the row's complete text and whether its last ids left it incomplete or added no text."""
    text, pending = prompt_text(tok, prompt)
    stale = pending
    rows = list(prompt)
    for t in generated:
        prev = decode(tok, rows)
        rows.append(t)
        full = decode(tok, rows)
        if full == prev or full.endswith(REPLACEMENT):
            stale = True
        else:
            text, stale = full, False
    return text, stale


def _lcp(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _logits(model, ids: Sequence[int], keep: int) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=torch.tensor([list(ids)]), use_cache=False, logits_to_keep=keep)
    return out.logits[0, -keep:].double()


def _text_term(g, ids: Sequence[int], c: int) -> tuple[float, bool]:
    """A guide's score of the new ids ``ids[c:]`` (module docstring), and whether it has one."""
    n = len(ids)
    if not hasattr(g, "expert"):  # a value guide: Q at the last id, scored from the output before it
        if c >= n or n < 2:
            return 0.0, False
        return float(_logits(g.model, ids, 2)[0, ids[-1]]), True
    start = max(c, 1)
    if start >= n:
        return 0.0, True
    total = 0.0
    for model, sign in ((g.expert, 1.0), (g.reference, -1.0)):
        lp = torch.log_softmax(_logits(model, ids, n - start + 1)[:-1] / g.temperature, dim=-1)
        total += sign * float(lp[torch.arange(n - start), torch.tensor(ids[start:])].sum())
    return total, True


def _map_term(g, before_ids: Sequence[int], gid: int, stale: bool) -> float:
    if stale or gid < 0:
        return 0.0
    if not hasattr(g, "expert"):
        return float(_logits(g.model, before_ids, 1)[0, gid])
    return sum(sign * float(torch.log_softmax(_logits(m, before_ids, 1)[0] / g.temperature, dim=-1)[gid])
               for m, sign in ((g.expert, 1.0), (g.reference, -1.0)))


@dataclass
class Tally:
    """What the checks saw: candidates by kind (text / special / partial), value terms of text candidates that
    add no guide id (``no_new_id``, scored by the map), the largest score
    difference, greedy tokens checked and skipped for a margin under 1e-4."""

    kinds: Counter = field(default_factory=Counter)
    no_new_id: int = 0
    worst: float = 0.0
    rows: int = 0
    greedy: int = 0
    close: int = 0

    def share(self) -> str:
        total = sum(self.kinds.values())
        fallback = total - self.kinds["text"]
        return (f"{self.rows} row-steps, {total} candidates: {self.kinds['text'] / total:.1%} scored on their text, "
                f"{fallback / total:.1%} by the map ({dict(self.kinds)}, value terms without a new id: "
                f"{self.no_new_id}); worst |diff| {self.worst:.2e}; greedy checked {self.greedy}, "
                f"margin <= 1e-4: {self.close}")


def reference_scores(base, base_tok, guides, weights, prompt, generated, k, *, beta, gamma, vmap,
                     tally: Tally) -> dict[int, float]:
    """Candidate -> reference fused score for one row (module docstring)."""
    with torch.no_grad():
        z = base(input_ids=torch.tensor([list(prompt) + list(generated)]), use_cache=False).logits[0, -1]
    base_lp = torch.log_softmax(z[: len(base_tok)].double(), dim=-1)
    cands = torch.topk(base_lp, k).indices.tolist()
    gtok = guides[0].tokenizer
    text, stale = row_text(base_tok, prompt, generated)
    before_ids = guide_ids(gtok, text)
    row = list(prompt) + list(generated)
    prev = decode(base_tok, row)
    out = {}
    for v in cands:
        full = decode(base_tok, row + [v])
        readable = full != prev and not full.endswith(REPLACEMENT)
        after = guide_ids(gtok, full) if readable else None
        c = _lcp(before_ids, after) if readable else 0
        s = float(base_lp[v])
        tally.kinds["text" if readable else "special" if v in base_tok.all_special_ids else "partial"] += 1
        for g, w in zip(guides, weights):
            scale = beta if hasattr(g, "expert") else gamma
            if w == 0.0 or scale == 0.0:
                continue
            term, ok = _text_term(g, after, c) if readable else (0.0, False)
            if not ok:
                tally.no_new_id += readable
                term = _map_term(g, before_ids, int(vmap[v]), stale)
            s += scale * w * term
        out[v] = s
    return out


def check_calls(calls, base, base_tok, guides, prompts: Sequence[Sequence[int]], pad_width: int, weights, k: int,
                *, beta: float = 1.0, gamma: float = 1.0, eos: Any = None, greedy: bool = True,
                tolerance: float = 1e-4, tally: Tally) -> Tally:
    """Checks recorded ``(input_ids, fused scores)`` against :func:`reference_scores`, row by row: the same
    candidates (up to ties at the k-th), scores within ``tolerance``; with ``greedy``, the next call's token
    is the reference's best where its margin exceeds ``tolerance``. Rows are matched to their prompt by their
    left-padded prompt part (search reorders rows); finished rows (eos) are skipped."""
    from mogen.vocab import build_vocab_map

    vmap = build_vocab_map(base_tok, guides[0].tokenizer).tolist()
    padded = [[0] * (pad_width - len(p)) + list(p) for p in prompts]
    for n, (ids, scores) in enumerate(calls):
        for r, row in enumerate(ids.tolist()):
            b = padded.index(row[:pad_width])
            generated = row[pad_width:]
            if eos is not None and eos in generated:
                continue
            want = reference_scores(base, base_tok, guides, weights[b], prompts[b], generated, k, beta=beta,
                                    gamma=gamma, vmap=vmap, tally=tally)
            got = {v: float(scores[r, v]) for v in torch.isfinite(scores[r]).nonzero().flatten().tolist()}
            _compare(want, got, tolerance, tally, (n, r))
            if greedy and n + 1 < len(calls):
                ordered = sorted(want.values(), reverse=True)
                if ordered[0] - ordered[1] > tolerance:
                    best = max(want, key=want.get)
                    assert calls[n + 1][0][r, -1].item() == best, (n, r)
                    tally.greedy += 1
                else:
                    tally.close += 1
    return tally


def _compare(want: dict, got: dict, tolerance: float, tally: Tally, where) -> None:
    tally.rows += 1
    common = set(want) & set(got)
    assert len(common) >= len(want) - 1, (where, sorted(want), sorted(got))  # at most a tie at the k-th
    for v in common:
        diff = abs(want[v] - got[v])
        tally.worst = max(tally.worst, diff)
        assert diff < tolerance, (where, v, want[v], got[v])
