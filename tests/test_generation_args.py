"""mogen.generate takes model.generate's arguments, checked against transformers itself.

For every argument set of the matrix, greedy:

- all weights 0: the tokens of ``base.generate(**args)``;
- non-zero weights: the tokens (and, when asked, the scores and logits) of
  ``base.generate(**args, logits_processor=[MultiObjectiveLogitsProcessor(guides, weights), *user's])``.

Every ``GenerationConfig`` field is then passed alone: honoured fields give
transformers' result, refused ones an error naming the field.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import (GenerationConfig, LogitsProcessor, StoppingCriteria, WatermarkingConfig)
from transformers.generation import CompileConfig

import mogen
from mogen.decoding.argument_support import CALL_ARGUMENTS, FIELDS, HONOURED, NO_EFFECT, REFUSED, support_markdown

from tiny_models import byte_level_tokenizer, proxy_guide, tiny_llama

TEXTS = ["the river runs", "a city", "old stone bridges over the water", "we"]
WEIGHTS = [0.7, 0.5]


@pytest.fixture(scope="module")
def stack():
    tok = byte_level_tokenizer()
    vocab = len(tok)
    base = tiny_llama(vocab, 0, hidden=48, layers=2)
    guides = [proxy_guide(vocab, 10), proxy_guide(vocab, 20)]
    enc = tok(TEXTS, return_tensors="pt", padding=True)
    return tok, base, guides, enc["input_ids"], enc["attention_mask"]


class BiasToken(LogitsProcessor):
    """A user processor: adds ``bias`` to one token (shift-invariant, so argmax agrees on logits and log-probs)."""

    def __init__(self, token: int, bias: float) -> None:
        self.token, self.bias = token, bias

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        scores[:, self.token] += self.bias
        return scores


class StopAfterToken(StoppingCriteria):
    """A user criterion: a row stops once it has emitted one of ``tokens``."""

    def __init__(self, tokens: list[int], prompt_width: int) -> None:
        self.tokens, self.width = torch.tensor(tokens), prompt_width

    def __call__(self, input_ids, scores, **kwargs):
        return torch.isin(input_ids[:, self.width:], self.tokens).any(dim=1)


_FREE: dict[tuple, list[list[int]]] = {}


def free_tokens(stack, steps=12, weights=tuple(WEIGHTS)) -> list[list[int]]:
    """What the stack emits greedily with no argument (steered, or the base alone with zero weights): the
    matrix picks eos ids and stops from it, so that they fire."""
    key = (id(stack), weights)
    if key not in _FREE:
        tok, base, guides, ids, mask = stack
        out = mogen.generate(base, ids, mask, guides=guides, weights=list(weights), max_new_tokens=steps)
        _FREE[key] = out[:, ids.shape[1]:].tolist()
    return _FREE[key]


def stop_strings(stack) -> list[str]:
    """Stop strings that row 0 produces, steered and not: the text of a generated ASCII token (from step 2)."""
    tok, out = stack[0], []
    for weights in (tuple(WEIGHTS), (0.0, 0.0)):
        for t in free_tokens(stack, weights=weights)[0][2:]:
            text = tok.decode([t]).strip()
            if text and text.isascii() and len(text) >= 2:
                out.append(text[:2])
                break
        else:
            pytest.fail(f"no ASCII token in the free run with weights {weights} to stop at")
    return out


def matrix(stack) -> dict[str, dict]:
    """Each argument alone, and three realistic combinations."""
    tok, base, guides, ids, mask = stack
    free, plain = free_tokens(stack), free_tokens(stack, weights=(0.0, 0.0))
    early = free[0][1]  # row 0 emits it at step 1: min_new_tokens has something to hold back
    width = ids.shape[1]
    stop = stop_strings(stack)
    return {
        "max_new_tokens": dict(max_new_tokens=9),
        "max_length": dict(max_length=width + 7),
        "min_new_tokens": dict(max_new_tokens=12, min_new_tokens=8, eos_token_id=early),
        "min_length": dict(max_new_tokens=12, min_length=width + 6, eos_token_id=early),
        "eos_token_id list": dict(max_new_tokens=12, eos_token_id=[early, free[1][3]], pad_token_id=2),
        "repetition_penalty": dict(max_new_tokens=12, repetition_penalty=1.3),
        "no_repeat_ngram_size": dict(max_new_tokens=12, no_repeat_ngram_size=2),
        "bad_words_ids": dict(max_new_tokens=12, bad_words_ids=[[free[0][0]], [free[1][0], free[1][1]]]),
        "suppress_tokens": dict(max_new_tokens=10, suppress_tokens=[free[0][0], free[2][0]]),
        "begin_suppress_tokens": dict(max_new_tokens=10, begin_suppress_tokens=[free[0][0], free[3][0]]),
        "sequence_bias": dict(max_new_tokens=10, sequence_bias={(free[0][2],): -10.0, (free[1][0], 9): 4.0}),
        "renormalize_logits": dict(max_new_tokens=8, renormalize_logits=True),
        # eos 1 never comes: it makes transformers pad the rows a stop ended, so the stop shows
        "stop_strings": dict(max_new_tokens=12, stop_strings=stop, tokenizer=tok, eos_token_id=1),
        "output_scores": dict(max_new_tokens=6, return_dict_in_generate=True, output_scores=True),
        "output_logits": dict(max_new_tokens=6, return_dict_in_generate=True, output_logits=True),
        "logits_processor": dict(max_new_tokens=8, logits_processor=[BiasToken(free[2][1], 6.0)]),
        "stopping_criteria": dict(max_new_tokens=12, stopping_criteria=[StopAfterToken([free[1][4], plain[2][3]], width)],
                                  eos_token_id=1),
        "generation_config": dict(generation_config=GenerationConfig(max_new_tokens=8, repetition_penalty=1.2)),
        "chat": dict(max_new_tokens=16, repetition_penalty=1.1, min_new_tokens=8, eos_token_id=early,
                     stop_strings=stop, tokenizer=tok),
        "constrained": dict(max_new_tokens=12, no_repeat_ngram_size=3, bad_words_ids=[[free[0][0]]],
                            suppress_tokens=[free[3][0]], return_dict_in_generate=True, output_scores=True,
                            output_logits=True),
        "config and lists": dict(generation_config=GenerationConfig(max_length=width + 10, renormalize_logits=True,
                                                                    sequence_bias={(free[1][2],): -3.0}),
                                 logits_processor=[BiasToken(free[0][3], 2.0)],
                                 stopping_criteria=[StopAfterToken([free[2][2]], width)],
                                 return_dict_in_generate=True, output_scores=True),
    }


def hf_reference(stack, args: dict, weights) -> object:
    """``base.generate`` with the fusion as a logits processor, first of the user's processors."""
    tok, base, guides, ids, mask = stack
    args = dict(args)
    processors = list(args.pop("logits_processor", []))
    if weights is not None:
        fusion = mogen.MultiObjectiveLogitsProcessor(guides, weights)
        fusion.set_attention_mask(mask)
        processors = [fusion, *processors]
    return base.generate(ids, attention_mask=mask, do_sample=False, logits_processor=processors, **args)


