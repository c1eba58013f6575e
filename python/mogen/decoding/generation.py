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

from typing import Any, Callable, Optional, Sequence, Union

import torch

from .binding import Guidance, bind_guides
from .checks import TokenIds, check_devices, check_left_padding, check_prompt, finite_number, id_list
from .guides import Guide, logits_width
from .models import LMRunner, context_length, output_device
from .sampling import TokenSelector

__all__ = ["generate", "check_devices", "check_left_padding"]


def _check_base(base: Any) -> None:
    if not (isinstance(base, torch.nn.Module) and hasattr(base, "config")):
        raise TypeError(f"base must be a transformers causal LM, got {type(base).__name__}")
    if getattr(base.config, "is_encoder_decoder", False):
        raise ValueError("base is an encoder-decoder model; mogen.generate drives decoder-only LMs")


def base_vocab_size(base: Any, tokenizer: Any) -> int:
    """The vocabulary the fused scores cover: the tokenizer's (padded LM-head rows excluded), else the head's."""
    width = logits_width(base)
    if tokenizer is None:
        return width
    size = len(tokenizer)
    if size > width:
        raise ValueError(f"the tokenizer has {size} tokens but the base model's LM head only {width}")
    return size


def check_context(models: dict[str, torch.nn.Module], longest: int, max_new_tokens: int) -> None:
    """Prompt plus ``max_new_tokens`` within the context of every model that reads the base's ids."""
    for name, model in models.items():
        limit = context_length(model)
        if limit is None:
            continue
        if longest > limit:
            raise ValueError(f"the prompt has {longest} tokens but {name}'s context is {limit} tokens")
        if longest + max_new_tokens > limit:
            raise ValueError(
                f"the prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) exceeds {name}'s context "
                f"of {limit} tokens; lower max_new_tokens"
            )


def special_ids(base: Any, eos_token_id: TokenIds, pad_token_id: Optional[int],
                device: torch.device) -> tuple[Optional[torch.Tensor], Optional[int]]:
    """``(eos ids tensor or None, pad id or None)`` with ``transformers``' defaults from the generation config."""
    gen_cfg = getattr(base, "generation_config", None)
    if eos_token_id is None and gen_cfg is not None:
        eos_token_id = gen_cfg.eos_token_id
    eos = id_list(eos_token_id, "eos_token_id")
    if pad_token_id is None and gen_cfg is not None:
        pad_token_id = gen_cfg.pad_token_id
    if pad_token_id is None and eos is not None:  # as transformers does
        pad_token_id = eos[0]
    if isinstance(pad_token_id, (list, tuple)):
        pad_token_id = pad_token_id[0]
    eos_t = None if eos is None else torch.tensor(eos, dtype=torch.long, device=device)
    return eos_t, None if pad_token_id is None else int(pad_token_id)


