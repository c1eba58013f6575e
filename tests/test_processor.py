"""MultiObjectiveLogitsProcessor inside transformers' generate."""

from __future__ import annotations

import pytest
import torch

import mogen

from tiny_models import byte_level_tokenizer, pad_rows, proxy_guide, reference_greedy, tiny_llama

V = 53


@pytest.fixture(scope="module")
def models():
    return tiny_llama(V, 0, hidden=48), [proxy_guide(V, 10), proxy_guide(V, 20)]


def hf_generate(base, ids, mask, proc, steps=10):
    return base.generate(ids, attention_mask=mask, logits_processor=[proc], do_sample=False, max_new_tokens=steps,
                         pad_token_id=0)


def test_processor_equals_mogen_generate(models):
    base, guides = models
    ids = torch.tensor([[4, 5, 6, 7], [9, 8, 7, 6]])
    proc = mogen.MultiObjectiveLogitsProcessor(guides, weights=[0.8, -0.3], beta=1.5)
    out = hf_generate(base, ids, None, proc)
    expected = mogen.generate(base, ids, guides=guides, weights=[0.8, -0.3], beta=1.5, max_new_tokens=10)
    assert torch.equal(out, expected)
    ref = reference_greedy(base, guides, ids.tolist(), [0.8, -0.3], 10, beta=1.5)
    assert out.tolist() == ref


def test_processor_left_padding_and_per_row_weights(models):
    base, guides = models
    ids, mask = pad_rows([[4, 5, 6, 7, 8], [9, 8], [3, 3, 3]], pad_id=0)
    weights = [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]
    proc = mogen.MultiObjectiveLogitsProcessor(guides, weights=weights, pad_token_id=0)
    out = hf_generate(base, ids, mask, proc)
    expected = mogen.generate(base, ids, mask, guides=guides, weights=weights, max_new_tokens=10)
    assert torch.equal(out, expected)
    # the explicit mask works the same
    proc2 = mogen.MultiObjectiveLogitsProcessor(guides, weights=weights)
    proc2.set_attention_mask(mask)
    assert torch.equal(hf_generate(base, ids, mask, proc2), expected)


def test_processor_keeps_guide_caches_within_a_generation(models):
    base, guides = models
    lengths = []
    hook = guides[0].expert.register_forward_pre_hook(
        lambda mod, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
    try:
        proc = mogen.MultiObjectiveLogitsProcessor(guides, weights=[0.5, 0.5])
        ids = torch.tensor([[4, 5, 6, 7, 8, 9]])
        first = hf_generate(base, ids, None, proc, steps=6)
        assert lengths == [6, 1, 1, 1, 1, 1]
        # a new generation with the same processor starts over (prefill), same result as a fresh one
        lengths.clear()
        second = hf_generate(base, ids, None, proc, steps=6)
        assert lengths == [6, 1, 1, 1, 1, 1] and torch.equal(first, second)
    finally:
        hook.remove()


def test_processor_zero_weights_is_base(models):
    base, guides = models
    ids = torch.tensor([[4, 5, 6, 7]])
    proc = mogen.MultiObjectiveLogitsProcessor(guides, weights=[0.0, 0.0])
    plain = base.generate(ids, do_sample=False, max_new_tokens=8, pad_token_id=0)
    assert torch.equal(hf_generate(base, ids, None, proc, steps=8), plain)


def test_processor_errors(models):
    base, guides = models
    own = mogen.ProxyGuide(guides[0].expert, guides[0].reference, tokenizer=byte_level_tokenizer())
    with pytest.raises(ValueError, match="own tokenizer: pass MultiObjectiveLogitsProcessor.*tokenizer="):
        mogen.MultiObjectiveLogitsProcessor([own])
    with pytest.raises(ValueError, match="3 entries but there are 2 guides"):
        mogen.MultiObjectiveLogitsProcessor(guides, weights=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="finite"):
        mogen.MultiObjectiveLogitsProcessor(guides, weights=[1.0, float("nan")])
    proc = mogen.MultiObjectiveLogitsProcessor(guides, weights=[[1.0, 0.0]] * 3)
    with pytest.raises(ValueError, match="per row for 3 rows but generate runs 1"):
        hf_generate(base, torch.tensor([[1, 2]]), None, proc)


class _FromScratch(mogen.MultiObjectiveLogitsProcessor):
    """The processor recomputing every guide over the whole sequence on every call."""

    def __call__(self, input_ids, scores):
        self.reset()
        return super().__call__(input_ids, scores)


def _count_guide_tokens(guides):
    count = {"tokens": 0}
    models = {id(m): m for g in guides for m in (g.expert, g.reference)}.values()
    hooks = [m.register_forward_pre_hook(
        lambda mod, args, kwargs: count.__setitem__("tokens", count["tokens"] + kwargs["input_ids"].numel()),
        with_kwargs=True) for m in models]
    return count, hooks


@pytest.mark.parametrize("weights", [[0.8, -0.3], [[1.0, 0.2]] * 6])
def test_processor_beam_search_follows_beams_by_index(models, weights):
    """num_beams=3: the same tokens as recomputing every guide from scratch each call, and the guides
    process at most 1.1x as many tokens per generated token as in greedy decoding (counted)."""
    base, guides = models
    ids = torch.tensor([[4, 5, 6, 7], [9, 8, 7, 6]])
    steps = 10

    def beams(proc):
        return base.generate(ids, logits_processor=[proc], do_sample=False, num_beams=3, num_return_sequences=3,
                             max_new_tokens=steps, pad_token_id=0)

    count, hooks = _count_guide_tokens(guides)
    try:
        out = beams(mogen.MultiObjectiveLogitsProcessor(guides, weights=weights))
        beam_tokens = count["tokens"]
        expected = beams(_FromScratch(guides, weights=weights))
        count["tokens"] = 0
        greedy_weights = weights if not isinstance(weights[0], list) else weights[:2]
        hf_generate(base, ids, None, mogen.MultiObjectiveLogitsProcessor(guides, weights=greedy_weights), steps)
        greedy_tokens = count["tokens"]
    finally:
        for h in hooks:
            h.remove()
    assert torch.equal(out, expected)
    assert not torch.equal(out[0::3], out[1::3])  # the beams differ: rows really were reordered
    per_generated_beam = beam_tokens / (ids.shape[0] * 3 * steps)
    per_generated_greedy = greedy_tokens / (ids.shape[0] * steps)
    assert per_generated_beam <= 1.1 * per_generated_greedy, (per_generated_beam, per_generated_greedy)
