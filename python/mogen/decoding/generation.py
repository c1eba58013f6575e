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

from .checks import TokenIds, check_devices, check_left_padding
from .guides import Guide
from .sampling import TokenSelector
from .session import DecodingSession, open_session

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

    def __init__(self, session: DecodingSession, selector: TokenSelector) -> None:
        self.session = session
        self.selector = selector
        self.runners = session.runners
        self.fusion = session.fusion

    @property
    def cross(self) -> list:
        """The groups of guide runners that read text through their own tokenizer."""
        return self.runners.cross

    def _select(self, base_logits: torch.Tensor) -> torch.Tensor:
        step = self.fusion.step(base_logits)
        return self.selector(step.full, step.topk)

    def run(self, streamer: Any = None, observer: Optional[Callable[["_Decoding", int], None]] = None) -> torch.Tensor:
        s = self.session
        ids, steps = s.input_ids, s.max_new_tokens
        if streamer is not None:
            streamer.put(ids.cpu())
        if steps == 0:
            if streamer is not None:
                streamer.end()
            return ids
        base_logits = s.prefill()
        if observer is not None:
            observer(self, -1)
        unfinished = torch.ones(ids.shape[0], dtype=torch.bool, device=s.device)
        pad = None if s.pad_token_id is None else torch.full((ids.shape[0],), s.pad_token_id, device=s.device)
        out: list[torch.Tensor] = []
        for step in range(steps):
            tokens = self._select(base_logits)
            if s.eos is not None:
                if pad is not None:
                    tokens = torch.where(unfinished, tokens, pad)
                unfinished = unfinished & ~torch.isin(tokens, s.eos)
            out.append(tokens)
            if streamer is not None:
                streamer.put(tokens.cpu())
            if step == steps - 1:
                break
            if s.eos is not None and not bool(unfinished.any()):  # the one sync per step
                break
            base_logits = s.advance(tokens, unfinished)
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
        session = open_session(
            base, input_ids, attention_mask, guides=guides, tokenizer=tokenizer, weights=weights, beta=beta,
            gamma=gamma, max_new_tokens=max_new_tokens, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
        )
        selector = TokenSelector(session.vocab_size, device=session.device, **selector_args)
        return _Decoding(session, selector).run(streamer, _STEP_OBSERVER.get())
