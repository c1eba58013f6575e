"""Top-k value scoring of heads whose forward() transforms their output (mogen.value_format.HEAD_TRANSFORMS).

For every class of the table, a tiny random model of it (the transform's config field set so that it matters:
a soft-cap below the logits' spread, scales far from 1): kernel K2's scores with the table's transform equal
the full forward's logits at the candidate ids (fp32, and fp64 through mogen.reference), and greedy decoding
with a top-k value guide of that class equals the float64 reference that values the same top-k candidates
with the full forward (tests/tiny_models.reference_greedy_guided).
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch

import mogen
from mogen import reference
from mogen.decoding.models import backbone
from mogen.value_format import HEAD_TRANSFORMS, LinearHead, linear_head, make_value_model, plain_linear_head

from tiny_models import pad_rows, reference_greedy_guided, tiny_llama, value_llama

V = 61
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [3, 4], [12, 13, 14, 15], [20]]
STEPS = 8
TOP_K = 4
GAMMA = 2.0

_COMMON = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=256, eos_token_id=None, bos_token_id=None,
               pad_token_id=None)
_SLIDING = dict(head_dim=8, sliding_window=4, layer_types=["sliding_attention", "full_attention"])
_MAMBA = dict(mamba_n_heads=4, mamba_d_state=8, mamba_chunk_size=16)
_MOE = dict(num_local_experts=2, num_experts_per_tok=1)

#: class -> (its config class, config fields: the transform's set so that it matters). The soft-caps sit
#: below the value heads' spread (~3), so tanh bends most scores.
CONFIGS: dict[str, tuple[str, dict]] = {
    "Gemma2ForCausalLM": ("Gemma2Config", dict(final_logit_softcapping=1.5, head_dim=8, sliding_window=4)),
    "Gemma3ForCausalLM": ("Gemma3TextConfig", dict(final_logit_softcapping=1.5, **_SLIDING)),
    "Gemma3nForCausalLM": ("Gemma3nTextConfig", dict(
        final_logit_softcapping=1.5, num_kv_shared_layers=0, hidden_size_per_layer_input=8, laurel_rank=4,
        vocab_size_per_layer_input=V, activation_sparsity_pattern=[0.0, 0.0], intermediate_size=[64, 64],
        **_SLIDING)),
    "Gemma4ForCausalLM": ("Gemma4TextConfig", dict(final_logit_softcapping=1.5, global_head_dim=8, **_SLIDING)),
    "VaultGemmaForCausalLM": ("VaultGemmaConfig", dict(final_logit_softcapping=1.5, head_dim=8)),
    "NanoChatForCausalLM": ("NanoChatConfig", dict(final_logit_softcapping=1.5)),
    "BeamForCausalLM": ("BeamConfig", dict(final_logit_softcapping=1.5, head_dim=8)),
    "Inkling2ForCausalLM": ("Inkling2TextConfig", dict(final_logit_softcapping=1.5, head_dim=8,
                                                       unpadded_vocab_size=V)),
    "CohereForCausalLM": ("CohereConfig", dict(logit_scale=0.25)),
    "Cohere2ForCausalLM": ("Cohere2Config", dict(logit_scale=0.25, head_dim=8)),
    "Cohere2MoeForCausalLM": ("Cohere2MoeConfig", dict(logit_scale=0.25, head_dim=8, **_MOE)),
    "GraniteForCausalLM": ("GraniteConfig", dict(logits_scaling=3.3)),
    "GraniteMoeForCausalLM": ("GraniteMoeConfig", dict(logits_scaling=3.3, **_MOE)),
    "GraniteMoeSharedForCausalLM": ("GraniteMoeSharedConfig", dict(logits_scaling=3.3, **_MOE)),
    "GraniteMoeHybridForCausalLM": ("GraniteMoeHybridConfig", dict(
        logits_scaling=3.3, layer_types=["linear_attention", "full_attention"], **_MAMBA, **_MOE)),
    "HyperCLOVAXForCausalLM": ("HyperCLOVAXConfig", dict(logits_scaling=0.41)),
    "FalconH1ForCausalLM": ("FalconH1Config", dict(lm_head_multiplier=0.41, mamba_d_ssm=32, mamba_d_head=8,
                                                   **_MAMBA)),
    # logits_scaling = hidden_size / dim_model_base = 3.2
    "MiniCPM3ForCausalLM": ("MiniCPM3Config", dict(dim_model_base=10, q_lora_rank=16, kv_lora_rank=16,
                                                   qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8,
                                                   num_key_value_heads=4)),
}
CLASSES = sorted(CONFIGS)
#: classes whose forward does not run in fp64 (Inkling2 casts to fp32 inside): the fp64 reference is checked
#: against their fp32 forward
NO_FP64 = {"Inkling2ForCausalLM"}


def build(cls_name: str, vocab: int, seed: int, spread: float = 1.0) -> torch.nn.Module:
    """A random tiny ``cls_name`` model (fp32, eval) whose head has N(0, ``spread``) rows (logits of spread ~3
    at 1.0, beyond the soft-caps)."""
    import transformers

    config_name, fields = CONFIGS[cls_name]
    fields = {**fields, **{k: vocab for k in ("vocab_size_per_layer_input", "unpadded_vocab_size") if k in fields}}
    cfg = getattr(transformers, config_name)(vocab_size=vocab, **{**_COMMON, **fields})
    torch.manual_seed(seed)
    model = getattr(transformers, cls_name)(cfg).eval()
    with torch.no_grad():
        model.get_output_embeddings().weight.normal_(0.0, spread, generator=torch.Generator().manual_seed(seed))
    return model


@functools.lru_cache(maxsize=None)
def value_model(cls_name: str, vocab: int = V) -> torch.nn.Module:
    """A tiny ``cls_name`` value model (never changed by a test)."""
    return make_value_model(build(cls_name, vocab, 3), objectives=["reward"], reset_head=False)


def _last_hidden_and_logits(model: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The backbone's last hidden state ``[B, H]`` (what mogen's top-k runners read) and the forward's last
    logits ``[B, V]``, for prompts ``ids [B, T]``."""
    with torch.no_grad():
        hidden = backbone(model)(input_ids=ids).last_hidden_state[:, -1]
        logits = model(ids).logits[:, -1]
    return hidden, logits