class _Decoding:
    """One ``generate`` call: the base's runner, the bound guides, the sampler and the loop."""

    def __init__(self, base: Any, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor], *,
                 guides: Any, tokenizer: Any, weights: Any, beta: float, gamma: float, max_new_tokens: int,
                 selector_args: dict, eos_token_id: TokenIds, pad_token_id: Optional[int]) -> None:
        _check_base(base)
        self.device = output_device(base)
        self.input_ids, self.prompt_mask, self.padded = check_prompt(input_ids, attention_mask, self.device)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
        self.max_new_tokens = max_new_tokens
        self.vocab_size = base_vocab_size(base, tokenizer)
        self.guidance: Guidance = bind_guides(
            guides, weights, batch=self.input_ids.shape[0], tokenizer=tokenizer, vocab_size=self.vocab_size,
            device=self.device, beta=finite_number(beta, "beta"), gamma=finite_number(gamma, "gamma"),
        )
        check_devices({"base": base, **self.guidance.models})
        longest = int(self.prompt_mask.sum(dim=1).max())
        check_context({"base": base, **self.guidance.lockstep_models}, longest, max_new_tokens)
        self.eos, self.pad_token_id = special_ids(base, eos_token_id, pad_token_id, self.device)
        self.selector = TokenSelector(self.vocab_size, device=self.device, **selector_args)
        self.base = LMRunner(base, self.vocab_size, "base")
        self.runners = self.guidance.runners
        self.fusion = self.guidance.fusion

    @property
    def cross(self) -> list:
        """The groups of guide runners that read text through their own tokenizer."""
        return self.runners.cross

    def _select(self, base_logits: torch.Tensor) -> torch.Tensor:
        step = self.fusion.step(base_logits)
        return self.selector(step.full, step.topk)

    def run(self, streamer: Any = None, observer: Optional[Callable[["_Decoding", int], None]] = None) -> torch.Tensor:
        ids = self.input_ids
        batch, length = ids.shape
        steps = self.max_new_tokens
        if streamer is not None:
            streamer.put(ids.cpu())
        if steps == 0:
            if streamer is not None:
                streamer.end()
            return ids
        mask_full: Optional[torch.Tensor] = None
        if self.padded:
            mask_full = torch.ones(batch, length + steps, dtype=torch.long, device=self.device)
            mask_full[:, :length] = self.prompt_mask
        positions = (self.prompt_mask.cumsum(-1) - 1).clamp(min=0)
        prompt_mask = mask_full[:, :length] if mask_full is not None else None
        base_logits = self.base.forward(ids, prompt_mask, positions)[:, -1]
        self.runners.prefill(ids, prompt_mask, positions, self.prompt_mask)
        if observer is not None:
            observer(self, -1)
        next_pos = positions[:, -1:] + 1
        unfinished = torch.ones(batch, dtype=torch.bool, device=self.device)
        pad = None if self.pad_token_id is None else torch.full((batch,), self.pad_token_id, device=self.device)
        out: list[torch.Tensor] = []
        for step in range(steps):
            tokens = self._select(base_logits)
            if self.eos is not None:
                if pad is not None:
                    tokens = torch.where(unfinished, tokens, pad)
                unfinished = unfinished & ~torch.isin(tokens, self.eos)
            out.append(tokens)
            if streamer is not None:
                streamer.put(tokens.cpu())
            if step == steps - 1:
                break
            if self.eos is not None and not bool(unfinished.any()):  # the one sync per step
                break
            cur_mask = mask_full[:, : length + step + 1] if mask_full is not None else None
            base_logits = self.base.forward(tokens.unsqueeze(1), cur_mask, next_pos)[:, -1]
            self.runners.step(tokens, cur_mask, next_pos, unfinished)
            next_pos = next_pos + 1
            if observer is not None:
                observer(self, step)
        if streamer is not None:
            streamer.end()
        return torch.cat([ids, torch.stack(out, dim=1)], dim=1)


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
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    eos_token_id: TokenIds = None,
    pad_token_id: Optional[int] = None,
    streamer: Any = None,
    generator: Optional[torch.Generator] = None,
    _observer: Optional[Callable[[Any, int], None]] = None,
) -> torch.Tensor:
    """Decode with ``base`` steered by weighted guides; ``[B, T + new]`` token ids.

    Drop-in for ``base.generate(input_ids, attention_mask=..., ...)``: left
    padding, a row ends at ``eos_token_id`` and is then filled with
    ``pad_token_id``, generation stops when every row has ended, ``streamer``
    (e.g. ``transformers.TextStreamer``) gets the prompt then each new token.

    Args:
        base: the strong causal LM (``transformers``), in eval mode.
        input_ids: ``[B, T]`` prompt ids, left-padded.
        attention_mask: ``[B, T]`` 1 for real tokens, 0 for left padding.
        guides: :class:`mogen.ProxyGuide` / :class:`mogen.ValueGuide` or a list
            mixing them (may be empty).
        tokenizer: the base's tokenizer. Required when a guide has its own
            tokenizer; also limits scores to its real vocabulary.
        weights: ``[M]`` for all rows or ``[B, M]`` per row, one column per
            guide in order (a batch may serve users with different
            preferences); default: the guides' weights. A guide with weight 0
            on every row is not run.
        beta: scale of the proxy guides' log-ratios (docs/design.md section 1).
        gamma: scale of the value guides' ``Q`` (MAGE eq. 25); 0 turns them off.
        max_new_tokens: at most this many tokens are appended.
        do_sample: sample instead of greedy argmax.
        temperature: sampling temperature of the fused distribution
            ``softmax(s / temperature)``.
        top_k, top_p: sampling filters (see :mod:`mogen.decoding.sampling`).
        eos_token_id: int or list; default ``base.generation_config``'s.
        pad_token_id: fills rows that ended; default from the generation
            config, else the first eos id (as in ``transformers``).
        streamer: object with ``put(tensor)`` / ``end()``.
        generator: ``torch.Generator`` (on the base's device) for reproducible sampling.

    Returns:
        LongTensor ``[B, T + n]`` on the base's output device, ``n <= max_new_tokens``.

    Raises:
        ValueError / TypeError with the problem named: a guide with its own
        tokenizer and no ``tokenizer``, weights of the wrong shape or not
        finite, non-finite ``beta`` / ``gamma``, a prompt (plus
        ``max_new_tokens``) longer than a model's context, models on different
        devices without ``device_map``, right padding, bad sampling options.
    """
    selector_args = dict(do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
    with torch.no_grad():
        decoding = _Decoding(
            base, input_ids, attention_mask, guides=guides, tokenizer=tokenizer, weights=weights, beta=beta,
            gamma=gamma, max_new_tokens=max_new_tokens, selector_args=selector_args, eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
        )
        return decoding.run(streamer, _observer)
