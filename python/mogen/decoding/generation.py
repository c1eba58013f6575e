"""``mogen.generate``: token-level multi-objective decoding (MPAW eq. 12, MAGE eq. 25, docs/design.md section 1).

Every step, for every row ``b`` and base token ``v``::

    s(v) = log_softmax(z_b)(v) + beta * sum_i w[b, i] * (log p_ei(m_i(v)) - log p_ri(m_i(v)))
                               + gamma * sum_j u[b, j] * Q_j(m_j(v))

then the next token is ``argmax s`` (greedy) or a draw from
``softmax(s / temperature)`` after top-k / top-p. ``m_i`` is the identity for a
guide that shares the base's tokenizer and a :func:`mogen.vocab.build_vocab_map`
map otherwise.

This module is the token-level *driver* (layer 3 of docs/design.md section 2): it
feeds the base and the guides' runners (:mod:`mogen.decoding.runners`) and asks
the fused terms (:mod:`mogen.decoding.terms`) for the next token's scores.

How the loop is built (and why):

- every model keeps its own :class:`~transformers.DynamicCache` and runs one
  forward per step for the whole batch; a guide whose weight is 0 on every row
  is never run;
- left padding follows ``transformers``: position ids are ``cumsum(mask) - 1``
  at prefill and count on by one per step; the mask is dropped when no row is
  padded (as ``generate`` does, so all-zero weights give its tokens exactly);
- fusion and top-k go through :mod:`mogen.ops` (the compiled kernel, or the
  reference); greedy asks for the single best id, never the full row;
- the only host synchronisation per step is the "all rows finished" check (and
  the new tokens themselves when a streamer or a guide with its own tokenizer
  needs them on the host);
- a guide with its own tokenizer reads the generated text: see
  :mod:`mogen.decoding.crossguide` and :mod:`mogen.decoding.retokenize` (where
  the approximation lies).
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import torch

from transformers.generation.utils import GenerateDecoderOnlyOutput

from .arguments import GenerationPlan, check_mode, plan_generation, prepare_config, refuse_call_arguments
from .checks import check_devices, check_left_padding, check_prompt
from .guides import Guide
from .models import output_device
from .sampling import TokenSelector, sample_indices
from .session import DecodingSession, check_base, open_session

__all__ = ["generate", "observe_steps", "check_devices", "check_left_padding"]


#: A callback ``(decoding, step)`` after every step, for tests that inspect the runners mid-call; set with
#: :func:`observe_steps`, never through ``generate``'s signature.
_STEP_OBSERVER: ContextVar[Optional[Callable[[Any, int], None]]] = ContextVar("mogen_step_observer", default=None)


@contextmanager
def observe_steps(observer: Callable[[Any, int], None]) -> Iterator[None]:
    """Within the block, every :func:`generate` call reports each step to ``observer(decoding, step)``
    (step -1 after the prefill). A test hook: what it sees is internal and may change."""
    token = _STEP_OBSERVER.set(observer)
    try:
        yield
    finally:
        _STEP_OBSERVER.reset(token)


class _Decoding:
    """One ``generate`` call: a thin loop over a :class:`~mogen.decoding.session.DecodingSession`."""

    def __init__(self, session: DecodingSession, plan: GenerationPlan, selector: TokenSelector) -> None:
        self.session = session
        self.plan = plan
        self.selector = selector
        self.runners = session.runners
        self.fusion = session.fusion
        self.scores: list[torch.Tensor] = []
        self.logits: list[torch.Tensor] = []

    @property
    def cross(self) -> list:
        """The groups of guide runners that read text through their own tokenizer."""
        return self.runners.cross

    def _select(self, base_logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The next token of every row; ``ids [B, T + t]`` is what transformers' processors read."""
        plan = self.plan
        if plan.logits:
            self.logits.append(base_logits.to(dtype=torch.float32, copy=True))
        if plan.pre or plan.logits:  # the fusion reads the float32 copy transformers' processors get
            base_logits = plan.process_base(ids, base_logits)
        step = self.fusion.step(base_logits)
        if not plan.full_row:
            return self.selector(step.full, step.topk)
        scores = plan.process_fused(ids, step.full())
        if plan.scores:
            self.scores.append(scores)
        if plan.config.do_sample:
            return sample_indices(scores, self.selector.generator)
        return torch.argmax(scores, dim=-1)

    def run(self, streamer: Any = None, observer: Optional[Callable[["_Decoding", int], None]] = None) -> torch.Tensor:
        s, plan = self.session, self.plan
        ids, steps = s.input_ids, plan.max_new_tokens
        batch, length = ids.shape
        if streamer is not None:
            streamer.put(ids.cpu())
        seq = torch.empty(batch, length + steps, dtype=torch.long, device=s.device)
        seq[:, :length] = ids
        base_logits = s.prefill()
        if observer is not None:
            observer(self, -1)
        unfinished = torch.ones(batch, dtype=torch.bool, device=s.device)
        stops = s.eos is not None or bool(plan.criteria)
        pad = None
        if plan.pad_finished and s.pad_token_id is not None:
            pad = torch.full((batch,), s.pad_token_id, device=s.device)
        end = length
        for step in range(steps):
            tokens = self._select(base_logits, seq[:, :end])
            if pad is not None:
                tokens = torch.where(unfinished, tokens, pad)
            seq[:, end] = tokens
            end += 1
            if s.eos is not None:
                unfinished = unfinished & ~torch.isin(tokens, s.eos)
            if plan.criteria:
                scores = tuple(self.scores) if plan.scores else None
                unfinished = unfinished & ~plan.stopped(seq[:, :end], scores).to(unfinished.device)
            if streamer is not None:
                streamer.put(tokens.cpu())
            if step == steps - 1:
                break
            if stops and not bool(unfinished.any()):  # the one sync per step
                break
            base_logits = s.advance(tokens, unfinished)
            if observer is not None:
                observer(self, step)
        if streamer is not None:
            streamer.end()
        return seq[:, :end]

    def output(self, sequences: torch.Tensor) -> Any:
        """``sequences``, or transformers' ``GenerateDecoderOnlyOutput`` when the call asked for a dict."""
        if not self.plan.return_dict:
            return sequences
        base = self.session.base
        return GenerateDecoderOnlyOutput(
            sequences=sequences, scores=tuple(self.scores) if self.plan.scores else None,
            logits=tuple(self.logits) if self.plan.logits else None, attentions=None, hidden_states=None,
            cache=None if base is None else base.cache)


