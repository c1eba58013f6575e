"""Explicit value guidance (MAGE eq. 25): ValueGuide in mogen.generate and the processor, both head modes."""

from __future__ import annotations

import pytest
import torch

import mogen
from mogen.value_format import make_value_model

from tiny_models import (
    byte_level_tokenizer,
    metaspace_tokenizer,
    pad_rows,
    proxy_guide,
    reference_greedy_guided,
    tiny_llama,
    value_llama,
)

V = 61
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [3, 4], [12, 13, 14, 15], [20]]
STEPS = 12


@pytest.fixture(scope="module")
def models():
    base = tiny_llama(V, 0, hidden=48, layers=2)
    return base, value_llama(V, 30), value_llama(V, 40), proxy_guide(V, 10)


def new_rows(out: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    return [row[: len(m)][m.bool()].tolist() + row[len(m):].tolist() for row, m in zip(out, mask)]


def test_gamma_zero_or_zero_weights_is_base_generate(models):
    base, v1, v2, _ = models
    ids, mask = pad_rows(PROMPTS)
    expected = base.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=STEPS, pad_token_id=0)
    guides = [mogen.ValueGuide(v1), mogen.ValueGuide(v2, top_k=5)]
    for kwargs in (dict(weights=[1.0, 1.0], gamma=0.0), dict(weights=[0.0, 0.0])):
        out = mogen.generate(base, ids, mask, guides=guides, max_new_tokens=STEPS, pad_token_id=0, **kwargs)
        assert torch.equal(out, expected)


@pytest.mark.parametrize("top_k", [None, 4])
@pytest.mark.parametrize("weights,gamma", [([1.0, 0.5], 1.0), ([[1.0, 0.0], [0.3, 1.2], [-0.5, 1.0], [0.0, 2.0]], 0.8)])
def test_matches_stepwise_reference(models, top_k, weights, gamma):
    base, v1, v2, _ = models
    guides = [mogen.ValueGuide(v1, top_k=top_k), mogen.ValueGuide(v2, top_k=top_k)]
    ids, mask = pad_rows(PROMPTS)
    out = mogen.generate(base, ids, mask, guides=guides, weights=weights, gamma=gamma, max_new_tokens=STEPS)
    expected = reference_greedy_guided(base, guides, PROMPTS, weights, STEPS, gamma=gamma, vocab=V)
    assert new_rows(out, mask) == expected
    # the guidance changes the tokens (a test that could not fail otherwise)
    plain = reference_greedy_guided(base, guides, PROMPTS, weights, STEPS, gamma=0.0, vocab=V)
    assert expected != plain


def test_per_row_weights_equal_rows_alone(models):
    base, v1, _, proxy = models
    guides = [proxy, mogen.ValueGuide(v1, top_k=6)]
    weights = [[1.0, 0.0], [0.0, 1.5], [0.7, 0.7], [-0.5, 1.0]]
    ids, mask = pad_rows(PROMPTS)
    batch = mogen.generate(base, ids, mask, guides=guides, weights=weights, max_new_tokens=STEPS)
    for b, prompt in enumerate(PROMPTS):
        alone = mogen.generate(base, torch.tensor([prompt]), guides=guides, weights=weights[b], max_new_tokens=STEPS)
        assert new_rows(batch[b : b + 1], mask[b : b + 1]) == alone.tolist()


def test_mixed_proxy_and_value_guides_match_reference(models):
    base, v1, v2, proxy = models
    guides = [proxy, mogen.ValueGuide(v1), mogen.ValueGuide(v2)]
    weights = [0.8, 0.5, -0.4]
    ids, mask = pad_rows(PROMPTS)
    out = mogen.generate(base, ids, mask, guides=guides, weights=weights, beta=0.9, gamma=1.3, max_new_tokens=STEPS)
    expected = reference_greedy_guided(base, guides, PROMPTS, weights, STEPS, beta=0.9, gamma=1.3, vocab=V)
    assert new_rows(out, mask) == expected


@pytest.mark.parametrize("top_k", [None, 8])
def test_value_guide_with_its_own_tokenizer(top_k):
    bl, ms = byte_level_tokenizer(), metaspace_tokenizer()
    base = tiny_llama(len(bl), 1, hidden=48)
    value = value_llama(len(ms), 2, scale=6.0)
    guide = mogen.ValueGuide(value, tokenizer=ms, top_k=top_k)
    texts = ["the quick brown fox", "a naïve café 日本", "hello"]
    prompts = [bl(t, add_special_tokens=False)["input_ids"] for t in texts]
    ids, mask = pad_rows(prompts)
    weights = [[1.0], [2.0], [0.5]]
    out = mogen.generate(base, ids, mask, guides=[guide], tokenizer=bl, weights=weights, max_new_tokens=10)
    expected = reference_greedy_guided(base, [guide], prompts, weights, 10, base_tokenizer=bl)
    assert new_rows(out, mask) == expected
    assert expected != reference_greedy_guided(base, [guide], prompts, weights, 10, gamma=0.0, base_tokenizer=bl)


