"""An independent scorer for chunk search: every model re-reads the whole text, no cache, float64.

For prompt ids ``x`` and generated base ids ``y`` (docs/design.md section 1, ``mogen.decoding.scoring``):

- base: ``sum_t log_softmax(z_b)[y_t]`` over the tokenizer's vocabulary;
- a guide sharing the base's ids reads ``x + y`` as ids;
- a guide with its own tokenizer reads ``prefix + encode(text)`` where ``text`` is the decoded ids up to the
  last complete character; ``log pi(y|x) = LP(ids(x + y)) - LP(ids(x))`` with
  ``LP(ids) = sum_{t >= 1} log p(ids_t | ids_<t)``;
- proxy term: ``log pi_e(y|x) - log pi_r(y|x)`` (temperature t_i); value term: the head's output before the
  last id, at that id.
"""

from __future__ import annotations

import copy
from typing import Optional, Sequence

import torch

from mogen.decoding.guides import ProxyGuide
from mogen.decoding.retokenize import special_prefix

_F64: dict[int, tuple] = {}


def f64(model):
    """A float64 copy of ``model`` (cached per model object, which the cache keeps alive so ids stay unique)."""
    hit = _F64.get(id(model))
    if hit is None or hit[0] is not model:
        double = copy.deepcopy(model).double().eval()
        if hasattr(double, "set_experts_implementation"):  # MoE: grouped_mm takes no float64, the loop does
            double.set_experts_implementation("eager")
        hit = _F64[id(model)] = (model, double)
    return hit[1]


def _logits(model, ids: Sequence[int]) -> torch.Tensor:
    with torch.no_grad():
        return f64(model)(input_ids=torch.tensor([list(ids)]), use_cache=False).logits[0]


def token_logprobs(model, ids: Sequence[int], width: int, temperature: float = 1.0) -> torch.Tensor:
    """``[len(ids) - 1]``: ``log p(ids_t | ids_<t)`` for t >= 1."""
    lp = torch.log_softmax(_logits(model, ids)[:-1, :width] / temperature, dim=-1)
    return lp.gather(1, torch.tensor(list(ids[1:])).unsqueeze(1)).squeeze(1)


def last_value(model, ids: Sequence[int]) -> float:
    """The value head's output before the last id, at that id (0 for a single id)."""
    if len(ids) < 2:
        return 0.0
    return float(_logits(model, ids)[-2, ids[-1]])


def complete_text(tokenizer, ids: Sequence[int], floor: int) -> str:
    """The decoded text of ``ids[:k]`` for the longest ``k >= floor`` that does not end inside a character."""
    for k in range(len(ids), floor - 1, -1):
        text = tokenizer.decode(list(ids[:k]), skip_special_tokens=True, clean_up_tokenization_spaces=False)
        if not text.endswith("\ufffd"):
            return text
    return ""


def _guide_ids(g, base_tokenizer, ids: Sequence[int], floor: int) -> list[int]:
    text = complete_text(base_tokenizer, ids, floor)
    return special_prefix(g.tokenizer) + list(g.tokenizer(text, add_special_tokens=False)["input_ids"])


def _proxy(g: ProxyGuide, x: list[int], y: list[int], base_tokenizer, vocab: int) -> float:
    if g.tokenizer is None:
        width, n = vocab, len(x)
        seq = x + y

        def lp(model):
            return float(token_logprobs(model, seq, width, g.temperature)[n - 1:].sum())
    else:
        width = len(g.tokenizer)
        gx = _guide_ids(g, base_tokenizer, x, max(len(x) - 4, 0))
        gxy = _guide_ids(g, base_tokenizer, x + y, max(len(x) - 4, 0))

        def lp(model):
            return float(token_logprobs(model, gxy, width, g.temperature).sum()
                         - token_logprobs(model, gx, width, g.temperature).sum())
    return lp(g.expert) - lp(g.reference)


def reference_beam(base, guides, x: Sequence[int], y: Sequence[int], weights: Sequence[float], *,
                   base_tokenizer=None, vocab: Optional[int] = None, beta: float = 1.0,
                   gamma: float = 1.0) -> tuple[float, float, list[float]]:
    """``(score, base log-prob, per-guide terms)`` of continuation ``y`` of prompt ``x`` (unpadded ids)."""
    vocab = vocab or (len(base_tokenizer) if base_tokenizer is not None else base.config.vocab_size)
    x, y = list(x), list(y)
    base_lp = float(token_logprobs(base, x + y, vocab)[len(x) - 1:].sum())
    terms, score = [], base_lp
    for g, w in zip(guides, weights):
        if isinstance(g, ProxyGuide):
            t = _proxy(g, x, y, base_tokenizer, vocab)
            score += beta * w * t
        else:
            ids = x + y if g.tokenizer is None else _guide_ids(g, base_tokenizer, x + y, max(len(x) - 4, 0))
            t = last_value(g.model, ids)
            score += gamma * w * t
        terms.append(t)
    return score, base_lp, terms
