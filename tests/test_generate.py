"""mogen.generate with guides that share the base's tokenizer."""

from __future__ import annotations

import math

import pytest
import torch

import mogen
import mogen_ext
from mogen import ops
from mogen.decoding.sampling import TokenSelector, filter_scores

from tiny_models import pad_rows, proxy_guide, reference_greedy, tiny_gpt2, tiny_llama

V = 61  # an odd vocabulary: no accidental alignment
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [3, 4], [12, 13, 14, 15], [20]]


@pytest.fixture(scope="module")
def models():
    base = tiny_llama(V, 0, hidden=48, layers=2)
    guides = [proxy_guide(V, 10), proxy_guide(V, 20)]
    return base, guides


def new_tokens(out: torch.Tensor, prompt_width: int) -> list[list[int]]:
    return out[:, prompt_width:].tolist()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_zero_weights_equal_base_generate(models, arch):
    base, guides = models
    if arch == "gpt2":  # learned absolute positions: left-padding positions must be right
        base = tiny_gpt2(V, 3)
    ids, mask = pad_rows(PROMPTS)
    expected = base.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=16, pad_token_id=0)
    out = mogen.generate(base, ids, mask, guides=guides, weights=[0.0, 0.0], max_new_tokens=16, pad_token_id=0)
    assert torch.equal(out, expected)


def test_zero_weights_equal_base_generate_with_eos(models):
    base, guides = models
    ids, mask = pad_rows(PROMPTS)
    free = base.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=12, pad_token_id=0)
    eos = int(free[0, ids.shape[1] + 2])  # a token row 0 emits: that row ends early
    expected = base.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=12, eos_token_id=eos,
                             pad_token_id=1)
    out = mogen.generate(base, ids, mask, guides=guides, weights=[0.0, 0.0], max_new_tokens=12, eos_token_id=eos,
                         pad_token_id=1)
    assert torch.equal(out, expected)
    assert (out[0, ids.shape[1] + 3:] == 1).all()


@pytest.mark.parametrize("weights,beta", [([0.6, 0.4], 1.0), ([1.5, -0.5], 0.7), ([0.0, 2.0], 1.0)])
def test_matches_stepwise_reference_without_caches(models, weights, beta):
    base, guides = models
    guides = [guides[0], mogen.ProxyGuide(guides[1].expert, guides[1].reference, temperature=0.8)]
    ids, mask = pad_rows(PROMPTS)
    steps = 14
    out = mogen.generate(base, ids, mask, guides=guides, weights=weights, beta=beta, max_new_tokens=steps)
    ref = reference_greedy(base, guides, PROMPTS, weights, steps, beta=beta)
    assert new_tokens(out, ids.shape[1]) == [r[-steps:] for r in ref]


def test_guides_change_the_output(models):
    base, guides = models
    ids, mask = pad_rows(PROMPTS)
    plain = mogen.generate(base, ids, mask, guides=guides, weights=[0.0, 0.0], max_new_tokens=10)
    steered = mogen.generate(base, ids, mask, guides=guides, weights=[3.0, 0.0], max_new_tokens=10)
    assert not torch.equal(plain, steered)


def test_per_row_weights_equal_rows_run_alone(models):
    base, guides = models
    per_row = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [2.0, -1.0]])
    ids, mask = pad_rows(PROMPTS)
    steps = 12
    batched = new_tokens(mogen.generate(base, ids, mask, guides=guides, weights=per_row, max_new_tokens=steps),
                         ids.shape[1])
    for b, prompt in enumerate(PROMPTS):
        alone = mogen.generate(base, torch.tensor([prompt]), guides=guides, weights=per_row[b],
                               max_new_tokens=steps)
        assert batched[b] == new_tokens(alone, len(prompt))[0], f"row {b}"


def test_default_weights_come_from_guides(models):
    base, (g1, g2) = models
    ids, mask = pad_rows(PROMPTS)
    a = mogen.generate(base, ids, mask, guides=[mogen.ProxyGuide(g1.expert, g1.reference, 0.3),
                                                mogen.ProxyGuide(g2.expert, g2.reference, 0.9)], max_new_tokens=8)
    b = mogen.generate(base, ids, mask, guides=[g1, g2], weights=[0.3, 0.9], max_new_tokens=8)
    assert torch.equal(a, b)


