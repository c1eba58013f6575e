"""Chunk search keeps exactly the top W of each round: ``select_beams`` and ``_Search._select`` against a brute force.

The rule under test (python/mogen/decoding/beams.py, MPAW Alg. 1 line 6), per prompt: the pool's finished
beams and this round's candidates, best score first, ties: pool first, then candidates in row order;
identical sequences count once (the first in that order); when fewer than W distinct sequences exist the
remaining places go to the other live beams (copies), best first; a finished beam is never copied. NaN scores
rank last (the code's ``_order_key``); ``-inf`` is a score like any other.

The brute force below shares no code with the module: it ranks by counting (``O(n^2)``), not by ``sorted``.
"""

from __future__ import annotations

import importlib
import math
import random
from types import SimpleNamespace

import pytest
import torch

import mogen
from mogen.decoding.beams import Beam, select_beams
from mogen.decoding.search import SearchConfig

search_module = importlib.import_module("mogen.decoding.search")  # ``mogen.decoding.search`` is the function

EOS_MARK = -1  # a finished beam's tokens end with this marker in the random pools
NEG_INF = float("-inf")


# -- brute force ----------------------------------------------------------------------------------------------

def _value(score: float) -> float:
    return NEG_INF if math.isnan(score) else score


def _ranked(items: list[Beam]) -> list[Beam]:
    """``items`` best score first, ties in list order, by counting: rank(i) = #better + #equal before i."""
    n = len(items)
    slots: list = [None] * n
    for i, a in enumerate(items):
        better = sum(_value(b.score) > _value(a.score) for b in items)
        equal_before = sum(_value(items[j].score) == _value(a.score) for j in range(i))
        slots[better + equal_before] = a
    assert all(s is not None for s in slots)
    return slots


def brute_select(pool: list[Beam], candidates: list[Beam], width: int) -> list[Beam]:
    ordered = _ranked([*pool, *candidates])
    distinct: list[Beam] = []
    for beam in ordered:  # the first (best, then earliest) beam of every sequence, up to width
        if len(distinct) < width and all(beam.tokens != d.tokens for d in distinct):
            distinct.append(beam)
    rest = [b for b in ordered if not b.finished and all(b is not d for d in distinct)]
    return _ranked(distinct + rest[: width - len(distinct)])


def _same(got: list[Beam], want: list[Beam]) -> bool:
    return len(got) == len(want) and all(g is w for g, w in zip(got, want))


def _show(beams: list[Beam]) -> list:
    return [(b.score, b.tokens, b.finished, b.row) for b in beams]


def _check_selection(pool: list[Beam], cands: list[Beam], width: int, kept: list[Beam]) -> None:
    want = brute_select(pool, cands, width)
    assert _same(kept, want), (f"W={width}\npool={_show(pool)}\ncands={_show(cands)}\n"
                               f"kept={_show(kept)}\nwant={_show(want)}")
    # the same thing said without the tie rule: the kept distinct sequences' scores are the top of the pool
    everything = [*pool, *cands]
    best: dict[tuple, float] = {}
    for b in everything:
        best[b.tokens] = max(best.get(b.tokens, NEG_INF), _value(b.score))
    kept_seqs = {b.tokens for b in kept}
    top = sorted(best.values(), reverse=True)[: min(width, len(best))]
    assert sorted((best[t] for t in kept_seqs), reverse=True) == top
    dropped = [best[t] for t in best if t not in kept_seqs]
    assert all(_value(k.score) >= d for k in kept for d in dropped)
    assert all(_value(a.score) >= _value(b.score) for a, b in zip(kept, kept[1:])), "not best first"
    assert not any(k.finished for k in kept if sum(k.tokens == j.tokens for j in kept) > 1), "finished copied"
    live_copies = sum(not b.finished for b in everything) - len({b.tokens for b in everything if not b.finished})
    assert len(kept) == min(width, len(best) + live_copies)


# -- random pools ---------------------------------------------------------------------------------------------

