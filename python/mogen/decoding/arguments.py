"""``model.generate``'s arguments for mogen's decoders, through transformers' own machinery.

:func:`plan_generation` does what ``model.generate`` does before its loop, with
transformers' own (private) steps, so the same call gets the same
``GenerationConfig``, the same validation, the same errors and warnings:

1. the model's ``generation_config`` updated with the call's kwargs (or the
   ``generation_config`` argument), validated;
2. special tokens, ``max_length`` from ``max_new_tokens``, length checks;
3. transformers' logits processors with the fusion where a
   ``logits_processor=[MultiObjectiveLogitsProcessor(...)]`` would sit (first
   of the user's processors), and transformers' stopping criteria.

The processor list is then cut at the fusion: ``pre`` runs on the base's raw
logits (float32, as transformers hands them to processors), ``post`` (the
user's processors, the warpers, ``renormalize_logits``) on the fused scores.
When ``post`` holds only temperature / top-k / top-p and no scores are
returned, :class:`~mogen.decoding.sampling.TokenSelector` does them on the
fused top-k (kernel K1's top-k path) and the full fused row is never built;
anything else gets the full row, and only then.

:data:`~mogen.decoding.argument_support.FIELDS` says, for every ``GenerationConfig``
field, how mogen treats it (the README table is written from it). A field mogen cannot honour is refused
by name with the alternative, never dropped.

:func:`mogen.search` takes the same processors and stopping criteria where they
mean something for chunks (:func:`prepare_search_config`,
``argument_support.SEARCH_FIELDS`` / ``SEARCH_CALL_ARGUMENTS``): they act on the
token-level proposal its chunks are drawn from, and a stopping criterion ends
a candidate as an eos would. Its ``GenerationConfig`` holds only the call's
arguments: it keeps its own ``temperature`` / ``top_k`` / ``top_p`` and
``max_new_tokens`` and reads nothing from the model's ``generation_config``
but eos and pad.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteriaList
from transformers.generation.logits_process import (
    EncoderNoRepeatNGramLogitsProcessor,
    EncoderRepetitionPenaltyLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria

from .argument_support import CALL_ARGUMENTS, FIELDS, REFUSED, SEARCH_CALL_ARGUMENTS, SEARCH_FIELDS, Support
from .sampling import check_sampling_values

__all__ = ["GenerationPlan", "plan_generation", "prepare_config", "prepare_search_config", "refuse_call_arguments"]

class _FusionSlot(LogitsProcessor):
    """Marks where the fusion sits in transformers' processor list; never called."""

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise RuntimeError("the fusion slot is a marker")


#: The warpers :class:`~mogen.decoding.sampling.TokenSelector` applies itself, in transformers' order.
_SELECTOR_WARPERS = (TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)


