"""mogen.search (chunk-level beam search) against base.generate and an uncached float64 re-scoring."""

from __future__ import annotations


import pytest
import torch

import mogen
from search_reference import reference_beam
from tiny_models import (
    byte_level_tokenizer,
    byte_token_ids,
    metaspace_tokenizer,
    nudge_model,
    pad_rows,
    proxy_guide,
    tiny_llama,
    value_llama,
)

EOS, PAD = 2, 3
TEXTS = ["The cat sees", "A naïve café in 日本", "x = 1 and  two", "One"]


@pytest.fixture(scope="module")
def tok():
    return byte_level_tokenizer(), metaspace_tokenizer()


@pytest.fixture(scope="module")
def base(tok):
    return tiny_llama(len(tok[0]), 0, hidden=48, eos_token_id=EOS, pad_token_id=PAD)


def _prompts(bl, texts=TEXTS):
    return [bl(t, add_special_tokens=False)["input_ids"] for t in texts]


def _guides(kind, bl, ms):
    if kind == "shared":
        return [proxy_guide(len(bl), 10), proxy_guide(len(bl), 20)]
    if kind == "own":
        return [proxy_guide(len(ms), 30, tokenizer=ms), proxy_guide(len(ms), 40, tokenizer=ms)]
    own_value = mogen.ValueGuide(value_llama(len(ms), 50), tokenizer=ms, top_k=3)
    shared_value = mogen.ValueGuide(value_llama(len(bl), 60))
    return [proxy_guide(len(bl), 10), proxy_guide(len(ms), 30, tokenizer=ms), own_value, shared_value]


def _check_beams(out, base, guides, prompts, weights, bl, **kw):
    """Every final beam's score, base log-prob and terms equal the float64 reference within 1e-4."""
    checked = 0
    for b, beams in enumerate(out.beams):
        w = weights[b] if isinstance(weights[0], (list, tuple)) else weights
        for beam in beams:
            score, base_lp, terms = reference_beam(base, guides, prompts[b], beam.tokens, w, base_tokenizer=bl, **kw)
            assert beam.base_logprob == pytest.approx(base_lp, abs=1e-4)
            assert beam.terms == pytest.approx(terms, abs=1e-4), (b, beam.tokens)
            assert beam.score == pytest.approx(score, abs=1e-4)
            checked += 1
    return checked


def test_greedy_single_beam_is_base_generate(base, tok):
    bl, ms = tok
    prompts = _prompts(bl)
    ids, mask = pad_rows(prompts, PAD)
    guides = [proxy_guide(len(bl), 10), proxy_guide(len(ms), 30, tokenizer=ms)]
    want = base.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=23, pad_token_id=PAD,
                         eos_token_id=EOS)
    got = mogen.search(base, ids, mask, guides=guides, tokenizer=bl, weights=[0.0, 0.0], beam_width=1, expansion=1,
                       chunk_length=5, max_new_tokens=23, top_k=1)
    assert torch.equal(got, want)


@pytest.mark.parametrize("kind,proposal", [("shared", "base"), ("own", "base"), ("mixed", "guided")])
def test_scores_equal_uncached_float64_rescoring(base, tok, kind, proposal):
    bl, ms = tok
    prompts = _prompts(bl)
    ids, mask = pad_rows(prompts, PAD)
    guides = _guides(kind, bl, ms)
    m = len(guides)
    weights = [[1.0 - 0.5 * j + 0.25 * b for j in range(m)] for b in range(len(prompts))]
    out = mogen.search(base, ids, mask, guides=guides, tokenizer=bl, weights=weights, beam_width=2, expansion=2,
                       chunk_length=4, max_new_tokens=14, proposal=proposal, temperature=3.0, beta=0.7, gamma=0.3,
                       generator=torch.Generator().manual_seed(1), return_scores=True)
    assert _check_beams(out, base, guides, prompts, weights, bl, beta=0.7, gamma=0.3) >= len(prompts)
    for b, beams in enumerate(out.beams):  # the returned sequence is the best beam
        assert beams[0].score == max(x.score for x in beams)
        best = list(beams[0].tokens)
        assert out.sequences[b, ids.shape[1]: ids.shape[1] + len(best)].tolist() == best