def run_mogen(stack, args: dict, weights):
    tok, base, guides, ids, mask = stack
    return mogen.generate(base, ids, mask, guides=guides, weights=weights, **args)


def sequences(out):
    return out if isinstance(out, torch.Tensor) else out.sequences


MATRIX_NAMES = ["max_new_tokens", "max_length", "min_new_tokens", "min_length", "eos_token_id list",
                "repetition_penalty", "no_repeat_ngram_size", "bad_words_ids", "suppress_tokens",
                "begin_suppress_tokens", "sequence_bias", "renormalize_logits", "stop_strings", "output_scores",
                "output_logits", "logits_processor", "stopping_criteria", "generation_config", "chat",
                "constrained", "config and lists"]


@pytest.mark.parametrize("name", MATRIX_NAMES)
def test_zero_weights_give_base_generate(stack, name):
    args = matrix(stack)[name]
    expected = hf_reference(stack, args, None)
    out = run_mogen(stack, args, [0.0, 0.0])
    assert torch.equal(sequences(out), sequences(expected))


@pytest.mark.parametrize("name", MATRIX_NAMES)
def test_weights_give_base_generate_with_the_processor(stack, name):
    args = matrix(stack)[name]
    expected = hf_reference(stack, args, WEIGHTS)
    out = run_mogen(stack, args, WEIGHTS)
    assert torch.equal(sequences(out), sequences(expected))
    if not args.get("return_dict_in_generate"):
        assert isinstance(out, torch.Tensor)
        return
    for field in ("scores", "logits"):
        ours, theirs = getattr(out, field), getattr(expected, field)
        assert (ours is None) == (theirs is None), field
        if theirs is not None:
            assert len(ours) == len(theirs)
            for a, b in zip(ours, theirs):
                assert torch.equal(a, b), field