def _random_pool(rng: random.Random, width: int, *, duplicates: bool, nan: bool = False):
    """Finished pool beams (no row) and this round's candidates (rows 0..n-1 in list order)."""
    n_pool = rng.choice([0, 0, 1, rng.randint(0, width)])
    size = rng.choice([0, 1, max(width - 1, 0), width, width + 1, 2 * width, rng.randint(0, 3 * width + 2)])
    # few distinct values so that ties are common; -inf is a score like any other
    values = [rng.choice([-2.0, -1.0, -0.5, 0.0, NEG_INF]) for _ in range(3)] + [rng.uniform(-5, 5)]
    if nan:
        values.append(float("nan"))
    seqs: dict[tuple, float] = {}

    def draw(finished: bool, round_len: int) -> tuple[tuple, float]:
        if duplicates and seqs and rng.random() < 0.5:
            same = [t for t in seqs if (t[-1] == EOS_MARK) == finished and len(t) == round_len + finished]
            if same:
                t = rng.choice(same)  # the same text from another row: the same score, or off by rounding
                return t, seqs[t] if rng.random() < 0.8 else rng.choice(values)
        while True:
            t = tuple(rng.randrange(4) for _ in range(round_len)) + ((EOS_MARK,) if finished else ())
            if t not in seqs:
                seqs[t] = rng.choice(values)
                return t, seqs[t]

    pool = []
    for _ in range(n_pool):  # finished in an earlier round: shorter than this round's candidates
        t, s = draw(True, rng.randint(1, 3))
        pool.append(Beam(t, s, s, (), True))
    cands = []
    for r in range(size):
        fin = rng.random() < 0.3
        t, s = draw(fin, 6)
        cands.append(Beam(t, s, s, (), fin, r))
    return pool, cands


@pytest.mark.parametrize("duplicates", [False, True], ids=["distinct", "with-duplicates"])
def test_select_beams_keeps_the_brute_force_top_w(duplicates):
    """Random pools (pool sizes below, at and above W; W = 1..6; tied and -inf scores; finished and live
    beams; with or without repeated sequences) keep exactly the brute-force top W, in its order."""
    rng = random.Random(1234 + duplicates)
    seen = dict(short=0, exact=0, over=0, ties=0, neg_inf=0, copies=0, finished_kept=0)
    for _ in range(1500):
        width = rng.choice([1, 1, 2, 3, 4, 6])
        pool, cands = _random_pool(rng, width, duplicates=duplicates)
        kept = select_beams(list(pool), list(cands), width)
        _check_selection(pool, cands, width, kept)
        n = len(pool) + len(cands)
        seen["short" if n < width else "exact" if n == width else "over"] += 1
        scores = [b.score for b in pool + cands]
        seen["ties"] += len(set(scores)) < len(scores)
        seen["neg_inf"] += NEG_INF in [b.score for b in kept]
        seen["copies"] += len({b.tokens for b in kept}) < len(kept)
        seen["finished_kept"] += any(b.finished for b in kept)
    assert all(v > 20 for k, v in seen.items() if k != "copies"), seen
    assert (seen["copies"] > 20) == duplicates, seen


def test_select_beams_tie_order_is_pool_then_rows():
    """All-equal scores: the pool's beams first, then candidates in row order; a better late row still wins."""
    fin = [Beam((9, EOS_MARK), 0.0, 0.0, (), True), Beam((8, EOS_MARK), 0.0, 0.0, (), True)]
    cands = [Beam((r, r), 0.0, 0.0, (), r % 2 == 1, r) for r in range(5)]
    for width in range(1, 8):
        kept = select_beams(fin, cands, width)
        assert _same(kept, (fin + cands)[:width]), (width, _show(kept))
    better = Beam((7, 7), 0.5, 0.5, (), False, 5)
    assert _same(select_beams(fin, cands + [better], 2), [better, fin[0]])
    worse_pool = [Beam((6, EOS_MARK), -1.0, -1.0, (), True)]
    assert _same(select_beams(worse_pool, cands, 3), cands[:3])
    assert select_beams([], [], 3) == []
    # only finished beams and fewer than W: nothing is copied
    assert _same(select_beams(fin, [], 4), fin)
    # one live sequence from several rows: copies of it, best first, fill the places
    a, b, c = (Beam((1, 1), s, s, (), False, r) for r, s in enumerate([-1.0, -1.0, -3.0]))
    assert _same(select_beams(fin[:1], [c, a, b], 3), [fin[0], a, b])


def test_select_beams_nan_never_beats_a_number():
    """A NaN score (a broken guide) ranks below every number above -inf: it is kept only when nothing better
    is left, and never ahead of a number above -inf (NaN and -inf tie; the code does not order them)."""
    rng = random.Random(99)
    for _ in range(800):
        width = rng.choice([1, 2, 3, 5])
        pool, cands = _random_pool(rng, width, duplicates=False, nan=True)
        kept = select_beams(list(pool), list(cands), width)
        kept_ids = {id(b) for b in kept}
        dropped = [b for b in pool + cands if id(b) not in kept_ids]
        for k in kept:
            if math.isnan(k.score):
                assert all(math.isnan(d.score) or d.score == NEG_INF for d in dropped), _show(kept)
        assert len(kept) == min(width, len(pool) + len(cands))
        # a NaN ranks with -inf (the code does not order the two), never before a larger number
        for i, k in enumerate(kept):
            if math.isnan(k.score):
                assert all(math.isnan(j.score) or j.score == NEG_INF for j in kept[i:]), _show(kept)


# -- one round of the driver, several prompts -----------------------------------------------------------------