@pytest.mark.parametrize("proposal", ["base", "guided"])  # text read per chunk / per token
def test_multibyte_characters_split_across_chunks(base, tok, proposal):
    """The base spells multi-byte characters one byte per token across chunk boundaries; guides read text."""
    bl, ms = tok
    prompts = _prompts(bl, ["the ca", "日"])
    ids, mask = pad_rows(prompts, PAD)
    script = byte_token_ids(bl, "t 日本🙂 naïve ok")
    guides = [proxy_guide(len(ms), 30, tokenizer=ms), mogen.ValueGuide(value_llama(len(ms), 50), tokenizer=ms)]
    # forward k of the search draws token k, likely, not certain: candidates may differ
    handle = nudge_model(base, script, 14.0)
    try:
        out = mogen.search(base, ids, mask, guides=guides, tokenizer=bl, weights=[1.0, 0.5], beam_width=2,
                           expansion=3, chunk_length=3, max_new_tokens=len(script), temperature=1.5,
                           proposal=proposal, generator=torch.Generator().manual_seed(0), return_scores=True)
    finally:
        handle.remove()
    texts = [bl.decode(list(b.tokens)) for beams in out.beams for b in beams]
    assert any("日本🙂" in t for t in texts), texts
    for b, beams in enumerate(out.beams):  # the hooked base is not the reference's: compare the guides' part
        for beam in beams:
            _, _, terms = reference_beam(base, guides, prompts[b], beam.tokens, [1.0, 0.5], base_tokenizer=bl)
            assert beam.terms == pytest.approx(terms, abs=1e-4), (b, bl.decode(list(beam.tokens)))
            assert beam.score - beam.base_logprob == pytest.approx(terms[0] + 0.5 * terms[1], abs=1e-4)


def _run(base, bl, ms, prompts, generator, **kw):
    ids, mask = pad_rows(prompts, PAD)
    guides = [proxy_guide(len(bl), 10), proxy_guide(len(ms), 30, tokenizer=ms)]
    opts = dict(beam_width=3, expansion=2, chunk_length=4, max_new_tokens=10, temperature=2.5, top_p=0.95)
    opts.update(kw)
    out = mogen.search(base, ids, mask, guides=guides, tokenizer=bl, weights=[0.5, 1.0], generator=generator,
                       return_scores=True, **opts)
    return out


def test_seeded_results_reproduce_and_each_prompt_alone_equals_the_batch(base, tok):
    bl, ms = tok
    prompts = _prompts(bl)[:3]
    a = _run(base, bl, ms, prompts, torch.Generator().manual_seed(7))
    b = _run(base, bl, ms, prompts, torch.Generator().manual_seed(7))
    assert torch.equal(a.sequences, b.sequences)
    assert [[x.tokens for x in p] for p in a.beams] == [[x.tokens for x in p] for p in b.beams]
    # one generator is split into one per prompt: s = torch.randint(0, 2**62, (B,), generator=g)
    seeds = torch.randint(0, 2**62, (len(prompts),), generator=torch.Generator().manual_seed(7)).tolist()
    for i, p in enumerate(prompts):
        alone = _run(base, bl, ms, [p], [torch.Generator().manual_seed(seeds[i])])
        assert [x.tokens for x in alone.beams[0]] == [x.tokens for x in a.beams[i]], i
        assert [x.score for x in alone.beams[0]] == pytest.approx([x.score for x in a.beams[i]], abs=1e-4)
    c = _run(base, bl, ms, prompts, torch.Generator().manual_seed(8))
    assert [[x.tokens for x in p] for p in c.beams] != [[x.tokens for x in p] for p in a.beams]