def test_every_class_of_the_table_is_tested():
    assert set(HEAD_TRANSFORMS) == set(CONFIGS)


@pytest.mark.parametrize("cls_name", CLASSES)
def test_topk_scores_equal_forward_logits(cls_name):
    """K2 + the table's transform at random candidates equals the forward's logits there: fp32 within 2e-5,
    and the fp64 reference (mogen.reference.topk_value_scores, transform in fp64) on an fp64 copy within 1e-10
    (within 2e-6 of the fp32 forward for Beam, which caps in fp32 whatever the model's dtype, and Inkling2,
    which runs in fp32 only); without the
    transform the scores are far off (the check could fail)."""
    model = value_model(cls_name)
    assert type(model).__name__ == cls_name
    head = linear_head(model)
    assert len(head.steps) == len(HEAD_TRANSFORMS[cls_name])  # every field of the row is set in CONFIGS
    ids = torch.randint(4, V, (3, 9), generator=torch.Generator().manual_seed(1))
    hidden, logits = _last_hidden_and_logits(model, ids)
    cand = torch.stack([torch.randperm(V, generator=torch.Generator().manual_seed(b))[:8] for b in range(3)])
    want = logits.gather(1, cand)
    got = head.scores(hidden, cand)
    assert got.dtype == torch.float32 and got.shape == (3, 8)
    torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-5)
    plain = LinearHead(head.weight, head.bias).scores(hidden, cand)
    assert (plain - want).abs().max() > 0.1

    if cls_name in NO_FP64:
        m64, hidden64, want64 = model, hidden.double(), want
    else:
        m64 = copy.deepcopy(model).double()
        if "Moe" in cls_name:  # grouped_mm has no fp64: the eager expert loop
            m64.set_experts_implementation("eager")
        hidden64, logits64 = _last_hidden_and_logits(m64, ids)
        want64 = logits64.gather(1, cand)
    head64 = linear_head(m64)
    ref = head64.transform(reference.topk_value_scores(head64.prepare(hidden64), head64.weight, cand, head64.bias,
                                                       dtype=torch.float64))
    if want64.dtype == torch.float32:  # Beam's forward casts the head's output to fp32 before its cap
        torch.testing.assert_close(ref.float(), want64, rtol=2e-6, atol=2e-6)
    else:
        torch.testing.assert_close(ref, want64, rtol=1e-10, atol=1e-10)
    # the full projection (the text-scoring fork's lazy head) too
    torch.testing.assert_close(head.project(hidden), logits, rtol=2e-5, atol=2e-5)


