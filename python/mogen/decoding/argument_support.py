"""How mogen's decoders treat each of ``model.generate``'s arguments: one table per driver.

:data:`FIELDS` classifies every ``GenerationConfig`` field of the transformers
version mogen is tested with, :data:`CALL_ARGUMENTS` ``model.generate``'s own
arguments, for :func:`mogen.generate`; :data:`SEARCH_FIELDS` and
:data:`SEARCH_CALL_ARGUMENTS` do the same for :func:`mogen.search`. Each entry
is honoured (transformers' own code does it), without effect (as in
transformers), or refused with the alternative. :mod:`mogen.decoding.arguments`
refuses from these tables, and :func:`support_markdown` writes the README's
tables from them.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["HONOURED", "NO_EFFECT", "REFUSED", "Support", "FIELDS", "CALL_ARGUMENTS", "SEARCH_FIELDS",
           "SEARCH_CALL_ARGUMENTS", "support_markdown"]

HONOURED, NO_EFFECT, REFUSED = "honoured", "no effect", "refused"


class Support(NamedTuple):
    """How mogen treats one argument: ``status`` (honoured / no effect / refused) and why or how."""

    status: str
    how: str


_BEAMS = ("only beam search reads it and mogen.generate refuses num_beams > 1; transformers warns and ignores it "
          "without beams, and so does mogen")
_ASSIST = "only assisted decoding reads it (refused, see assistant_model); no effect otherwise, as in transformers"
_PROCESSOR = "transformers' logits processor, applied to the base's logits before the fusion"
_WARPER = "transformers' warper, applied to the fused scores when sampling"
_STOP = "transformers' stopping criterion"
_NO_CACHE_CHOICE = "mogen keeps one DynamicCache per model (base and every guide); drop it"

#: Every ``GenerationConfig`` field of the transformers version mogen is tested with, and how mogen treats it.
FIELDS: dict[str, Support] = {
    # what the length and the end are
    "max_length": Support(HONOURED, _STOP + " (prompt + new tokens)"),
    "max_new_tokens": Support(HONOURED, "as max_length = prompt + max_new_tokens"),
    "min_length": Support(HONOURED, _PROCESSOR + " (eos banned until reached)"),
    "min_new_tokens": Support(HONOURED, _PROCESSOR + " (eos banned until reached)"),
    "max_time": Support(HONOURED, _STOP),
    "stop_strings": Support(HONOURED, _STOP + "; needs tokenizer="),
    "eos_token_id": Support(HONOURED, "int or list; rows that end are filled with pad_token_id"),
    "pad_token_id": Support(HONOURED, "fills rows that ended; defaults to the first eos id"),
    "bos_token_id": Support(NO_EFFECT, "transformers only uses it to start an empty prompt; mogen needs input_ids"),
    "decoder_start_token_id": Support(NO_EFFECT, "encoder-decoder models only; mogen drives decoder-only LMs"),
    "early_stopping": Support(NO_EFFECT, _BEAMS),
    # how the next token is chosen
    "do_sample": Support(HONOURED, "greedy argmax of the fused scores, or a draw from them (mogen's generator)"),
    "num_beams": Support(REFUSED, "values > 1: use mogen.search (chunk-level beams), or base.generate(num_beams=..., "
                                  "logits_processor=[mogen.MultiObjectiveLogitsProcessor(...)]) for token beams"),
    "num_beam_groups": Support(NO_EFFECT, _BEAMS),
    "penalty_alpha": Support(REFUSED, "contrastive search needs the base's hidden states of every candidate; "
                                      "not a mode mogen runs"),
    "dola_layers": Support(REFUSED, "DoLa contrasts the base's own layers; not a mode mogen runs"),
    "use_cache": Support(REFUSED, "False: " + _NO_CACHE_CHOICE),
    "cache_implementation": Support(REFUSED, _NO_CACHE_CHOICE),
    "cache_config": Support(REFUSED, _NO_CACHE_CHOICE),
    "max_cache_len": Support(REFUSED, "static caches only; " + _NO_CACHE_CHOICE),
    "prefill_chunk_size": Support(REFUSED, "mogen prefills each model in one forward; drop it"),
    "compile_config": Support(REFUSED, "mogen does not compile the models' forward; drop it"),
    "disable_compile": Support(HONOURED, "mogen never compiles the forward"),
    "continuous_batching_config": Support(REFUSED, "continuous batching is not a mode mogen runs; batch the rows"),
    # what the scores become
    "temperature": Support(HONOURED, _WARPER),
    "top_k": Support(HONOURED, _WARPER + " (on the fused top-k, kernel K1, when nothing needs the full row)"),
    "top_p": Support(HONOURED, _WARPER),
    "top_h": Support(HONOURED, _WARPER + " (full fused row)"),
    "min_p": Support(HONOURED, _WARPER + " (full fused row)"),
    "typical_p": Support(HONOURED, _WARPER + " (full fused row)"),
    "epsilon_cutoff": Support(HONOURED, _WARPER + " (full fused row)"),
    "eta_cutoff": Support(HONOURED, _WARPER + " (full fused row)"),
    "repetition_penalty": Support(HONOURED, _PROCESSOR),
    "encoder_repetition_penalty": Support(HONOURED, _PROCESSOR + " (the prompt, as transformers does for "
                                                                  "decoder-only models)"),
    "length_penalty": Support(NO_EFFECT, _BEAMS),
    "no_repeat_ngram_size": Support(HONOURED, _PROCESSOR),
    "encoder_no_repeat_ngram_size": Support(HONOURED, _PROCESSOR + " (the prompt)"),
    "bad_words_ids": Support(HONOURED, _PROCESSOR),
    "force_words_ids": Support(REFUSED, "constrained beam search; use mogen.search or bad_words_ids / sequence_bias"),
    "constraints": Support(REFUSED, "constrained beam search; use mogen.search or bad_words_ids / sequence_bias"),
    "forced_bos_token_id": Support(HONOURED, _PROCESSOR),
    "forced_eos_token_id": Support(HONOURED, _PROCESSOR),
    "remove_invalid_values": Support(HONOURED, _PROCESSOR),
    "exponential_decay_length_penalty": Support(HONOURED, _PROCESSOR),
    "suppress_tokens": Support(HONOURED, _PROCESSOR),
    "begin_suppress_tokens": Support(HONOURED, _PROCESSOR),
    "sequence_bias": Support(HONOURED, _PROCESSOR),
    "guidance_scale": Support(HONOURED, _PROCESSOR + " (classifier-free guidance on the base; negative_prompt_ids)"),
    "diversity_penalty": Support(NO_EFFECT, _BEAMS),
    "low_memory": Support(NO_EFFECT, _BEAMS),
    "renormalize_logits": Support(HONOURED, "transformers' LogitNormalization, last, on the fused scores"),
    "watermarking_config": Support(HONOURED, "transformers' watermark processor, on the fused scores"),
    "token_healing": Support(REFUSED, "heal the prompt first: base.heal_tokens(input_ids, tokenizer)"),
    # what is returned
    "num_return_sequences": Support(HONOURED, "rows repeated, each keeping its prompt's weights row"),
    "return_dict_in_generate": Support(HONOURED, "a GenerateDecoderOnlyOutput"),
    "output_scores": Support(HONOURED, "the fused scores after every processor, per step ([B, V] each)"),
    "output_logits": Support(HONOURED, "the base's raw logits, per step"),
    "output_attentions": Support(REFUSED, "mogen does not keep the models' attentions; run base(sequences, "
                                          "output_attentions=True) on the result"),
    "output_hidden_states": Support(REFUSED, "mogen does not keep hidden states; run base(sequences, "
                                             "output_hidden_states=True) on the result"),
    # assisted / speculative decoding
    "prompt_lookup_num_tokens": Support(REFUSED, "prompt-lookup decoding would have to steer its drafts too; "
                                                 "not a mode mogen runs"),
    "assistant_early_exit": Support(REFUSED, "self-speculative decoding is not a mode mogen runs"),
    "speculation_type": Support(REFUSED, "speculative decoding is not a mode mogen runs"),
    "use_mtp": Support(REFUSED, "multi-token prediction drafts are not a mode mogen runs"),
    "num_assistant_tokens": Support(NO_EFFECT, _ASSIST),
    "num_assistant_tokens_schedule": Support(NO_EFFECT, _ASSIST),
    "assistant_confidence_threshold": Support(NO_EFFECT, _ASSIST),
    "assistant_lookbehind": Support(NO_EFFECT, _ASSIST),
    "target_lookbehind": Support(NO_EFFECT, _ASSIST),
    "max_matching_ngram_size": Support(NO_EFFECT, _ASSIST),
    "assistant_ensemble_weight": Support(NO_EFFECT, _ASSIST),
    "is_assistant": Support(REFUSED, "mogen.generate is not an assistant model's generate"),
    # bookkeeping
    "transformers_version": Support(NO_EFFECT, "bookkeeping"),
    "_from_model_config": Support(NO_EFFECT, "bookkeeping"),
}

#: ``model.generate``'s own arguments (not ``GenerationConfig`` fields).
CALL_ARGUMENTS: dict[str, Support] = {
    "generation_config": Support(HONOURED, "the base's generation_config updated with it, then with the kwargs"),
    "logits_processor": Support(HONOURED, "after the fusion: they see the fused scores; a processor of a type "
                                          "transformers also builds replaces it, as in transformers"),
    "stopping_criteria": Support(HONOURED, "merged with transformers' criteria, as in transformers"),
    "prefix_allowed_tokens_fn": Support(HONOURED, _PROCESSOR),
    "negative_prompt_ids": Support(HONOURED, "with guidance_scale"),
    "negative_prompt_attention_mask": Support(HONOURED, "with guidance_scale"),
    "streamer": Support(HONOURED, "gets the prompt, then each new token"),
    "tokenizer": Support(HONOURED, "the base's tokenizer (stop_strings; guides with their own tokenizer)"),
    "assistant_model": Support(REFUSED, "assisted decoding would need the draft steered too; not a mode mogen runs"),
    "synced_gpus": Support(REFUSED, "True: mogen.generate runs on one process"),
    "custom_generate": Support(REFUSED, "a custom decoding loop replaces mogen's; call it on the base instead"),
    "trust_remote_code": Support(REFUSED, "only for custom_generate"),
}

# -- mogen.search: what the same arguments mean for chunks ------------------------------------------------------

_ON_PROPOSAL = "transformers' logits processor, on the base's logits before the proposal's fusion"
_SEARCH_OWN = "mogen.search's own argument, on the proposal (never read from the model's generation_config)"
_SEARCH_WARPER = "transformers' warper, on the proposal's full fused row (after temperature / top-k / top-p)"
_SEARCH_STOP = "transformers' stopping criterion: a candidate it stops ends there, as at eos"
_TOKEN_BEAMS = ("token-level beam search's; mogen.search's beams end at eos or a stopping criterion and are ranked "
                "by their summed scores (docs/design.md section 1.5): drop it")
_RETURN_BEAMS = ("return_scores=True returns a SearchOutput: the sequences and every final beam with its score and "
                 "per-guide terms")

#: How :func:`mogen.search` treats every ``GenerationConfig`` field (where it differs from :data:`FIELDS`).
SEARCH_FIELDS: dict[str, Support] = {**FIELDS, **{
    "max_length": Support(HONOURED, _STOP + " (prompt + new tokens), instead of max_new_tokens"),
    "max_new_tokens": Support(HONOURED, "mogen.search's own argument (default 128)"),
    "min_length": Support(HONOURED, _ON_PROPOSAL + " (eos banned until reached)"),
    "min_new_tokens": Support(HONOURED, _ON_PROPOSAL + " (eos banned until reached)"),
    "max_time": Support(HONOURED, _SEARCH_STOP),
    "stop_strings": Support(HONOURED, _SEARCH_STOP + "; needs tokenizer="),
    "eos_token_id": Support(HONOURED, "mogen.search's own argument (default: the base's generation_config); a "
                                      "beam ends there"),
    "pad_token_id": Support(HONOURED, "mogen.search's own argument; pads the returned sequences on the right"),
    "early_stopping": Support(REFUSED, _TOKEN_BEAMS),
    "num_beam_groups": Support(REFUSED, _TOKEN_BEAMS),
    "length_penalty": Support(REFUSED, _TOKEN_BEAMS),
    "diversity_penalty": Support(REFUSED, _TOKEN_BEAMS),
    "low_memory": Support(REFUSED, _TOKEN_BEAMS),
    "do_sample": Support(REFUSED, "False: chunks are always sampled; top_k=1 gives greedy chunks"),
    "num_beams": Support(REFUSED, "mogen.search's beams are beam_width= (chunk-level, expansion= chunks each); "
                                  "for token beams use base.generate(num_beams=..., "
                                  "logits_processor=[mogen.MultiObjectiveLogitsProcessor(...)])"),
    "temperature": Support(HONOURED, _SEARCH_OWN),
    "top_k": Support(HONOURED, _SEARCH_OWN + " (on the fused top-k, kernel K1, when nothing needs the full row)"),
    "top_p": Support(HONOURED, _SEARCH_OWN),
    "top_h": Support(HONOURED, _SEARCH_WARPER),
    "min_p": Support(HONOURED, _SEARCH_WARPER),
    "typical_p": Support(HONOURED, _SEARCH_WARPER),
    "epsilon_cutoff": Support(HONOURED, _SEARCH_WARPER),
    "eta_cutoff": Support(HONOURED, _SEARCH_WARPER),
    "repetition_penalty": Support(HONOURED, _ON_PROPOSAL),
    "encoder_repetition_penalty": Support(HONOURED, _ON_PROPOSAL + " (the prompt)"),
    "no_repeat_ngram_size": Support(HONOURED, _ON_PROPOSAL + " (the prompt and the beam's tokens)"),
    "encoder_no_repeat_ngram_size": Support(HONOURED, _ON_PROPOSAL + " (the prompt)"),
    "bad_words_ids": Support(HONOURED, _ON_PROPOSAL),
    "force_words_ids": Support(REFUSED, "constrained beam search is not a mode mogen runs; bad_words_ids, "
                                        "sequence_bias or prefix_allowed_tokens_fn steer the proposal"),
    "constraints": Support(REFUSED, "constrained beam search is not a mode mogen runs; bad_words_ids, "
                                    "sequence_bias or prefix_allowed_tokens_fn steer the proposal"),
    "forced_bos_token_id": Support(HONOURED, _ON_PROPOSAL),
    "forced_eos_token_id": Support(HONOURED, _ON_PROPOSAL + " (eos at the last new token: the beam ends there)"),
    "remove_invalid_values": Support(HONOURED, _ON_PROPOSAL),
    "exponential_decay_length_penalty": Support(HONOURED, _ON_PROPOSAL),
    "suppress_tokens": Support(HONOURED, _ON_PROPOSAL),
    "begin_suppress_tokens": Support(HONOURED, _ON_PROPOSAL),
    "sequence_bias": Support(HONOURED, _ON_PROPOSAL),
    "guidance_scale": Support(REFUSED, "classifier-free guidance keeps its own cache per row, which beam selection "
                                       "does not reorder; use mogen.generate"),
    "renormalize_logits": Support(HONOURED, "transformers' LogitNormalization on the proposal's fused row (the draw "
                                            "normalises anyway; the beams' scores are the models' own)"),
    "watermarking_config": Support(REFUSED, "beams are kept by their score, not drawn from the watermarked "
                                            "distribution, so the watermark would not hold; use mogen.generate"),
    "num_return_sequences": Support(REFUSED, "values > 1: " + _RETURN_BEAMS + " (beam_width per prompt)"),
    "return_dict_in_generate": Support(REFUSED, _RETURN_BEAMS),
    "output_scores": Support(REFUSED, _RETURN_BEAMS),
    "output_logits": Support(REFUSED, _RETURN_BEAMS),
    "is_assistant": Support(REFUSED, "mogen.search is not an assistant model's generate"),
}}

#: ``model.generate``'s own arguments in :func:`mogen.search`.
SEARCH_CALL_ARGUMENTS: dict[str, Support] = {**CALL_ARGUMENTS, **{
    "generation_config": Support(REFUSED, "pass its fields as keyword arguments: mogen.search reads no generation "
                                          "config (temperature, top_k, top_p and max_new_tokens are its own)"),
    "logits_processor": Support(HONOURED, "after the fusion, on the proposal's scores of every live row [R, V]; a "
                                          "processor of a type transformers also builds replaces it"),
    "stopping_criteria": Support(HONOURED, "called every token on every live row (scores=None); a candidate it "
                                           "stops ends there, as at eos"),
    "prefix_allowed_tokens_fn": Support(HONOURED, _ON_PROPOSAL + "; batch_id is the row's prompt"),
    "negative_prompt_ids": Support(REFUSED, "only with guidance_scale, which mogen.search refuses"),
    "negative_prompt_attention_mask": Support(REFUSED, "only with guidance_scale, which mogen.search refuses"),
    "streamer": Support(REFUSED, "on_round= gets every chunk round (mogen search on the command line streams the "
                                 "best beam with it)"),
    "synced_gpus": Support(REFUSED, "True: mogen.search runs on one process"),
}}
assert set(SEARCH_FIELDS) == set(FIELDS) and set(SEARCH_CALL_ARGUMENTS) == set(CALL_ARGUMENTS)


def support_markdown(driver: str = "generate") -> str:
    """The README's table of ``model.generate`` arguments in ``mogen.generate`` or (``driver="search"``)
    ``mogen.search``."""
    if driver not in ("generate", "search"):
        raise ValueError(f"driver must be 'generate' or 'search', got {driver!r}")
    tables = (CALL_ARGUMENTS, FIELDS) if driver == "generate" else (SEARCH_CALL_ARGUMENTS, SEARCH_FIELDS)
    lines = [f"| argument | in mogen.{driver} | how / why |", "|---|---|---|"]
    for table in tables:
        for name, s in table.items():
            if name.startswith("_") or name == "transformers_version":
                continue
            lines.append(f"| `{name}` | {s.status} | {s.how} |")
    return "\n".join(lines) + "\n"