def test_processor_takes_value_guides(models):
    base, v1, _, proxy = models
    ids = torch.tensor([PROMPTS[0]])
    for guides, weights in (([mogen.ValueGuide(v1)], [1.0]), ([proxy, mogen.ValueGuide(v1, top_k=5)], [0.5, 1.0])):
        proc = mogen.MultiObjectiveLogitsProcessor(guides, weights=weights, gamma=1.0)
        out = base.generate(ids, do_sample=False, max_new_tokens=STEPS, logits_processor=[proc], pad_token_id=0)
        expected = reference_greedy_guided(base, guides, [PROMPTS[0]], weights, STEPS, vocab=V)
        assert out.tolist() == expected


def test_top_k_mode_scores_only_candidates(models):
    """Every token the top-k mode picks is among the k best of the base alone (no proxy guides)."""
    base, v1, _, _ = models
    ids = torch.tensor([PROMPTS[1]])
    seen = []
    guide = mogen.ValueGuide(v1, top_k=3)
    proc = mogen.MultiObjectiveLogitsProcessor([guide], gamma=5.0)
    scores = proc(ids, base(ids).logits[:, -1])
    assert int(torch.isfinite(scores).sum()) == 3
    top3 = torch.topk(base(ids).logits[0, -1], 3).indices
    seen = torch.isfinite(scores[0]).nonzero().squeeze(1)
    assert sorted(seen.tolist()) == sorted(top3.tolist())


def test_errors(models, tmp_path):
    base, v1, _, _ = models
    with pytest.raises(ValueError, match="top_k"):
        mogen.ValueGuide(v1, top_k=0)
    with pytest.raises(ValueError, match="value head of 61 entries but its tokenizer has"):
        mogen.ValueGuide(v1, tokenizer=metaspace_tokenizer())
    with pytest.raises(ValueError, match="gamma"):
        mogen.generate(base, torch.tensor([[1, 2]]), guides=[mogen.ValueGuide(v1)], gamma=float("nan"))
    with pytest.raises(ValueError, match="gamma"):
        mogen.MultiObjectiveLogitsProcessor([mogen.ValueGuide(v1)], gamma=float("inf"))

    class Capped(torch.nn.Linear):
        pass

    odd = value_llama(V, 50)
    odd.lm_head = Capped(odd.lm_head.in_features, V, bias=False)
    with pytest.raises(ValueError, match="not a plain torch.nn.Linear"):
        mogen.ValueGuide(odd, top_k=4)
    mogen.ValueGuide(odd)  # the full head is fine
    soft = value_llama(V, 51)
    soft.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        mogen.ValueGuide(soft, top_k=4)
    plain = tiny_llama(V, 60)
    plain.save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="mogen_value_model.*train_value_model"):
        mogen.ValueGuide.from_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="share one top_k"):
        mogen.generate(base, torch.tensor([[1, 2]]), guides=[mogen.ValueGuide(v1, top_k=2),
                                                             mogen.ValueGuide(v1, top_k=3)])


def test_value_model_format_round_trip(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=4, tie_word_embeddings=True)
    torch.manual_seed(0)
    lm = LlamaForCausalLM(cfg).eval()
    emb_before = lm.get_input_embeddings().weight.detach().clone()
    value = make_value_model(lm, objectives=["nature"], reward_scale=2.0, reward_offset=0.5)
    head = value.get_output_embeddings().weight
    assert head.data_ptr() != value.get_input_embeddings().weight.data_ptr()
    assert torch.count_nonzero(head) == 0  # zero-initialised: an untrained value model steers nothing
    assert torch.equal(value.get_input_embeddings().weight, emb_before)
    with torch.no_grad():
        head.normal_()
    value.save_pretrained(tmp_path / "v")
    guide = mogen.ValueGuide.from_pretrained(tmp_path / "v", top_k=3)
    assert guide.model.config.mogen_value_model["objectives"] == ["nature"]
    assert guide.model.config.mogen_value_model["reward_scale"] == 2.0
    assert torch.equal(guide.model.get_output_embeddings().weight, head)
    assert torch.equal(guide.model.get_input_embeddings().weight, emb_before)