@pytest.fixture(scope="module")
def base() -> torch.nn.Module:
    return tiny_llama(V, 0, hidden=48)


@pytest.mark.parametrize("cls_name", CLASSES)
def test_topk_value_guided_greedy_equals_full_head_restricted(base, cls_name, monkeypatch):
    """mogen.generate with a top-k value guide of the class equals the float64 reference that values the same
    top-k candidates with the model's full forward; the guidance changes the tokens, and so does dropping the
    transform (the test sees a wrong transform)."""
    guide = mogen.ValueGuide(value_model(cls_name), top_k=TOP_K)
    ids, mask = pad_rows(PROMPTS)
    weights = [[0.1], [0.3], [1.0], [-0.5]]
    out = mogen.generate(base, ids, mask, guides=[guide], weights=weights, gamma=GAMMA, max_new_tokens=STEPS)
    got = [row[: len(m)][m.bool()].tolist() + row[len(m):].tolist() for row, m in zip(out, mask)]
    want = reference_greedy_guided(base, [guide], PROMPTS, weights, STEPS, gamma=GAMMA, vocab=V)
    assert got == want
    assert not torch.equal(out, mogen.generate(base, ids, mask, guides=[guide], weights=weights, gamma=0.0,
                                               max_new_tokens=STEPS))
    monkeypatch.setattr(LinearHead, "transform", lambda self, x: x)
    monkeypatch.setattr(LinearHead, "prepare", lambda self, h: h)
    untransformed = mogen.generate(base, ids, mask, guides=[guide], weights=weights, gamma=GAMMA,
                                   max_new_tokens=STEPS)
    assert not torch.equal(untransformed, out)


def test_refusals():
    """A model of a class without a table row that sets a transform field is refused in top-k mode (how its
    forward uses the field is unknown); so is a soft-cap of 0; plain_linear_head refuses transformed heads."""
    soft = value_llama(V, 51)
    soft.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="final_logit_softcapping=30.0.*LlamaForCausalLM's forward"):
        mogen.ValueGuide(soft, top_k=4)
    mogen.ValueGuide(soft)  # the full head runs forward itself
    scaled = value_llama(V, 52)
    scaled.config.logits_scaling = 2.0
    with pytest.raises(ValueError, match="logits_scaling"):
        mogen.ValueGuide(scaled, top_k=4)
    scaled.config.logits_scaling = 1.0  # no transform whatever the forward does with it
    mogen.ValueGuide(scaled, top_k=4)

    gemma = copy.deepcopy(value_model("Gemma2ForCausalLM"))
    assert linear_head(gemma).steps == (("softcap", 1.5),)
    with pytest.raises(ValueError, match="transforms the head's output"):
        plain_linear_head(gemma)
    gemma.config.final_logit_softcapping = 0.0
    with pytest.raises(ValueError, match="final_logit_softcapping=0.0.*other than 0"):
        mogen.ValueGuide(gemma, top_k=4)
    gemma.config.final_logit_softcapping = None  # forward skips the cap
    assert linear_head(gemma).steps == ()

    class Sub(type(gemma)):  # inherits forward: the row applies
        pass

    class Own(type(gemma)):  # a forward of its own: unknown
        def forward(self, *args, **kwargs):
            return super().forward(*args, **kwargs)

    for cls, ok in ((Sub, True), (Own, False)):
        m = copy.deepcopy(value_model("Gemma2ForCausalLM"))
        m.__class__ = cls
        if ok:
            assert linear_head(m).steps == (("softcap", 1.5),)
        else:
            with pytest.raises(ValueError, match="Own's forward"):
                linear_head(m)


