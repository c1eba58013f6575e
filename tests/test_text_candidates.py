"""cross_vocab="text": a guide with its own tokenizer scores the base's top-k candidates on the text each appends.

Every driver (mogen.generate, transformers' generate with MultiObjectiveLogitsProcessor, mogen.search with the
guided proposal) is checked against tests/text_reference.py, an uncached float64 reference that re-encodes the
whole text with each candidate for the guides, on real tokenizer pairs of different families (tiny random models
sized to them, the base stretched towards odd tokens) and on the demo's own models. A recording logits processor
after the fusion sees every step's fused scores.
"""

from __future__ import annotations

import pytest
import torch

import mogen
from mogen.decoding.textcandidates import CandidateGroup
from real_pairs import MODEL, oddify, prompt_rows, token_bytes
from real_tokenizers import real_tokenizer
from search_reference import reference_beam
from text_reference import Recorder, Tally, check_calls
from tiny_models import pad_rows, proxy_guide, tiny_llama, value_llama

# Qwen2 -> Llama-2 (MPAW's heterogeneous setting, 17% mapped), Llama-2 -> GPT-2, GPT-2 -> Phi-3, Falcon -> StarCoder.
TEXT_PAIRS = [("qwen2", "llama-spm"), ("llama-spm", "gpt-2"), ("gpt-2", "phi-3"), ("falcon", "starcoder")]
K = 6
INDICES = [32, 18, 43]  # llama.cpp's test texts: emoji and CJK, " this is 🦙.cpp", "Cửa Việt"
WEIGHTS = [[1.0, -0.5, 0.7], [0.5, 1.0, -1.0], [2.0, 0.0, 0.5]]  # two proxy guides and a value guide per row


def _id(pair):
    return f"{pair[0]}->{pair[1]}"


def favour_word_pieces(model, name: str, factor: float = 3.0) -> None:
    """Stretch the LM-head rows of tokens that are 1-3 lowercase ASCII letters without a space: appended to a
    word, the guide's tokenizer often merges them with its last ids, which it then retracts."""
    ids = [i for i, b in enumerate(token_bytes(name).data)
           if b is not None and 1 <= len(b) <= 3 and all(97 <= c <= 122 for c in b)]
    with torch.no_grad():
        model.lm_head.weight[ids] *= factor


def text_models(base_name: str, guide_name: str, k: int = K, pieces: float = 4.0):
    """``(base tokenizer, base, [proxy, proxy, value])``: tiny random models sized to the pair, guides in text mode;
    the base favours odd tokens (byte pieces, specials: map fallbacks) and word pieces (guide retractions)."""
    bt, gt = real_tokenizer(base_name), real_tokenizer(guide_name)
    base = tiny_llama(len(bt), 0, **MODEL)
    oddify(base, base_name, 3.0)
    favour_word_pieces(base, base_name, pieces)
    guides = []
    for seed in (10, 20):
        g = proxy_guide(len(gt), seed, tokenizer=gt, **MODEL)
        guides.append(mogen.ProxyGuide(g.expert, g.reference, tokenizer=gt, cross_vocab="text", top_k=k,
                                       temperature=1.3 if seed == 20 else 1.0))
    guides.append(mogen.ValueGuide(value_llama(len(gt), 30, **MODEL), tokenizer=gt, cross_vocab="text", top_k=k))
    return bt, base, guides


def _groups(seen):
    return [g for g in seen["decoding"].cross if isinstance(g, CandidateGroup)]


def _counted(forward, counts, i, rows):
    """``forward`` counting its calls over ``rows`` rows (the fork's; a row whose chosen candidate feeds several
    guide ids reads it again on its own, a smaller forward)."""
    def wrapped(*args, **kwargs):
        counts[i] += args[0].shape[0] == rows
        return forward(*args, **kwargs)
    return wrapped


def _report(name, tally: Tally, counts=None):
    print(f"\n{name}: {tally.share()}" + (f"; mogen's counts {dict(counts)}" if counts else ""))
    assert tally.kinds["text"] > 0 and tally.worst < 1e-4


@pytest.mark.parametrize("pair", TEXT_PAIRS + [("gpt-2", "phi-3", 1.0)],
                         ids=[_id(p) for p in TEXT_PAIRS] + ["gpt-2->phi-3-odd"])