@dataclass
class GenerationPlan:
    """What one ``generate`` call does besides the fusion, from transformers' ``GenerationConfig``.

    Attributes:
        config: the prepared ``GenerationConfig`` (``max_length`` is prompt + new tokens).
        pre: processors on the base's float32 logits ``[B, V]`` before the fusion.
        post: processors on the fused scores ``[B, V]``, when the full row is needed (else empty).
        selector: ``temperature`` / ``top_k`` / ``top_p`` for the selector (the fused top-k path).
        criteria: stopping criteria other than the length and eos ones (called every step).
        max_new_tokens: new tokens at most (from ``max_length`` and every length criterion).
        eos, pad_token_id: the eos ids ``[E]`` (or None) and the pad id (or None).
        pad_finished: rows that stopped get the pad id (transformers does so when an eos criterion exists).
        full_row: whether the fused row is built every step.
        scores, logits, return_dict: what the call returns besides the sequences.
    """

    config: GenerationConfig
    pre: list
    post: list
    selector: dict
    criteria: list
    max_new_tokens: int
    eos: Optional[torch.Tensor]
    pad_token_id: Optional[int]
    pad_finished: bool
    full_row: bool
    scores: bool = False
    logits: bool = False
    return_dict: bool = False

    @property
    def needs_ids(self) -> bool:
        """Whether a processor or criterion reads the rows' ids (else a driver need not build them)."""
        return bool(self.pre or self.post or self.criteria)

    def process_base(self, ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """``pre`` on a float32 copy of the base's logits ``[B, V]`` (transformers hands its processors a float32
        copy); ``ids [B, T + t]`` are each row's prompt (padded) and its tokens so far."""
        scores = logits.to(dtype=torch.float32, copy=True)
        for p in self.pre:
            scores = p(ids, scores)
        return scores

    def process_fused(self, ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """``post`` on the fused scores ``[B, V]``."""
        for p in self.post:
            scores = p(ids, scores)
        return scores

    def stopped(self, ids: torch.Tensor, scores: Optional[tuple] = None) -> torch.Tensor:
        """Rows ``[B]`` (bool) that one of ``criteria`` stops, given ``ids [B, T + t]`` (the new token included)."""
        done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        for criterion in self.criteria:
            done = done | criterion(ids, scores).to(done.device)
        return done

    def reorder(self, index: torch.Tensor) -> None:
        """Row ``r`` becomes old row ``index[r]`` in the per-row state transformers' processors keep (chunk search
        reorders and duplicates its rows; the processors are built for the prompts' rows).

        Which processors keep per-row state is transformers' detail, read here: the repetition penalty's prompt
        padding, the encoder processors' prompt ids and n-grams. ``prefix_allowed_tokens_fn`` maps rows to
        prompts itself (see :func:`mogen.search`); guidance_scale and watermarks are refused there.
        """
        for p in (*self.pre, *self.post):
            if isinstance(p, RepetitionPenaltyLogitsProcessor) and isinstance(p.prompt_ignore_length, torch.Tensor):
                p.prompt_ignore_length = p.prompt_ignore_length.index_select(
                    0, index.to(p.prompt_ignore_length.device))
            elif isinstance(p, EncoderRepetitionPenaltyLogitsProcessor):
                p.encoder_input_ids = p.encoder_input_ids.index_select(0, index.to(p.encoder_input_ids.device))
            elif isinstance(p, EncoderNoRepeatNGramLogitsProcessor):
                p.generated_ngrams = [p.generated_ngrams[i] for i in index.tolist()]
                p.batch_size = len(p.generated_ngrams)


def _differs(config: GenerationConfig, name: str, defaults: dict[str, Any]) -> bool:
    """Whether field ``name`` asks for something: not unset (None / False) and not transformers' global default."""
    value = getattr(config, name, None)
    if name == "use_cache":
        return value is False
    if value is None or value is False:
        return False
    return name not in defaults or value != defaults[name]


def _refuse_fields(config: GenerationConfig, table: dict[str, Support] = FIELDS,
                   caller: str = "mogen.generate", own: tuple[str, ...] = ()) -> None:
    """A refused field that asks for something is an error; ``own``: fields the caller set itself."""
    defaults = GenerationConfig()._get_default_generation_params()
    for name in config.to_dict():
        if name in own:
            continue
        support = table.get(name)
        if support is None:
            if _differs(config, name, defaults):
                raise ValueError(
                    f"{name}={getattr(config, name)!r}: mogen does not know this GenerationConfig field (newer "
                    "transformers than mogen's table, decoding/argument_support.py); drop it or use base.generate")
            continue
        if support.status == REFUSED and _differs(config, name, defaults):
            raise ValueError(f"{name}={getattr(config, name)!r} is not supported by {caller}: {support.how}")


def refuse_call_arguments(given: dict[str, Any], table: dict[str, Support] = CALL_ARGUMENTS,
                          caller: str = "mogen.generate") -> None:
    """Refused ``model.generate`` arguments (``assistant_model``, ``synced_gpus``, ...) given a value."""
    for name, value in given.items():
        if value is None or value is False:
            continue
        support = table[name]
        if support.status == REFUSED:
            raise ValueError(f"{name} is not supported by {caller}: {support.how}")


def prepare_config(base: Any, generation_config: Optional[GenerationConfig], kwargs: dict[str, Any]
                   ) -> tuple[GenerationConfig, bool, bool]:
    """transformers' ``GenerationConfig`` for this call, checked; ``(config, default max length, default min length)``.

    Raises TypeError naming kwargs that are neither mogen's nor ``GenerationConfig`` fields (transformers would
    pass them to the model's forward; mogen does not).
    """
    if generation_config is not None and not isinstance(generation_config, GenerationConfig):
        raise TypeError(f"generation_config must be a transformers.GenerationConfig, got "
                        f"{type(generation_config).__name__}")
    if not hasattr(base, "_prepare_generation_config"):
        raise TypeError(f"base must be a transformers causal LM with generate() (GenerationMixin), got "
                        f"{type(base).__name__}")
    own = getattr(base, "generation_config", None) or GenerationConfig()
    default_max = (kwargs.get("max_length") is None and (generation_config is None or generation_config.max_length
                   is None) and own.max_length is None)
    default_min = (kwargs.get("min_length") is None and (generation_config is None or generation_config.min_length
                   is None) and own.min_length is None)
    config, model_kwargs = base._prepare_generation_config(generation_config, **kwargs)
    model_kwargs = {k: v for k, v in model_kwargs.items() if k not in ("output_attentions", "output_hidden_states")}
    if model_kwargs:
        raise TypeError(
            f"unexpected keyword argument(s) {sorted(model_kwargs)}: neither mogen.generate's arguments nor "
            "GenerationConfig fields (mogen passes no extra kwargs to the models' forward)")
    _refuse_fields(config)
    if config.do_sample:  # values transformers would drop without a word (top_p=1.5 builds no warper)
        check_sampling_values(config.temperature, config.top_k, config.top_p)
    return config, default_max, default_min


def prepare_search_config(kwargs: dict[str, Any], *, temperature: Any, top_k: Any, top_p: Any,
                          max_new_tokens: Optional[int], eos: Optional[torch.Tensor], pad_token_id: Optional[int]
                          ) -> tuple[GenerationConfig, bool]:
    """transformers' ``GenerationConfig`` of one :func:`mogen.search` call; ``(config, default min length)``.

    It holds only the call's arguments: ``kwargs`` (``GenerationConfig`` fields), the search's own
    ``temperature`` / ``top_k`` / ``top_p`` (``do_sample`` is always True: chunks are sampled) and
    ``max_new_tokens`` (None: ``max_length`` must say), and the eos ids ``[E]`` / pad id already resolved.
    Nothing comes from the model's ``generation_config``, nor transformers' global defaults (``top_k=50``), so
    the proposal is what the search's arguments say.

    Raises ValueError naming a refused argument and its alternative (:data:`SEARCH_FIELDS`,
    :data:`SEARCH_CALL_ARGUMENTS`), TypeError naming kwargs that are neither.
    """
    refuse_call_arguments({k: v for k, v in kwargs.items() if k in SEARCH_CALL_ARGUMENTS}, SEARCH_CALL_ARGUMENTS,
                          "mogen.search")
    fields = {k: v for k, v in kwargs.items() if k not in SEARCH_CALL_ARGUMENTS}
    # Refused whatever their value: a num_beams given to a beam search reads as its width, and do_sample
    # False asks for greedy chunks, which top_k=1 gives.
    if fields.get("num_beams") is not None:
        raise ValueError(f"num_beams={fields['num_beams']!r} is not supported by mogen.search: "
                         f"{SEARCH_FIELDS['num_beams'].how}")
    if fields.get("do_sample") is not None and not fields["do_sample"]:
        raise ValueError(f"do_sample={fields['do_sample']!r} is not supported by mogen.search: "
                         f"{SEARCH_FIELDS['do_sample'].how}")
    fields.pop("num_beams", None)
    fields.pop("do_sample", None)
    check_sampling_values(temperature, top_k, top_p)
    config = GenerationConfig()
    own = dict(do_sample=True, temperature=float(temperature), top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens,
               eos_token_id=None if eos is None else eos.tolist(), pad_token_id=pad_token_id, num_beams=1,
               num_return_sequences=1)
    for name, value in own.items():  # set before the kwargs, so transformers validates them against these
        setattr(config, name, value)
    unknown = config.update(**fields)
    if unknown:
        raise TypeError(
            f"unexpected keyword argument(s) {sorted(unknown)}: neither mogen.search's arguments nor "
            "GenerationConfig fields")
    _refuse_fields(config, SEARCH_FIELDS, "mogen.search", own=("do_sample",))
    return config, fields.get("min_length") is None


def _split_at_fusion(processors: LogitsProcessorList) -> tuple[list, list]:
    at = next(i for i, p in enumerate(processors) if isinstance(p, _FusionSlot))
    return list(processors[:at]), list(processors[at + 1:])


def _selector_args(post: list) -> Optional[dict]:
    """``post`` as TokenSelector arguments when it holds only temperature, top-k, top-p (in that order) with
    their default keep counts; else None (the full row is needed)."""
    args: dict[str, Any] = {}
    rank = -1
    for p in post:
        kinds = [i for i, kind in enumerate(_SELECTOR_WARPERS) if type(p) is kind]
        if not kinds or kinds[0] <= rank:
            return None
        rank = kinds[0]
        if isinstance(p, TemperatureLogitsWarper):
            args["temperature"] = float(p.temperature)
        elif p.min_tokens_to_keep != 1 or p.filter_value != float("-inf"):
            return None
        elif isinstance(p, TopKLogitsWarper):
            args["top_k"] = int(p.top_k)
        else:
            args["top_p"] = float(p.top_p)
    return args


def plan_generation(
    base: Any,
    config: GenerationConfig,
    input_ids: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    *,
    default_max_length: bool,
    default_min_length: bool,
    prompt_ids: torch.Tensor,
    logits_processor: Optional[list] = None,
    stopping_criteria: Optional[list] = None,
    prefix_allowed_tokens_fn: Optional[Callable] = None,
    negative_prompt_ids: Optional[torch.Tensor] = None,
    negative_prompt_attention_mask: Optional[torch.Tensor] = None,
    tokenizer: Any = None,
    mask_given: bool = True,
) -> GenerationPlan:
    """The processors, criteria and lengths of a call on ``input_ids [B', T]`` (rows already repeated for
    ``num_return_sequences``; ``prompt_ids`` are the rows as given, which transformers' encoder processors read).
    ``attention_mask`` is None when no row is padded, as transformers passes it; ``mask_given`` says whether the
    caller passed one (transformers warns about a batch without one, and so does this)."""
    device = input_ids.device
    batch, length = input_ids.shape
    base._prepare_special_tokens(config, mask_given, device=device, batch_size=batch)
    base._prepare_generated_length(
        generation_config=config, has_default_max_length=default_max_length,
        has_default_min_length=default_min_length, model_input_name="input_ids", input_ids_length=length,
        inputs_tensor=input_ids)
    base._validate_generated_length(config, length, default_max_length)
    custom = LogitsProcessorList([_FusionSlot(), *(logits_processor or [])])
    processors = base._get_logits_processor(
        generation_config=config, input_ids_seq_length=length, encoder_input_ids=prompt_ids,
        prefix_allowed_tokens_fn=prefix_allowed_tokens_fn, logits_processor=custom, device=device,
        model_kwargs={"attention_mask": attention_mask}, negative_prompt_ids=negative_prompt_ids,
        negative_prompt_attention_mask=negative_prompt_attention_mask)
    pre, post = _split_at_fusion(processors)
    criteria_all = base._get_stopping_criteria(config, StoppingCriteriaList(stopping_criteria or []),
                                               tokenizer=tokenizer)
    limit, eos, criteria = None, None, []
    for c in criteria_all:
        if type(c) is MaxLengthCriteria:
            limit = c.max_length if limit is None else min(limit, c.max_length)
        elif type(c) is EosTokenCriteria:
            eos = c.eos_token_id if eos is None else torch.cat([eos, c.eos_token_id.to(eos.device)]).unique()
        else:
            criteria.append(c)
    if limit is None:  # transformers always builds one from max_length
        raise ValueError("no max_length: set max_new_tokens")
    scores, logits = bool(config.return_dict_in_generate and config.output_scores), bool(
        config.return_dict_in_generate and config.output_logits)
    selector = None if scores else _selector_args(post)
    pad = config._pad_token_tensor
    return GenerationPlan(
        config=config, pre=pre, post=[] if selector is not None else post, selector=selector or {},
        criteria=criteria, max_new_tokens=max(limit - length, 0), eos=None if eos is None else eos.to(device),
        pad_token_id=None if pad is None else int(pad.reshape(-1)[0]),
        pad_finished=any(hasattr(c, "eos_token_id") for c in criteria_all), full_row=selector is None,
        scores=scores, logits=logits,
        return_dict=bool(config.return_dict_in_generate))


def check_mode(config: GenerationConfig) -> None:
    """Greedy or sampling only (the refusals above name the alternatives; this is the backstop)."""
    mode = config.get_generation_mode()
    if getattr(mode, "value", str(mode)) not in ("greedy_search", "sample"):
        raise ValueError(f"mogen.generate runs greedy decoding or sampling; this GenerationConfig asks for "
                         f"{getattr(mode, 'value', mode)}. Use mogen.search for beams")