def test_zero_weight_guide_is_not_run(models):
    base, (g1, g2) = models
    calls = {"g1": 0, "g2": 0}
    hooks = [g1.expert.register_forward_pre_hook(lambda *a: calls.__setitem__("g1", calls["g1"] + 1)),
             g2.expert.register_forward_pre_hook(lambda *a: calls.__setitem__("g2", calls["g2"] + 1)),
             g2.reference.register_forward_pre_hook(lambda *a: calls.__setitem__("g2", calls["g2"] + 1))]
    try:
        ids, mask = pad_rows(PROMPTS)
        mogen.generate(base, ids, mask, guides=[g1, g2], weights=[[0.5, 0.0]] * len(PROMPTS), max_new_tokens=6)
    finally:
        for h in hooks:
            h.remove()
    assert calls["g2"] == 0
    assert calls["g1"] == 6  # one forward per step for the whole batch (prefill + 5 steps)


def test_no_guides_is_plain_decoding(models):
    base, _ = models
    ids, mask = pad_rows(PROMPTS)
    expected = base.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=8, pad_token_id=0)
    assert torch.equal(mogen.generate(base, ids, mask, guides=[], max_new_tokens=8, pad_token_id=0), expected)


def test_streamer_gets_prompt_then_tokens(models):
    base, guides = models

    class Recorder:
        def __init__(self):
            self.items, self.ended = [], False

        def put(self, value):
            self.items.append(value.clone())

        def end(self):
            self.ended = True

    rec = Recorder()
    prompt = torch.tensor([PROMPTS[0]])
    out = mogen.generate(base, prompt, guides=guides, weights=[0.5, 0.5], max_new_tokens=5, streamer=rec)
    assert rec.ended and torch.equal(rec.items[0], prompt)
    assert [int(t) for t in rec.items[1:]] == out[0, prompt.shape[1]:].tolist()


def test_sampling_is_reproducible_with_a_generator(models):
    base, guides = models
    ids, mask = pad_rows(PROMPTS)

    def run(seed, **kw):
        gen = torch.Generator().manual_seed(seed)
        return mogen.generate(base, ids, mask, guides=guides, weights=[0.5, 0.5], max_new_tokens=10,
                              do_sample=True, generator=gen, **kw)

    for kw in ({}, {"top_k": 5}, {"top_p": 0.9}, {"top_k": 8, "top_p": 0.8, "temperature": 0.7}):
        assert torch.equal(run(1, **kw), run(1, **kw))
    assert not torch.equal(run(1), run(2))


def test_sampled_tokens_pass_the_filters_end_to_end(models):
    """Every sampled token lies in the top-k / top-p set of the reference fused scores of its step."""
    base, guides = models
    prompt = PROMPTS[0]
    ids = torch.tensor([prompt] * 16)
    gen = torch.Generator().manual_seed(0)
    out = mogen.generate(base, ids, guides=guides, weights=[0.7, 0.3], max_new_tokens=4, do_sample=True,
                         top_k=6, top_p=0.7, temperature=1.3, generator=gen)
    with torch.no_grad():
        for b in range(out.shape[0]):
            row = out[b].tolist()
            for t in range(len(prompt), len(row)):
                ctx = torch.tensor([row[:t]])
                z = base(ctx).logits[:, -1]
                e = [g.expert(ctx).logits[:, -1] for g in guides]
                r = [g.reference(ctx).logits[:, -1] for g in guides]
                s = ops.reference.fused_log_ratio(z, e, r, torch.tensor([0.7, 0.3])) / 1.3
                allowed = torch.isfinite(filter_scores(s, top_k=6, top_p=0.7))[0]
                assert allowed[row[t]], (b, t)


def _selector_draws(scores, **kw):
    sel = TokenSelector(scores.shape[1], do_sample=True, generator=torch.Generator().manual_seed(0), **kw)
    return sel(lambda: scores, lambda k: torch.topk(scores, k, dim=-1))


@pytest.mark.parametrize("kw", [{"top_k": 1}, {"top_k": 4}, {"top_p": 0.5}, {"top_p": 0.95},
                                {"top_k": 10, "top_p": 0.6}, {"top_k": 3, "temperature": 3.0}])