def test_text_mode_transformed_heads_equal_reference():
    """cross_vocab="text" with guides of transformed heads and their own (real) tokenizer: a Gemma 2 proxy pair
    (soft-capped: the text-scoring fork applies the head lazily, cap included, ``textfork.head_of``) and a
    Granite value model (``logits_scaling``: K2 at one id per candidate, ``tally.HiddenValue``). Every step's
    fused scores of the top-k candidates equal the uncached float64 reference within 1e-4."""
    from mogen.decoding.generation import observe_steps
    from mogen.decoding.textcandidates import CandidateGroup
    from real_pairs import MODEL, prompt_rows
    from real_tokenizers import real_tokenizer
    from text_reference import Recorder, Tally, check_calls

    bt, gt = real_tokenizer("gpt-2"), real_tokenizer("phi-3")
    base = tiny_llama(len(bt), 0, **MODEL)
    k, weights = 6, [[1.0, 0.7], [0.5, -1.0], [2.0, 0.5]]
    pair = [build("Gemma2ForCausalLM", len(gt), seed) for seed in (10, 11)]
    guides = [mogen.ProxyGuide(*pair, tokenizer=gt, cross_vocab="text", top_k=k),
              mogen.ValueGuide(value_model("GraniteForCausalLM", len(gt)), tokenizer=gt, cross_vocab="text",
                               top_k=k)]
    rows = prompt_rows(bt, [32, 18, 43])
    ids, mask = pad_rows(rows, 0)
    rec, seen = Recorder(), {}
    with observe_steps(lambda decoding, step: seen.update(decoding=decoding)):
        mogen.generate(base, ids, mask, guides=guides, tokenizer=bt, weights=weights, beta=1.5, gamma=0.8,
                       max_new_tokens=6, pad_token_id=0, logits_processor=[rec])
    group = next(g for g in seen["decoding"].cross if isinstance(g, CandidateGroup))
    heads = group._lazy_heads()
    assert heads is not None and [h.steps for h in heads if h is not None] == [(("softcap", 1.5),)] * 2
    tally = check_calls(rec.calls, base, bt, guides, rows, ids.shape[1], weights, k, beta=1.5, gamma=0.8,
                        tally=Tally())
    assert tally.kinds["text"] > 0 and tally.worst < 1e-4


def test_chunk_search_scores_transformed_value_heads(base):
    """Chunk search with top-k value guides of transformed heads (a Gemma 2 soft-cap, a Granite logits_scaling):
    every final beam's value terms (chunk search's token tallies: K2 at one id, then the transform) equal the
    full forward's values, rescored uncached in float64."""
    from search_reference import reference_beam

    guides = [mogen.ValueGuide(value_model(c), top_k=TOP_K) for c in ("Gemma2ForCausalLM", "GraniteForCausalLM")]
    ids, mask = pad_rows(PROMPTS)
    weights = [[1.0, 0.5], [0.3, -1.0], [2.0, 1.0], [-0.5, 0.2]]
    out = mogen.search(base, ids, mask, guides=guides, weights=weights, beam_width=2, expansion=2, chunk_length=3,
                       max_new_tokens=6, temperature=2.0, gamma=0.7, generator=torch.Generator().manual_seed(0),
                       return_scores=True)
    checked = 0
    for b, beams in enumerate(out.beams):
        for beam in beams:
            score, base_lp, terms = reference_beam(base, guides, PROMPTS[b], beam.tokens, weights[b], vocab=V,
                                                   gamma=0.7)
            assert beam.terms == pytest.approx(terms, abs=1e-4), (b, beam.tokens, beam.terms, terms)
            assert beam.score == pytest.approx(score, abs=1e-4)
            checked += 1
    assert checked >= len(PROMPTS)