def test_the_matrix_changes_the_output(stack):
    """Each processor argument does something here (else its equality above would prove little)."""
    plain = sequences(run_mogen(stack, dict(max_new_tokens=12), WEIGHTS))
    m = matrix(stack)
    for name in ["min_new_tokens", "repetition_penalty", "no_repeat_ngram_size", "bad_words_ids",
                 "suppress_tokens", "sequence_bias", "stop_strings", "logits_processor", "stopping_criteria",
                 "chat", "constrained"]:
        out = sequences(run_mogen(stack, m[name], WEIGHTS))
        width = min(out.shape[1], plain.shape[1])
        assert not torch.equal(out[:, :width], plain[:, :width]) or out.shape != plain.shape, name


# --------------------------------------------------------------------------- sampling


SAMPLED = {
    "top_k=50 (the default)": dict(),
    "temperature": dict(temperature=0.7),
    "top_k": dict(top_k=5),
    "top_p": dict(top_p=0.8, top_k=0),
    "min_p": dict(min_p=0.1),
    "typical_p": dict(typical_p=0.9),
    "epsilon_cutoff": dict(epsilon_cutoff=3e-4),
    "eta_cutoff": dict(eta_cutoff=3e-4),
    "top_h": dict(top_h=0.5),
    "num_return_sequences": dict(num_return_sequences=3),
    "chat": dict(repetition_penalty=1.1, min_new_tokens=4, temperature=0.8, top_p=0.9, num_return_sequences=2,
                 return_dict_in_generate=True, output_scores=True, output_logits=True),
}


@pytest.mark.parametrize("name", list(SAMPLED))
def test_sampling_runs_with_the_documented_shapes(stack, name):
    tok, base, guides, ids, mask = stack
    args = dict(SAMPLED[name], do_sample=True, max_new_tokens=6)
    gen = torch.Generator().manual_seed(0)
    out = mogen.generate(base, ids, mask, guides=guides, weights=WEIGHTS, generator=gen, **args)
    seq = sequences(out)
    rows = ids.shape[0] * args.get("num_return_sequences", 1)
    assert seq.shape[0] == rows and ids.shape[1] < seq.shape[1] <= ids.shape[1] + 6
    repeat = args.get("num_return_sequences", 1)
    assert torch.equal(seq[:, :ids.shape[1]], ids.repeat_interleave(repeat, dim=0))
    if args.get("output_scores"):
        steps = seq.shape[1] - ids.shape[1]
        assert len(out.scores) == steps and len(out.logits) == steps
        assert all(s.shape == (rows, len(tok)) for s in out.scores)
        # every drawn token had a finite score
        for t, s in enumerate(out.scores):
            assert torch.isfinite(s.gather(1, seq[:, ids.shape[1] + t, None])).all()
    again = mogen.generate(base, ids, mask, guides=guides, weights=WEIGHTS, generator=torch.Generator().manual_seed(0),
                           **args)
    assert torch.equal(sequences(again), seq)


def test_sampled_top_k_1_is_greedy(stack):
    tok, base, guides, ids, mask = stack
    greedy = mogen.generate(base, ids, mask, guides=guides, weights=WEIGHTS, max_new_tokens=8)
    sampled = mogen.generate(base, ids, mask, guides=guides, weights=WEIGHTS, max_new_tokens=8, do_sample=True,
                             top_k=1, generator=torch.Generator().manual_seed(3))
    assert torch.equal(greedy, sampled)