def _repeat_rows(value: Any, repeat: int) -> Any:
    """``[B, ...]`` rows repeated ``repeat`` times each, in place (as transformers expands ``num_return_sequences``)."""
    if repeat == 1 or value is None:
        return value
    return torch.as_tensor(value).repeat_interleave(repeat, dim=0)


def _per_row_weights(weights: Any, repeat: int) -> Any:
    if repeat == 1 or weights is None or isinstance(weights, (int, float)):
        return weights
    w = torch.as_tensor(weights, dtype=torch.float64)
    return w.repeat_interleave(repeat, dim=0) if w.dim() == 2 else weights


def generate(
    base: Any,
    input_ids: torch.Tensor,
    attention_mask: Optional[torch.Tensor] = None,
    *,
    guides: Union[Guide, Sequence[Guide], None],
    tokenizer: Any = None,
    weights: Any = None,
    beta: float = 1.0,
    gamma: float = 1.0,
    generation_config: Any = None,
    logits_processor: Optional[list] = None,
    stopping_criteria: Optional[list] = None,
    prefix_allowed_tokens_fn: Optional[Callable] = None,
    negative_prompt_ids: Optional[torch.Tensor] = None,
    negative_prompt_attention_mask: Optional[torch.Tensor] = None,
    streamer: Any = None,
    generator: Optional[torch.Generator] = None,
    assistant_model: Any = None,
    synced_gpus: Optional[bool] = None,
    custom_generate: Any = None,
    trust_remote_code: Optional[bool] = None,
    **kwargs: Any,
) -> Any:
    """Decode with ``base`` steered by weighted guides; ``[B * num_return_sequences, T + new]`` token ids.

    Drop-in for ``base.generate(input_ids, attention_mask=..., **kwargs)``: the
    same ``GenerationConfig`` (the base's ``generation_config`` updated with
    ``generation_config`` and the kwargs, with transformers' validation and
    errors), transformers' own logits processors and stopping criteria, the
    same defaults (``max_length`` 20 in all, ``top_k`` 50 when sampling, unless
    the model's generation config says otherwise). Every step::

        scores = transformers' processors (repetition_penalty, min_new_tokens, ...)(base logits)
        scores = fusion(scores)      # docs/design.md section 1, where logits_processor=[MultiObjectiveLogitsProcessor]
        scores = logits_processor(scores), then temperature / top-k / top-p / ... when sampling
        token  = argmax(scores), or a draw from softmax(scores) with ``generator``

    so with greedy decoding the tokens (and ``output_scores``) equal
    ``base.generate(..., logits_processor=[MultiObjectiveLogitsProcessor(guides, weights, ...)])``
    for guides that share the base's tokenizer. Left padding; a row ends at an
    eos id (then filled with ``pad_token_id``) or a stopping criterion; generation
    stops when every row has ended. :data:`mogen.decoding.argument_support.FIELDS` lists
    every ``GenerationConfig`` field as honoured, without effect (as in
    transformers) or refused with the alternative (``num_beams > 1``: use
    :func:`mogen.search`).

    Args:
        base: the strong causal LM (``transformers``), in eval mode.
        input_ids: ``[B, T]`` prompt ids, left-padded.
        attention_mask: ``[B, T]`` 1 for real tokens, 0 for left padding.
        guides: :class:`mogen.ProxyGuide` / :class:`mogen.ValueGuide` or a list
            mixing them (may be empty).
        tokenizer: the base's tokenizer. Required when a guide has its own
            tokenizer and for ``stop_strings``; also limits scores to its real vocabulary.
        weights: ``[M]`` for all rows or ``[B, M]`` per prompt row, one column per
            guide in order (a batch may serve users with different
            preferences); default: the guides' weights. A guide with weight 0
            on every row is not run. With ``num_return_sequences`` each
            returned row keeps its prompt's weights.
        beta: scale of the proxy guides' log-ratios (docs/design.md section 1).
        gamma: scale of the value guides' ``Q`` (MAGE eq. 25); 0 turns them off.
        generation_config, logits_processor, stopping_criteria, prefix_allowed_tokens_fn,
        negative_prompt_ids, negative_prompt_attention_mask: as in ``model.generate``;
            ``logits_processor`` runs on the fused scores.
        streamer: object with ``put(tensor)`` / ``end()`` (e.g. ``transformers.TextStreamer``).
        generator: ``torch.Generator`` (on the base's device) for reproducible sampling.
        **kwargs: ``GenerationConfig`` fields: ``max_new_tokens``, ``max_length``,
            ``do_sample``, ``temperature``, ``top_k``, ``top_p``, ``min_p``,
            ``repetition_penalty``, ``no_repeat_ngram_size``, ``bad_words_ids``,
            ``min_new_tokens``, ``stop_strings``, ``eos_token_id``, ``pad_token_id``,
            ``num_return_sequences``, ``return_dict_in_generate``, ``output_scores``,
            ``output_logits``, ...

    Returns:
        LongTensor ``[B * num_return_sequences, T + n]`` on the base's output device, or, with
        ``return_dict_in_generate=True``, a ``transformers`` ``GenerateDecoderOnlyOutput``:
        ``sequences``, ``scores`` (``n`` tensors ``[B', V]``: the fused scores after every processor),
        ``logits`` (``n`` tensors ``[B', V]``: the base's raw logits), ``cache`` (the base's).

    Raises:
        ValueError / TypeError with the problem named: transformers' own errors for
        the generation config; a refused argument (its name and the alternative);
        an unknown kwarg; a guide with its own tokenizer and no ``tokenizer``,
        weights of the wrong shape or not finite, non-finite ``beta`` / ``gamma``,
        a prompt (plus the new tokens) longer than a model's context, models on
        different devices without ``device_map``, right padding.
    """
    refuse_call_arguments(dict(assistant_model=assistant_model, synced_gpus=synced_gpus,
                               custom_generate=custom_generate, trust_remote_code=trust_remote_code))
    check_base(base)
    config, default_max, default_min = prepare_config(base, generation_config, kwargs)
    check_mode(config)
    with torch.no_grad():
        device = output_device(base)
        ids, mask, padded = check_prompt(input_ids, attention_mask, device)
        repeat = int(config.num_return_sequences or 1)
        rows, row_mask = _repeat_rows(ids, repeat), _repeat_rows(mask, repeat)
        plan = plan_generation(
            base, config, rows, row_mask if padded else None, default_max_length=default_max,
            default_min_length=default_min, prompt_ids=ids, logits_processor=logits_processor,
            stopping_criteria=stopping_criteria, prefix_allowed_tokens_fn=prefix_allowed_tokens_fn,
            negative_prompt_ids=negative_prompt_ids, negative_prompt_attention_mask=negative_prompt_attention_mask,
            tokenizer=tokenizer, mask_given=attention_mask is not None)
        session = open_session(
            base, rows, row_mask, guides=guides, tokenizer=tokenizer, weights=_per_row_weights(weights, repeat),
            beta=beta, gamma=gamma, max_new_tokens=plan.max_new_tokens, special=(plan.eos, plan.pad_token_id))
        selector = TokenSelector(session.vocab_size, do_sample=bool(config.do_sample), device=session.device,
                                 generator=generator, **plan.selector)
        decoding = _Decoding(session, plan, selector)
        return decoding.output(decoding.run(streamer, _STEP_OBSERVER.get()))