def test_generate_candidate_scores_equal_reference(pair):
    """Greedy mogen.generate, a left-padded batch with per-row weights: every step's fused scores of the top-k
    candidates equal the reference within 1e-4, every other token is -inf, the tokens are the reference's best
    where its margin exceeds 1e-4, and every candidate with complete text is scored on it."""
    from mogen.decoding.generation import observe_steps

    bt, base, guides = text_models(*pair[:2], pieces=pair[2] if len(pair) > 2 else 4.0)
    rows = prompt_rows(bt, INDICES)
    ids, mask = pad_rows(rows, 0)
    rec, seen, forwards = Recorder(), {}, []

    def observe(decoding, step):
        seen.update(decoding=decoding)
        if step == -1:  # after the prefill: count every guide forward from now on
            for runner in _groups(seen)[0].runners:
                forwards.append(0)
                runner.forward = _counted(runner.forward, forwards, len(forwards) - 1, len(rows) * K)

    with observe_steps(observe):
        mogen.generate(base, ids, mask, guides=guides, tokenizer=bt, weights=WEIGHTS, beta=1.5, gamma=0.8,
                       max_new_tokens=8, pad_token_id=0, logits_processor=[rec])
    # one forward of all B * k copies per step and model (two proxy pairs, a value model)
    assert forwards == [8] * 5
    tally = check_calls(rec.calls, base, bt, guides, rows, ids.shape[1], WEIGHTS, K, beta=1.5, gamma=0.8,
                        tally=Tally())
    counts = _groups(seen)[0].counts
    assert counts["text"] == tally.kinds["text"]
    # the word pieces make the guides retract; the odd variant reaches the map fallback half the time
    assert counts["retracting"] > 0 if len(pair) == 2 else counts["partial"] > 50
    _report(_id(pair), tally, counts)


@pytest.mark.parametrize("pair", [("qwen2", "llama-spm"), ("gpt-2", "phi-3", 1.0)], ids=["qwen2->llama-spm",
                                                                                        "gpt-2->phi-3-odd"])
def test_generate_split_fork_equals_reference(pair, monkeypatch):
    """The same with every fork split (textcandidates.SPLIT_COST 0): copies whose text adds several guide ids
    go on in sub-forwards, and a row whose chosen candidate is one of them reads it again."""
    import mogen.decoding.textcandidates as textcandidates

    monkeypatch.setattr(textcandidates, "SPLIT_COST", 0)
    test_generate_candidate_scores_equal_reference(pair)


def test_processor_candidate_scores_equal_reference():
    """transformers' greedy generate with MultiObjectiveLogitsProcessor (guides reading text through their own
    tokenizer) gives the same fused scores, checked the same way."""
    bt, base, guides = text_models("gpt-2", "phi-3")
    rows = prompt_rows(bt, INDICES)
    ids, mask = pad_rows(rows, 0)
    proc = mogen.MultiObjectiveLogitsProcessor(guides, WEIGHTS, beta=1.5, gamma=0.8, tokenizer=bt)
    proc.set_attention_mask(mask)
    rec = Recorder()
    base.generate(ids, attention_mask=mask, logits_processor=[proc, rec], do_sample=False, max_new_tokens=8,
                  pad_token_id=0)
    tally = check_calls(rec.calls, base, bt, guides, rows, ids.shape[1], WEIGHTS, K, beta=1.5, gamma=0.8,
                        tally=Tally())
    _report("processor gpt-2->phi-3", tally)