def test_filters_never_emit_a_filtered_token(kw):
    torch.manual_seed(0)
    draws = 4000
    base = torch.randn(1, 50) * 2.0
    scores = base.expand(draws, -1).contiguous()
    picked = _selector_draws(scores, **kw)
    allowed = torch.isfinite(filter_scores(base / kw.get("temperature", 1.0), kw.get("top_k"), kw.get("top_p")))[0]
    assert allowed[picked].all()
    # and the draws really are random over the allowed set: each allowed token drawn at its
    # renormalised softmax probability (within 5 sigma), so every one of them is drawn
    probs = torch.softmax(base[0].double() / kw.get("temperature", 1.0), -1) * allowed
    probs = probs / probs.sum()
    expected = probs[allowed] * draws
    assert expected.min() >= 15, "setup: every allowed token must be likely enough to be drawn"
    counts = torch.bincount(picked.flatten(), minlength=base.shape[1]).double()
    sigma = (expected * (1 - probs[allowed])).sqrt()
    assert ((counts[allowed] - expected).abs() <= 5 * sigma + 1).all(), (counts[allowed], expected)
    assert set(picked.tolist()) == set(torch.nonzero(allowed).flatten().tolist())


def test_filters_with_the_fused_topk_kernel():
    """The top-k path of the selector (kernel's k best) against filter_scores on the full fused row."""
    torch.manual_seed(1)
    rows, vocab = 3000, 40
    base = (torch.randn(1, vocab) * 2).expand(rows, -1)
    e = [(torch.randn(1, vocab) * 2).expand(rows, -1)]
    r = [(torch.randn(1, vocab) * 2).expand(rows, -1)]
    w = torch.tensor([0.8])
    sel = TokenSelector(vocab, do_sample=True, top_k=7, top_p=0.8, generator=torch.Generator().manual_seed(3))
    picked = sel(lambda: ops.fused_log_ratio(base, e, r, w), lambda k: ops.fused_log_ratio_topk(base, e, r, w, k))
    full = ops.reference.fused_log_ratio(base[:1], [e[0][:1]], [r[0][:1]], w)
    allowed = torch.isfinite(filter_scores(full, top_k=7, top_p=0.8))[0]
    assert allowed[picked].all()
    assert len(set(picked.tolist())) > 1


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    s = probs.log()
    assert torch.isfinite(filter_scores(s, top_p=0.5)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(filter_scores(s, top_p=0.75)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_scores(s, top_p=0.81)).tolist() == [[True, True, True, False]]
    assert torch.isfinite(filter_scores(s, top_k=2)).tolist() == [[True, True, False, False]]


# --------------------------------------------------------------------------- #
# Bad input
# --------------------------------------------------------------------------- #


def test_error_own_tokenizer_without_base_tokenizer(models):
    from tiny_models import byte_level_tokenizer

    base, (g1, _) = models
    guide = mogen.ProxyGuide(g1.expert, g1.reference, tokenizer=byte_level_tokenizer())
    with pytest.raises(ValueError, match="own tokenizer.*tokenizer="):
        mogen.generate(base, torch.tensor([[1, 2]]), guides=[guide])


@pytest.mark.parametrize("weights,match", [
    ([1.0], "1 entries but there are 2 guides"),
    ([1.0, 2.0, 3.0], "3 entries but there are 2 guides"),
    ([[1.0, 2.0]] * 3, r"\[B, M\] = \[4, 2\]"),
    ([1.0, float("nan")], "finite"),
    ([float("inf"), 0.0], "finite"),
    (torch.ones(2, 2, 2), r"\[M\] or \[B, M\]"),
])
def test_error_bad_weights(models, weights, match):
    base, guides = models
    ids, mask = pad_rows(PROMPTS)
    with pytest.raises(ValueError, match=match):
        mogen.generate(base, ids, mask, guides=guides, weights=weights)


def test_error_prompt_longer_than_context(models):
    base, guides = models
    short = tiny_llama(V, 5, max_positions=16)
    with pytest.raises(ValueError, match="prompt has 20 tokens but base's context is 16"):
        mogen.generate(short, torch.ones(1, 20, dtype=torch.long), guides=guides, weights=[0.0, 0.0],
                       max_new_tokens=4)
    # Without max_new_tokens transformers caps the default max_length at the context and says so, as base.generate.
    with pytest.raises(ValueError, match="Input length of input_ids is 20, but `max_length` is set to 16"):
        mogen.generate(short, torch.ones(1, 20, dtype=torch.long), guides=guides, weights=[0.0, 0.0])
    with pytest.raises(ValueError, match="exceeds base's context of 16 tokens; lower max_new_tokens"):
        mogen.generate(short, torch.ones(1, 10, dtype=torch.long), guides=guides, max_new_tokens=10)
    small_guide = mogen.ProxyGuide(short, short)
    with pytest.raises(ValueError, match=r"guides\[0\].expert's context is 16"):
        mogen.generate(base, torch.ones(1, 20, dtype=torch.long), guides=[small_guide])


def test_error_models_on_different_devices(models):
    base, (g1, _) = models
    elsewhere = tiny_llama(V, 7).to("meta")
    with pytest.raises(ValueError, match="different devices.*device_map"):
        mogen.generate(base, torch.tensor([[1, 2]]), guides=[mogen.ProxyGuide(elsewhere, g1.reference)])


def test_error_misc_bad_input(models):
    base, guides = models
    with pytest.raises(ValueError, match="left-padded"):
        mogen.generate(base, torch.tensor([[1, 2, 3]]), torch.tensor([[1, 1, 0]]), guides=guides)
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        mogen.generate(base, torch.tensor([1, 2, 3]), guides=guides)
    with pytest.raises(ValueError, match="temperature"):
        mogen.generate(base, torch.tensor([[1, 2]]), guides=guides, do_sample=True, temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        mogen.generate(base, torch.tensor([[1, 2]]), guides=guides, do_sample=True, top_p=1.5)
    with pytest.raises(ValueError, match="beta"):
        mogen.generate(base, torch.tensor([[1, 2]]), guides=guides, beta=math.inf)
    with pytest.raises(TypeError, match="ProxyGuide"):
        mogen.generate(base, torch.tensor([[1, 2]]), guides=[base])
    with pytest.raises(ValueError, match="vocabulary of 40 but the base has 61"):
        g = proxy_guide(40, 3)
        mogen.generate(base, torch.tensor([[1, 2]]), guides=[g])
    with pytest.raises(ValueError, match="temperature"):
        mogen.ProxyGuide(base, base, temperature=-1.0)
    with pytest.raises(ValueError, match="finite"):
        mogen.ProxyGuide(base, base, weight=float("nan"))


def test_shared_reference_runs_once_per_step(models):
    base, (g1, g2) = models
    ref = g1.reference
    guides = [mogen.ProxyGuide(g1.expert, ref, 0.6), mogen.ProxyGuide(g2.expert, ref, 0.4, temperature=1.2)]
    calls = []
    hook = ref.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        ids, mask = pad_rows(PROMPTS)
        out = mogen.generate(base, ids, mask, guides=guides, max_new_tokens=6)
    finally:
        hook.remove()
    assert len(calls) == 6
    ref_rows = reference_greedy(base, guides, PROMPTS, [0.6, 0.4], 6)
    assert new_tokens(out, ids.shape[1]) == [r[-6:] for r in ref_rows]


def constant_gpt2(bumps: dict[int, float], seed: int):
    """A tiny GPT-2 whose logits are the same at every position: ``bumps[v]`` for listed ids, 0 elsewhere
    (the final LayerNorm outputs a fixed unit vector; the tied head's first column holds the bumps)."""
    model = tiny_gpt2(V, seed)
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.zero_()
        model.transformer.ln_f.bias[0] = 1.0
        model.lm_head.weight[:, 0] = 0.0
        for v, x in bumps.items():
            model.lm_head.weight[v, 0] = x
    return model


@pytest.mark.skipif(not mogen_ext.has_cpu_kernels, reason=f"no compiled kernels: {mogen_ext.load_error}")
def test_greedy_takes_the_argmax_path_and_ties_give_the_lowest_id():
    # The base ties 7, 9 and 30; the guide lifts 9 and 30 by the same amount: the fused scores of
    # 9 and 30 are bitwise equal and above every other, so every step must emit 9.
    base = constant_gpt2({7: 1.0, 9: 1.0, 30: 1.0}, 0)
    guide = mogen.ProxyGuide(constant_gpt2({9: 1.0, 30: 1.0}, 1), constant_gpt2({}, 2), 1.0)
    ids, mask = pad_rows(PROMPTS)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = mogen.generate(base, ids, mask, guides=[guide], max_new_tokens=4, pad_token_id=0)
    assert (out[:, ids.shape[1]:] == 9).all()
    names = {e.name for e in prof.events()}
    assert "mogen::fused_log_ratio_argmax" in names  # one selection pass, no top-k sort, no [B, V] row
    assert not {"mogen::fused_log_ratio_topk", "mogen::fused_log_ratio", "aten::topk", "aten::sort"} & names