def test_num_return_sequences_keeps_each_prompts_weights(stack):
    """Row ``b * n + j`` is prompt ``b`` with prompt ``b``'s weights: rows drawn alone agree with the batch."""
    tok, base, guides, ids, mask = stack
    per_prompt = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [2.0, -1.0]])
    out = mogen.generate(base, ids, mask, guides=guides, weights=per_prompt, do_sample=True, top_k=1,
                         num_return_sequences=2, max_new_tokens=8)
    for b in range(ids.shape[0]):
        alone = mogen.generate(base, ids, mask, guides=guides, weights=per_prompt[b].tolist(), max_new_tokens=8)
        for j in range(2):
            row = out[2 * b + j]
            assert torch.equal(row[: alone.shape[1]], alone[b]), (b, j)


# --------------------------------------------------------------------------- every GenerationConfig field


def field_samples(stack) -> dict[str, dict]:
    """A value that asks for something, for every field (with what it needs to act)."""
    tok, base, guides, ids, mask = stack
    free = free_tokens(stack)
    width = ids.shape[1]
    eos = dict(eos_token_id=free[0][1])
    return {
        "max_length": dict(max_length=width + 5),
        "max_new_tokens": dict(max_new_tokens=5),
        "min_length": dict(min_length=width + 6, **eos),
        "min_new_tokens": dict(min_new_tokens=6, **eos),
        "max_time": dict(max_time=60.0),
        "stop_strings": dict(stop_strings=stop_strings(stack), tokenizer=tok, eos_token_id=1),
        "eos_token_id": dict(eos_token_id=[free[0][1], free[1][2]]),
        "pad_token_id": dict(pad_token_id=3, **eos),
        "bos_token_id": dict(bos_token_id=1),
        "decoder_start_token_id": dict(decoder_start_token_id=1),
        "early_stopping": dict(early_stopping=True),
        "do_sample": dict(do_sample=True),
        "num_beams": dict(num_beams=2),
        "num_beam_groups": dict(num_beam_groups=2),
        "penalty_alpha": dict(penalty_alpha=0.6, top_k=4),
        "dola_layers": dict(dola_layers="low"),
        "use_cache": dict(use_cache=False),
        "cache_implementation": dict(cache_implementation="static"),
        "cache_config": dict(cache_config={"max_cache_len": 64}),
        "max_cache_len": dict(max_cache_len=64),
        "prefill_chunk_size": dict(prefill_chunk_size=4),
        "compile_config": dict(compile_config=CompileConfig()),
        "disable_compile": dict(disable_compile=True),
        "continuous_batching_config": dict(continuous_batching_config={"max_batch_tokens": 64}),
        "temperature": dict(temperature=0.7, do_sample=True),
        "top_k": dict(top_k=5, do_sample=True),
        "top_p": dict(top_p=0.8, do_sample=True),
        "top_h": dict(top_h=0.5, do_sample=True),
        "min_p": dict(min_p=0.1, do_sample=True),
        "typical_p": dict(typical_p=0.9, do_sample=True),
        "epsilon_cutoff": dict(epsilon_cutoff=3e-4, do_sample=True),
        "eta_cutoff": dict(eta_cutoff=3e-4, do_sample=True),
        "repetition_penalty": dict(repetition_penalty=1.5),
        "encoder_repetition_penalty": dict(encoder_repetition_penalty=1.5),
        "length_penalty": dict(length_penalty=0.5),
        "no_repeat_ngram_size": dict(no_repeat_ngram_size=2),
        "encoder_no_repeat_ngram_size": dict(encoder_no_repeat_ngram_size=2),
        "bad_words_ids": dict(bad_words_ids=[[free[0][0]]]),
        "force_words_ids": dict(force_words_ids=[[free[0][0]]]),
        "constraints": dict(constraints=["a constraint object"]),
        "forced_bos_token_id": dict(forced_bos_token_id=5),
        "forced_eos_token_id": dict(forced_eos_token_id=7),
        "remove_invalid_values": dict(remove_invalid_values=True),
        "exponential_decay_length_penalty": dict(exponential_decay_length_penalty=(2, 1.5), **eos),
        "suppress_tokens": dict(suppress_tokens=[free[0][0], free[1][0]]),
        "begin_suppress_tokens": dict(begin_suppress_tokens=[free[0][0]]),
        "sequence_bias": dict(sequence_bias={(free[0][0],): -10.0}),
        "guidance_scale": dict(guidance_scale=1.5),
        "diversity_penalty": dict(diversity_penalty=0.5),
        "low_memory": dict(low_memory=True),
        "renormalize_logits": dict(renormalize_logits=True),
        "watermarking_config": dict(watermarking_config=WatermarkingConfig(bias=2.5)),
        "token_healing": dict(token_healing=True, tokenizer=tok),
        "num_return_sequences": dict(num_return_sequences=2, do_sample=True),
        "return_dict_in_generate": dict(return_dict_in_generate=True),
        "output_scores": dict(return_dict_in_generate=True, output_scores=True),
        "output_logits": dict(return_dict_in_generate=True, output_logits=True),
        "output_attentions": dict(return_dict_in_generate=True, output_attentions=True),
        "output_hidden_states": dict(return_dict_in_generate=True, output_hidden_states=True),
        "prompt_lookup_num_tokens": dict(prompt_lookup_num_tokens=3),
        "assistant_early_exit": dict(assistant_early_exit=1),
        "speculation_type": dict(speculation_type="dflash"),
        "use_mtp": dict(use_mtp=True),
        "num_assistant_tokens": dict(num_assistant_tokens=5),
        "num_assistant_tokens_schedule": dict(num_assistant_tokens_schedule="heuristic"),
        "assistant_confidence_threshold": dict(assistant_confidence_threshold=0.3),
        "assistant_lookbehind": dict(assistant_lookbehind=5),
        "target_lookbehind": dict(target_lookbehind=5),
        "max_matching_ngram_size": dict(max_matching_ngram_size=3),
        "assistant_ensemble_weight": dict(assistant_ensemble_weight=0.5),
        "is_assistant": dict(is_assistant=True),
    }