@pytest.mark.parametrize("top_k", [None, 1])
def test_finished_beams_stay_put_and_kept_beams_are_distinct(tok, top_k):
    bl, ms = tok
    eos = 5  # a frequent id of this model, so beams end at different rounds
    model = tiny_llama(len(bl), 3, hidden=48, eos_token_id=eos, pad_token_id=PAD)
    with torch.no_grad():
        model.lm_head.weight[eos] *= 0.3
        model.lm_head.bias = None
    reports = []
    out = _run(model, bl, ms, _prompts(bl)[:2], torch.Generator().manual_seed(3), beam_width=3, expansion=3,
               chunk_length=3, max_new_tokens=30, top_k=top_k, top_p=None, on_round=reports.append)
    finished_seen = 0
    for prev, cur in zip([None] + reports[:-1], reports):
        for b, (cands, kept) in enumerate(zip(cur.candidates, cur.kept)):
            for c in cands:  # a candidate ends at eos or not at all, and extends a live kept beam
                assert eos not in c.tokens[:-1]
                if prev is not None:
                    parents = [k.tokens for k in prev.kept[b] if not k.finished]
                    assert c.tokens[: prev.new_tokens] in parents
            distinct = {c.tokens for c in cands} | {k.tokens for k in (prev.kept[b] if prev else []) if k.finished}
            assert len({k.tokens for k in kept}) == min(len(kept), len(distinct))
            assert not any(k.finished for k in kept if sum(k.tokens == j.tokens for j in kept) > 1)
            if prev is not None:  # a finished beam keeps its score while it stays in the pool
                before = {k.tokens: k.score for k in prev.kept[b] if k.finished}
                for k in kept:
                    if k.finished:
                        finished_seen += 1
                        assert k.score == before.get(k.tokens, k.score)
    if top_k is None:
        assert finished_seen > 0
    else:  # greedy chunks: every expansion is the same sequence, so the kept beams are copies of one live beam
        assert all(len({k.tokens for k in kept}) == 1 for r in reports for kept in r.kept)
    assert reports[-1].live == 0 or reports[-1].new_tokens == 30
    assert all(len(p) == 3 for p in out.beams)


def _tiny_call(base, bl, **kw):
    ids, mask = pad_rows(_prompts(bl)[:2], PAD)
    args = dict(guides=[], tokenizer=bl, max_new_tokens=4)
    args.update(kw)
    return mogen.search(base, ids, mask, **args)


@pytest.mark.parametrize("kw,match", [
    (dict(beam_width=0), "beam_width"), (dict(expansion=0), "expansion"), (dict(chunk_length=0), "chunk_length"),
    (dict(beam_width=2.0), "beam_width"), (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(proposal="greedy"), "proposal"), (dict(temperature=0.0), "temperature"), (dict(top_p=1.5), "top_p"),
    (dict(top_k=-1), "top_k"), (dict(beta=float("nan")), "beta"), (dict(gamma="x"), "gamma"),
    (dict(weights=[1.0]), "weights"), (dict(generator=[torch.Generator()]), "generator"),
    (dict(generator="seed"), "generator"), (dict(eos_token_id="x"), "eos_token_id"),
    (dict(max_new_tokens=10_000), "max_new_tokens"), (dict(return_scores=1), "return_scores"),
])
def test_bad_arguments_are_named(base, tok, kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        _tiny_call(base, tok[0], **kw)


def test_bad_prompts_and_guides_are_named(base, tok):
    bl, ms = tok
    ids, mask = pad_rows(_prompts(bl)[:2], PAD)
    with pytest.raises(ValueError, match="left-padded"):
        mogen.search(base, ids, mask.flip(1), guides=[], tokenizer=bl)
    with pytest.raises(ValueError, match="input_ids"):
        mogen.search(base, ids[0], guides=[], tokenizer=bl)
    with pytest.raises(ValueError, match="base tokenizer"):
        mogen.search(base, ids, mask, guides=[proxy_guide(len(ms), 30, tokenizer=ms)])
    with pytest.raises(TypeError, match="guides"):
        mogen.search(base, ids, mask, guides=["expert"], tokenizer=bl)
    with pytest.raises(TypeError, match="base"):
        mogen.search("model", ids, mask, guides=[], tokenizer=bl)