def test_select_round_keeps_each_prompts_top_w_and_expands_live_beams():
    """``_Search._select`` over a batch whose prompts have different pools: each prompt keeps the brute-force
    top W of (its finished kept beams + its candidates); its live kept beams are dropped from the pool (their
    children are the candidates); the next rows are every live kept beam's row, ``kappa`` times, best first."""
    rng = random.Random(7)
    for trial in range(300):
        width, kappa = rng.choice([1, 2, 3, 4]), rng.choice([1, 2, 3])
        batch = rng.randint(1, 4)
        fake = SimpleNamespace(config=SearchConfig(beam_width=width, expansion=kappa), kept=[])
        candidates, prev = [], []
        row = 0
        for b in range(batch):
            pool, cands = _random_pool(rng, width, duplicates=trial % 2 == 1)
            old_live = [Beam((b, 5, 5), 10.0, 10.0, (), False, 0) for _ in range(rng.randint(0, 2))]
            prev.append(pool + old_live)  # a live beam of last round must not stay: it was expanded
            renumbered = []
            for c in cands:  # rows are grouped by prompt, in prompt order
                renumbered.append(Beam(c.tokens, c.score, c.base_logprob, c.terms, c.finished, row))
                row += 1
            candidates.append(renumbered)
        fake.kept = [list(p) for p in prev]
        index = search_module._Search._select(fake, candidates)
        want_index = []
        for b in range(batch):
            pool = [k for k in prev[b] if k.finished]
            _check_selection(pool, candidates[b], width, fake.kept[b])
            want_index += [k.row for k in fake.kept[b] if not k.finished for _ in range(kappa)]
        assert index == want_index


# -- end to end on a tiny model -------------------------------------------------------------------------------

@pytest.mark.parametrize("top_k", [None, 1], ids=["sampled", "greedy-chunks"])
def test_search_rounds_keep_the_top_w_of_recorded_pools(monkeypatch, top_k):
    """``mogen.search`` on a tiny Llama with a frequent eos: every round, per prompt, the selector sees the
    finished kept beams and exactly the round's candidates, keeps the brute-force top W of them, and the next
    round's candidates are ``kappa`` children of each live kept beam, in kept order."""
    from tiny_models import pad_rows, proxy_guide, tiny_llama

    vocab, eos, pad, width, kappa = 24, 5, 3, 3, 3
    model = tiny_llama(vocab, 3, hidden=16, layers=1, eos_token_id=eos, pad_token_id=pad)
    with torch.no_grad():
        model.lm_head.weight.mul_(0.25)  # flatter: eos comes up at different rounds for different beams
    calls = []
    real = search_module.select_beams

    def recorder(pool, cands, w):
        out = real(pool, cands, w)
        calls.append((list(pool), list(cands), w, list(out)))
        return out

    monkeypatch.setattr(search_module, "select_beams", recorder)
    reports = []
    ids, mask = pad_rows([[7, 8, 9], [10, 11], [12]], pad)
    out = mogen.search(model, ids, mask, guides=[proxy_guide(vocab, 40, hidden=16, layers=1)], weights=[0.7],
                       beam_width=width, expansion=kappa, chunk_length=2, max_new_tokens=12, top_k=top_k,
                       generator=torch.Generator().manual_seed(5), return_scores=True, on_round=reports.append)
    batch = ids.shape[0]
    assert len(calls) == batch * len(reports)
    prev_kept = [[] for _ in range(batch)]
    finished_in_pool = over_width = 0
    for rep in reports:
        for b in range(batch):
            pool, cands, w, kept = calls.pop(0)
            assert w == width
            assert _same(pool, [k for k in prev_kept[b] if k.finished])
            assert _same(cands, rep.candidates[b])
            assert _same(rep.kept[b], kept)
            _check_selection(pool, cands, width, kept)
            live = [k for k in prev_kept[b] if not k.finished]
            if rep.round > 0:  # the candidates are kappa children of each live kept beam, in that order
                assert len(cands) == kappa * len(live)
                for i, c in enumerate(cands):
                    assert c.tokens[: len(live[i // kappa].tokens)] == live[i // kappa].tokens
            finished_in_pool += len(pool)
            over_width += len(pool) + len(cands) > width
            prev_kept[b] = kept
    assert _same(out.beams[0], prev_kept[0]) and all(_same(o, p) for o, p in zip(out.beams, prev_kept))
    assert over_width > 0 and len(reports) > 1
    if top_k is None:
        assert finished_in_pool > 0, "no round had a finished beam in its pool; the model needs a likelier eos"
    else:  # greedy chunks: every expansion is the same text, so the kept beams are copies of one live beam
        assert any(len({k.tokens for k in r.kept[0]}) < len(r.kept[0]) for r in reports)