@pytest.mark.parametrize("pair", [("qwen2", "llama-spm"), ("gpt-2", "phi-3")], ids=_id)
def test_search_guided_proposal_scores_text_candidates(pair):
    """mogen.search with the guided proposal: the proposal's fused scores of every row and token equal the
    reference (rows reordered and duplicated by beam selection), every final beam's sequence score equals
    tests/search_reference.py, and greedy chunks of one beam equal greedy mogen.generate."""
    bt, base, guides = text_models(*pair)
    rows = prompt_rows(bt, INDICES[:2])
    ids, mask = pad_rows(rows, 0)
    weights = WEIGHTS[:2]
    rec = Recorder()
    out = mogen.search(base, ids, mask, guides=guides, tokenizer=bt, weights=weights, beam_width=2, expansion=2,
                       chunk_length=3, max_new_tokens=6, proposal="guided", temperature=1.5, beta=0.7, gamma=0.5,
                       pad_token_id=0, generator=torch.Generator().manual_seed(1), return_scores=True,
                       logits_processor=[rec])
    tally = check_calls(rec.calls, base, bt, guides, rows, ids.shape[1], weights, K, beta=0.7, gamma=0.5,
                        greedy=False, tally=Tally())
    for b, beams in enumerate(out.beams):
        for beam in beams:
            score, _, terms = reference_beam(base, guides, rows[b], beam.tokens, weights[b], base_tokenizer=bt,
                                             beta=0.7, gamma=0.5)
            assert beam.score == pytest.approx(score, abs=1e-4)
            assert beam.terms == pytest.approx(terms, abs=1e-4)
    greedy = mogen.search(base, ids, mask, guides=guides, tokenizer=bt, weights=weights, beam_width=1, expansion=1,
                          chunk_length=3, max_new_tokens=6, proposal="guided", top_k=1, beta=0.7, gamma=0.5,
                          pad_token_id=0)
    want = mogen.generate(base, ids, mask, guides=guides, tokenizer=bt, weights=weights, beta=0.7, gamma=0.5,
                          max_new_tokens=6, pad_token_id=0)
    assert torch.equal(greedy, want)
    _report(f"search {_id(pair)}", tally)


def test_demo_models_candidate_scores_equal_reference():
    """The demo's own models (byte-level base, metaspace guides, a trained value model): generate's fused
    scores equal the reference."""
    from mogen.demo.train import demo_dir, load_demo_models

    if not (demo_dir() / "meta.json").exists():
        pytest.skip("demo models not built (make demo)")
    m = load_demo_models(log=lambda _m: None)
    gt, bt = m.guide_tokenizer, m.base_tokenizer
    first, second = sorted(m.experts)[:2]
    guides = [mogen.ProxyGuide(m.experts[first], m.reference, tokenizer=gt, cross_vocab="text", top_k=K),
              mogen.ProxyGuide(m.experts[second], m.reference, tokenizer=gt, cross_vocab="text", top_k=K),
              mogen.ValueGuide(m.values[first], tokenizer=gt, cross_vocab="text", top_k=K)]
    texts = ["the city at night", "a quiet river and", "We walked"]
    rows = [bt(t, add_special_tokens=False)["input_ids"] for t in texts]
    ids, mask = pad_rows(rows, 0)
    rec = Recorder()
    mogen.generate(m.base, ids, mask, guides=guides, tokenizer=bt, weights=WEIGHTS, beta=1.5, gamma=0.8,
                   max_new_tokens=8, pad_token_id=0, logits_processor=[rec])
    tally = check_calls(rec.calls, m.base, bt, guides, rows, ids.shape[1], WEIGHTS, K, beta=1.5, gamma=0.8,
                        eos=bt.eos_token_id, tally=Tally())
    _report("demo", tally)


def test_cross_vocab_arguments_are_checked():
    bt, base, guides = text_models("gpt-2", "phi-3")
    g, gt = guides[0], guides[0].tokenizer
    with pytest.raises(ValueError, match="cross_vocab must be one of"):
        mogen.ProxyGuide(g.expert, g.reference, tokenizer=gt, cross_vocab="bytes")
    with pytest.raises(ValueError, match="cross_vocab='text'.*tokenizer="):
        mogen.ProxyGuide(g.expert, g.reference, cross_vocab="text")
    with pytest.raises(ValueError, match="ProxyGuide.top_k counts the candidates"):
        mogen.ProxyGuide(g.expert, g.reference, tokenizer=gt, top_k=5)
    with pytest.raises(ValueError, match="top_k must be None or an int >= 1"):
        mogen.ProxyGuide(g.expert, g.reference, tokenizer=gt, cross_vocab="text", top_k=0)
    with pytest.raises(ValueError, match="ValueGuide.cross_vocab='text'"):
        mogen.ValueGuide(guides[2].model, cross_vocab="text")
    assert mogen.ProxyGuide(g.expert, g.reference, tokenizer=gt, cross_vocab="text").top_k == 20
    other = mogen.ProxyGuide(g.expert, g.reference, tokenizer=gt, cross_vocab="text", top_k=K + 1)
    with pytest.raises(ValueError, match="must share one top_k in a call"):
        mogen.generate(base, torch.tensor([[1, 2]]), guides=[guides[0], other], tokenizer=bt, max_new_tokens=1)
