"""Training data for value models: sampled responses scored by a reward function.

A value model regresses the final reward of a response at every response
token, the final eos included (MAGE eq. 16). :func:`sample_responses` draws
responses to prompts from a policy with :func:`mogen.generate` (seeded,
batched), noting which of them ended with eos, and :func:`score` calls the
user's ``reward(prompt, response) -> float`` on each, refusing non-finite
rewards with the text named; :func:`open_reward` opens any reward form (a
function, an entry, a reward model) as one batch scorer. :func:`encode_example` finds the response's
tokens as the value model will read them at decoding time, with the eos
appended when the response ended.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import torch

from ..decoding import generate
from ..decoding.models import output_device
from ..decoding.retokenize import special_prefix

__all__ = ["Example", "Reward", "checked", "sample_responses", "score", "open_reward", "encode_example", "spearman"]

#: a reward: ``reward(prompt, response) -> float`` (value training, sweeps)
Reward = Callable[[str, str], float]


@dataclass(frozen=True)
class Example:
    """One (prompt, response, reward) triple; ``ended``: the response ended with eos (False when it was cut
    at the length limit), so eos is the last token the value model learns to value."""

    prompt: str
    response: str
    reward: float
    ended: bool = True


def sample_responses(policy: Any, tokenizer: Any, prompts: Sequence[str], *, samples_per_prompt: int,
                     max_new_tokens: int, seed: int, top_p: Optional[float] = None, temperature: float = 1.0,
                     batch_size: int = 64) -> list[tuple[str, str, bool]]:
    """``samples_per_prompt`` sampled responses per prompt: ``[(prompt, response, ended)]`` in prompt order,
    ``ended`` True when the policy emitted eos before ``max_new_tokens`` ran out."""
    rows = [p for p in prompts for _ in range(samples_per_prompt)]
    gen = torch.Generator(device=_device_of(policy)).manual_seed(seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[tuple[str, str, bool]] = []
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            enc = tokenizer(chunk, return_tensors="pt", padding=True)
            ids = generate(policy, enc["input_ids"], enc["attention_mask"], guides=None, max_new_tokens=max_new_tokens,
                           do_sample=True, temperature=temperature, top_k=0, top_p=top_p, generator=gen,
                           pad_token_id=pad)  # top_k=0: eq. 15 samples pi_ref itself, not transformers' top-50
            new = ids[:, enc["input_ids"].shape[1]:]
            texts = tokenizer.batch_decode(new, skip_special_tokens=True)
            ended = (new == tokenizer.eos_token_id).any(dim=1).tolist() if tokenizer.eos_token_id is not None \
                else [False] * len(texts)
            out.extend(zip(chunk, texts, ended))
    finally:
        tokenizer.padding_side = side
    return out


def _device_of(model: Any) -> torch.device:
    return output_device(model)


def checked(prompt: str, response: str, r: Any, ended: bool = True) -> Example:
    """``Example(prompt, response, r, ended)``; TypeError / ValueError naming the text unless ``r`` is a finite
    number."""
    try:
        value = float(r)
    except (TypeError, ValueError):
        raise TypeError(f"the reward of (prompt={prompt!r}, response={response!r}) is {r!r}, not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"the reward of (prompt={prompt!r}, response={response!r}) is {value}; rewards must be finite")
    return Example(str(prompt), str(response), value, bool(ended))


def score(responses: Sequence[tuple[str, str, bool]], reward: Reward) -> list[Example]:
    """``reward(prompt, response)`` of every ``(prompt, response, ended)``, checked by :func:`checked`."""
    return [checked(prompt, response, reward(prompt, response), ended) for prompt, response, ended in responses]


#: ``scorer(pairs) -> rewards``: one checked reward per ``(prompt, response, ended)``
Scorer = Callable[[Sequence[tuple[str, str, bool]]], list[float]]


def open_reward(reward: Union[Reward, str, dict, Any], label: str = "train_value_model") -> Callable[..., Scorer]:
    """``open(device, dtype) -> scorer`` for a reward: a function ``reward(prompt, response)`` (called once per
    response), a ``"module:function"`` string or a reward entry mapping (:mod:`mogen.evaluation.rewards`; checked
    now, so a bad entry fails before any sampling, as a ConfigError naming ``reward.<key>`` after ``label``), a
    parsed :class:`~mogen.evaluation.rewards.RewardSpec`, or an object with a batch ``score(prompts, responses)``
    (a loaded RewardModel). A reward model loads when opened, on ``device`` in ``dtype``."""
    if isinstance(reward, (str, dict)):
        # inside: mogen.evaluation imports mogen.mage, which imports this package.
        from ..configs import config_errors
        from ..evaluation.rewards import parse_reward

        with config_errors(label=label):
            reward = parse_reward(reward, "reward")
    if callable(getattr(reward, "scorer", None)) and callable(getattr(reward, "normalise", None)):
        spec = reward
        return lambda device, dtype: _batch_scorer(spec.scorer(device=device, dtype=dtype), spec.normalise)
    if callable(getattr(reward, "score", None)):
        return lambda device, dtype: _batch_scorer(reward, float)
    if not callable(reward):
        raise TypeError(f"reward must be a function, 'module:function', a reward entry mapping or a RewardModel, "
                        f"got {reward!r}")
    return lambda device, dtype: lambda pairs: [e.reward for e in score(pairs, reward)]


def _batch_scorer(scorer: Any, normalise: Callable[[float], float]) -> Scorer:
    def run(pairs: Sequence[tuple[str, str, bool]]) -> list[float]:
        raw = scorer.score([p for p, _, _ in pairs], [r for _, r, _ in pairs])
        return [checked(p, r, normalise(v), ended).reward for (p, r, ended), v in zip(pairs, raw)]
    return run


def encode_example(tokenizer: Any, prompt: str, response: str, ended: bool = True) -> tuple[list[int], int]:
    """``(ids, n_prompt)``: the ids of ``prompt + response`` as a guide reads them (then eos when ``ended`` and
    the tokenizer has one), and where the response starts.

    The value model reads ``special_prefix + encode(text)`` at decoding time
    (:mod:`mogen.decoding.retokenize`); tokens that encode the prompt's text
    the same way alone and joined belong to the prompt, the rest to the response.
    The eos is a response token like any other: eq. 16 sums over every token of
    the response, and a value model that never saw eos as a target could not
    tell a good place to stop from a bad one.
    """
    prefix = special_prefix(tokenizer)
    full = prefix + tokenizer(prompt + response, add_special_tokens=False)["input_ids"]
    alone = prefix + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    n = 0
    while n < min(len(full), len(alone)) and full[n] == alone[n]:
        n += 1
    if ended and tokenizer.eos_token_id is not None:
        full = full + [int(tokenizer.eos_token_id)]
    return full, max(n, 1)


def _ranks(x: Sequence[float]) -> list[float]:
    order = sorted(range(len(x)), key=lambda i: x[i])
    ranks = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for k in range(i, j + 1):  # ties share their average rank
            ranks[order[k]] = (i + j) / 2.0
        i = j + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation of two equal-length sequences (NaN when either is constant)."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"spearman needs two sequences of one length >= 2, got {len(a)} and {len(b)}")
    ra, rb = torch.tensor(_ranks(a), dtype=torch.float64), torch.tensor(_ranks(b), dtype=torch.float64)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / denom if denom > 0 else float("nan")