BOOKKEEPING = {"transformers_version", "_from_model_config"}


def test_the_table_covers_every_generation_config_field():
    fields = set(GenerationConfig().to_dict())
    assert fields - set(FIELDS) == set(), "GenerationConfig fields mogen's table does not classify"
    assert set(FIELDS) - fields == set(), "fields in mogen's table that this transformers does not have"
    assert {s.status for s in FIELDS.values()} | {s.status for s in CALL_ARGUMENTS.values()} <= {
        HONOURED, NO_EFFECT, REFUSED}


@pytest.mark.parametrize("name", sorted(set(FIELDS) - BOOKKEEPING))
def test_every_field_is_honoured_or_refused(stack, name):
    """Refused: an error naming the field. Otherwise greedy fields equal transformers' result (its error too,
    when transformers refuses the value), sampled ones run and return transformers' shapes."""
    tok, base, guides, ids, mask = stack
    args = dict(max_new_tokens=6)
    args.update(field_samples(stack)[name])
    if FIELDS[name].status == REFUSED:
        with pytest.raises(ValueError, match=name):
            run_mogen(stack, args, WEIGHTS)
        return
    if args.get("do_sample"):
        out = run_mogen(stack, dict(args, generator=torch.Generator().manual_seed(1)), WEIGHTS)
        rows = ids.shape[0] * args.get("num_return_sequences", 1)
        assert sequences(out).shape[0] == rows
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            expected = hf_reference(stack, args, WEIGHTS)
        except (ValueError, TypeError) as err:
            with pytest.raises(type(err), match=None) as ours:
                run_mogen(stack, args, WEIGHTS)
            assert str(ours.value) == str(err)
            return
        out = run_mogen(stack, args, WEIGHTS)
    assert torch.equal(sequences(out), sequences(expected))
    if args.get("return_dict_in_generate"):
        for field in ("scores", "logits"):
            ours, theirs = getattr(out, field), getattr(expected, field)
            assert (ours is None) == (theirs is None)
            if theirs is not None:
                assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


@pytest.mark.parametrize("name,value", [("assistant_model", "draft"), ("synced_gpus", True),
                                        ("custom_generate", "repo/x"), ("trust_remote_code", True)])
def test_refused_call_arguments_are_named(stack, name, value):
    with pytest.raises(ValueError, match=name):
        run_mogen(stack, {name: value, "max_new_tokens": 4}, WEIGHTS)


def test_num_beams_names_both_alternatives(stack):
    with pytest.raises(ValueError, match=r"num_beams=4 .*mogen\.search.*base\.generate\(num_beams=.*"
                                         r"MultiObjectiveLogitsProcessor"):
        run_mogen(stack, dict(num_beams=4, max_new_tokens=4), WEIGHTS)


def test_unknown_kwargs_are_named(stack):
    with pytest.raises(TypeError, match=r"\['repetition_penalt'\]"):
        run_mogen(stack, dict(repetition_penalt=1.2, max_new_tokens=4), WEIGHTS)


def test_full_row_only_when_needed(stack):
    """The fused top-k path serves greedy and temperature/top-k/top-p sampling; a processor after the fusion,
    another warper or returned scores take the full row."""
    from mogen.decoding.arguments import plan_generation, prepare_config

    tok, base, guides, ids, mask = stack

    def full_row(**kw):
        config, dmax, dmin = prepare_config(base, kw.pop("generation_config", None), dict(max_new_tokens=4, **kw))
        return plan_generation(base, config, ids, mask, default_max_length=dmax, default_min_length=dmin,
                               prompt_ids=ids, tokenizer=tok).full_row

    assert not full_row()
    assert not full_row(repetition_penalty=1.2, no_repeat_ngram_size=2)  # before the fusion: raw logits
    assert not full_row(do_sample=True, temperature=0.7, top_k=20, top_p=0.9)
    assert full_row(do_sample=True, min_p=0.1)
    assert full_row(renormalize_logits=True)
    assert full_row(return_dict_in_generate=True, output_scores=True)


def test_readme_table_is_the_support_table():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert support_markdown() in readme


def test_stop_strings_with_a_real_tokenizer():
    """GPT-2's own tokenizer (byte-level, 50257 tokens): stop strings end rows where transformers ends them,
    with and without guides."""
    from real_tokenizers import real_tokenizer

    tok = real_tokenizer("gpt-2")
    vocab = len(tok)
    base = tiny_llama(vocab, 0, hidden=16, layers=1)
    guides = [proxy_guide(vocab, 10, hidden=16, layers=1), proxy_guide(vocab, 20, hidden=16, layers=1)]
    tok.pad_token = tok.eos_token
    enc = tok(["The river runs past the old mill", "Hello"], return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    stack = (tok, base, guides, ids, mask)
    stops = []
    for weights in (WEIGHTS, [0.0, 0.0]):
        out = mogen.generate(base, ids, mask, guides=guides, weights=weights, max_new_tokens=10)
        text = tok.decode(out[0, ids.shape[1] + 3:ids.shape[1] + 5])
        assert text, "the free run gave no text to stop at"
        stops.append(text)
    args = dict(max_new_tokens=10, stop_strings=stops, tokenizer=tok, eos_token_id=tok.eos_token_id)
    for weights in (WEIGHTS, None):
        expected = hf_reference(stack, args, weights)
        out = run_mogen(stack, args, weights if weights is not None else [0.0, 0.0])
        assert torch.equal(out, expected)
        assert out.shape[1] < ids.shape[1] + 10 or (out[0, -1] == tok.eos_token_id)


def test_transformers_warns_about_a_missing_mask_only_when_it_is_missing(stack):
    """An unpadded batch with its mask gets no "attention mask ... not set" warning; without one, the same
    warning as base.generate."""
    from transformers.testing_utils import CaptureLogger
    from transformers.utils import logging as hf_logging

    tok, base, guides, ids, mask = stack
    full = ids[:, -2:]  # no row padded
    logger = hf_logging.get_logger("transformers.generation.utils")
    with CaptureLogger(logger) as given:
        mogen.generate(base, full, torch.ones_like(full), guides=guides, weights=WEIGHTS, max_new_tokens=2,
                       eos_token_id=1)
    assert "attention mask" not in given.out
    with CaptureLogger(logger) as missing:
        mogen.generate(base, full, guides=guides, weights=WEIGHTS, max_new_tokens=2, eos_token_id=1)
    with CaptureLogger(logger) as theirs:
        base.generate(full, max_new_tokens=2, eos_token_id=1)
    # (transformers says some of these once per process, so only the first line is compared)
    assert "attention mask" in missing.out and missing.out.splitlines()[0] == theirs.out.splitlines()[0]
