"""Training explicit value models (MAGE eq. 16).

:func:`train_value_model` builds a value model from a causal LM (its head
replaced by a zero-initialised value head, :func:`~mogen.value_format.make_value_model`),
samples responses from a policy, scores them with the user's reward (a
function, a ``module:function`` string or a sequence-classification reward
model, :mod:`mogen.evaluation.rewards`), and fits, for every response ``y`` of prompt ``x`` with reward ``r``::

    L = 1/2 * mean_t (Q(x, y<t)[y_t] - (r - offset) / scale)^2

over every token ``y_t`` of the response, the final eos included (a response
cut at ``max_new_tokens`` has no eos; its last token is the last target).
That is eq. 16 averaged over the response's tokens, so long and short
responses weigh the same; ``offset`` / ``scale`` are the mean and standard
deviation of the training rewards, stored in the model's ``mogen_value_model``
entry. The head starts at zero, so a head row that no target ever reached
keeps ``Q = 0``: the average training reward, neither favoured nor penalised;
:attr:`ValueTrainingResult.untrained_rows` says how many there are. Seeded and
deterministic on CPU for a fixed thread count.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch
from tqdm.auto import tqdm

from ..decoding.loading import load_causal_lm
from ..numerics import GRAD_CLIP_NORM, REWARD_STD_MIN
from .data import Example, Reward, checked, encode_example, sample_responses, score, spearman
from ..value_format import make_value_model

__all__ = ["train_value_model", "ValueTrainingResult", "predict_final_values"]


@dataclass
class ValueTrainingResult:
    """A trained value model and how training went."""

    model: Any
    losses: list = field(default_factory=list)  # mean loss per epoch
    reward_offset: float = 0.0
    reward_scale: float = 1.0
    heldout_spearman: Optional[float] = None  # prediction at the last response token vs the true reward
    train_examples: int = 0
    heldout_examples: int = 0
    seconds: float = 0.0
    path: Optional[Path] = None
    head_rows: int = 0  # rows of the value head (its vocabulary)
    untrained_rows: int = 0  # head rows that never received a target: their Q stays 0 (the average reward)

    @property
    def untrained_fraction(self) -> float:
        """The share of head rows that training never reached."""
        return self.untrained_rows / self.head_rows if self.head_rows else 0.0


def batch_targets(rows: Sequence[tuple[list[int], int, float]], pad_id: int) -> tuple[torch.Tensor, ...]:
    """One training batch from ``(ids, n_prompt, target)`` rows (:func:`~mogen.value.data.encode_example`).

    Returns ``ids [B, T]`` (right-padded with ``pad_id``), ``predict [B, T - 1]``
    and ``target [B, 1]``: ``predict[b, t]`` is True where position ``t``'s
    output is scored at token ``t + 1``, which is every response token (the eos
    included) and no prompt token or padding.
    """
    width = max(len(ids) for ids, _, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    predict = torch.zeros(len(rows), width - 1, dtype=torch.bool)
    target = torch.zeros(len(rows), 1)
    for b, (row, n_prompt, r) in enumerate(rows):
        ids[b, : len(row)] = torch.tensor(row)
        predict[b, n_prompt - 1 : len(row) - 1] = True
        target[b, 0] = r
    return ids, predict, target


def _batches(encoded: list[tuple[list[int], int, float]], batch_size: int, pad_id: int, order: list[int]):
    for start in range(0, len(order), batch_size):
        yield batch_targets([encoded[i] for i in order[start : start + batch_size]], pad_id)


def _encode(tokenizer: Any, examples: Sequence[Example], targets: Sequence[float]) -> list:
    return [(*encode_example(tokenizer, e.prompt, e.response, e.ended), t) for e, t in zip(examples, targets)]


def _untrained_rows(encoded: list, head_rows: int) -> int:
    """How many of the head's rows no response token (eos included) ever targets."""
    reached = {t for ids, n_prompt, _ in encoded for t in ids[n_prompt:]}
    return head_rows - len({t for t in reached if 0 <= t < head_rows})


def _q_taken(model: Any, ids: torch.Tensor) -> torch.Tensor:
    """``Q(x, y<t)[y_t]`` for every position ``t >= 1``: ``[B, T - 1]`` (right padding needs no mask)."""
    values = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
    return values.gather(2, ids[:, 1:].unsqueeze(2)).squeeze(2)


def predict_final_values(model: Any, tokenizer: Any, examples: Sequence[Example], batch_size: int = 32) -> list[float]:
    """The value model's prediction at each response's last token, ``Q(x, y<T)[y_T]``, in reward units."""
    entry = getattr(model.config, "mogen_value_model", {}) or {}
    scale, offset = float(entry.get("reward_scale", 1.0)), float(entry.get("reward_offset", 0.0))
    encoded = _encode(tokenizer, examples, [e.reward for e in examples])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[float] = []
    device = next(model.parameters()).device
    with torch.no_grad():
        for ids, predict, _ in _batches(encoded, batch_size, pad, list(range(len(encoded)))):
            q = _q_taken(model, ids.to(device)).cpu()
            last = predict.long().cumsum(1).argmax(1)  # the last response position of each row
            out.extend((q[torch.arange(len(q)), last] * scale + offset).tolist())
    return out


def _load(model: Union[str, Path, Any]) -> Any:
    if isinstance(model, (str, Path)):
        return load_causal_lm(model, device=None)
    return model


def train_value_model(
    model: Union[str, Path, Any],
    tokenizer: Any,
    *,
    prompts: Optional[Sequence[str]] = None,
    reward: Union[Reward, str, dict, Any, None] = None,
    data: Optional[Sequence[Union[Example, tuple]]] = None,
    policy: Any = None,
    objectives: Sequence[str] = ("reward",),
    samples_per_prompt: int = 4,
    max_new_tokens: int = 32,
    top_p: Optional[float] = None,
    epochs: int = 3,
    lr: float = 1e-3,
    batch_size: int = 32,
    heldout: float = 0.2,
    seed: int = 0,
    save_to: Union[str, Path, None] = None,
    progress: bool = True,
) -> ValueTrainingResult:
    """Train a value model (MAGE eq. 16) and optionally save it in mogen's value-model format.

    Args:
        model: a causal LM or its folder; it is copied, never modified.
        tokenizer: its tokenizer.
        prompts, reward: sample ``samples_per_prompt`` responses per prompt from
            ``policy`` (default: ``model`` as loaded) and score each with
            ``reward``: a function ``reward(prompt, response) -> float``, a
            ``"module:function"`` string, a reward entry mapping such as
            ``{"model": folder, "label": 0, "batch_size": 16, "max_length": 512,
            "template": "{prompt}{response}"}`` (a sequence-classification
            reward model, scored in batches on the policy's device and dtype;
            :mod:`mogen.evaluation.rewards` for the keys, ``offset`` and
            ``scale`` included), or a loaded
            :class:`~mogen.evaluation.reward_models.RewardModel`. Or give ``data``: prepared
            ``(prompt, response, reward)`` triples (the response ended with
            eos) or ``(prompt, response, reward, ended)``, or :class:`Example`.
        objectives: names stored in the model's ``mogen_value_model`` entry.
        epochs, lr, batch_size: AdamW over every parameter.
        heldout: fraction of examples kept out of training to report the
            Spearman correlation of the final-token prediction with the reward.
        seed: sampling, split and batch order.
        save_to: folder to write (model and tokenizer), renamed into place when complete.
        progress: a progress bar with the loss.

    Raises:
        ValueError: neither (prompts, reward) nor data, non-finite rewards
        (naming the text), bad sizes; a bad reward entry is a
        :class:`~mogen.configs.ConfigError` naming its key (``reward.label``).
    """
    t0 = time.perf_counter()
    examples = _examples(model, tokenizer, prompts, reward, data, policy, samples_per_prompt, max_new_tokens, top_p,
                         seed)
    train, held = _split(examples, heldout, seed)
    rewards = [e.reward for e in train]
    offset = sum(rewards) / len(rewards)
    std = math.sqrt(sum((r - offset) ** 2 for r in rewards) / len(rewards))
    scale = std if std > REWARD_STD_MIN else 1.0
    value = make_value_model(copy.deepcopy(_load(model)), objectives=objectives, reward_scale=scale,
                             reward_offset=offset)
    encoded = _encode(tokenizer, train, [(e.reward - offset) / scale for e in train])
    losses = _fit(value, tokenizer, encoded, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                  progress=progress)
    value.eval()
    result = ValueTrainingResult(value, losses, offset, scale, None, len(train), len(held))
    result.head_rows = int(value.get_output_embeddings().weight.shape[0])
    result.untrained_rows = _untrained_rows(encoded, result.head_rows)
    if held:
        result.heldout_spearman = spearman(predict_final_values(value, tokenizer, held), [e.reward for e in held])
    if save_to is not None:
        result.path = _save(value, tokenizer, Path(save_to))
    result.seconds = time.perf_counter() - t0
    return result


def _examples(model, tokenizer, prompts, reward, data, policy, samples_per_prompt, max_new_tokens, top_p,
              seed) -> list[Example]:
    if data is not None:
        return [checked(*(e if not isinstance(e, Example) else (e.prompt, e.response, e.reward, e.ended)))
                for e in data]
    if prompts is None or reward is None:
        raise ValueError("train_value_model needs prompts= and reward= (responses are sampled) or data=")
    if not prompts:
        raise ValueError("prompts is empty")
    if isinstance(samples_per_prompt, bool) or not isinstance(samples_per_prompt, int) or samples_per_prompt < 1:
        raise ValueError(f"samples_per_prompt must be an int >= 1, got {samples_per_prompt!r}")
    batch = _batch_reward(reward)
    source = _load(policy if policy is not None else model)
    pairs = sample_responses(source, tokenizer, list(prompts), samples_per_prompt=samples_per_prompt,
                             max_new_tokens=max_new_tokens, seed=seed, top_p=top_p)
    if batch is None:
        return score(pairs, reward)
    param = next(source.parameters())
    scorer, normalise = batch(param.device, param.dtype)  # a reward model loads where the policy is
    raw = scorer.score([p for p, _, _ in pairs], [r for _, r, _ in pairs])
    return [checked(p, r, normalise(v), ended) for (p, r, ended), v in zip(pairs, raw)]


def _batch_reward(reward: Any) -> Optional[Callable]:
    """None for a plain function (called once per response, as it always was); else
    ``open(device, dtype) -> (scorer, normalise)``, ``scorer.score(prompts, responses)`` giving raw scores:
    for an entry (``"module:function"``, a mapping) its checked spec, checked now; for an object with a batch
    ``score`` (a RewardModel) the object itself."""
    if isinstance(reward, (str, dict)):
        # inside: mogen.evaluation imports mogen.mage, which imports this package.
        from ..configs import config_errors
        from ..evaluation.rewards import parse_reward

        with config_errors(label="train_value_model"):
            spec = parse_reward(reward, "reward")
        return lambda device, dtype: (spec.scorer(device=device, dtype=dtype), spec.normalise)
    if callable(getattr(reward, "score", None)):
        return lambda device, dtype: (reward, float)
    if not callable(reward):
        raise TypeError(f"reward must be a function, 'module:function', a reward entry mapping or a RewardModel, "
                        f"got {reward!r}")
    return None


def _split(examples: list[Example], heldout: float, seed: int) -> tuple[list[Example], list[Example]]:
    if not 0.0 <= heldout < 1.0:
        raise ValueError(f"heldout must be in [0, 1), got {heldout}")
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    n_held = int(round(heldout * len(examples)))
    held, train = [examples[i] for i in order[:n_held]], [examples[i] for i in order[n_held:]]
    if len(train) < 2:
        raise ValueError(f"{len(examples)} examples leave {len(train)} to train on; give more prompts or data")
    return train, held


def _fit(value: Any, tokenizer: Any, encoded: list, *, epochs: int, lr: float, batch_size: int, seed: int,
         progress: bool) -> list[float]:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(value.parameters()).device
    opt = torch.optim.AdamW(value.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed + 1)
    steps = epochs * math.ceil(len(encoded) / batch_size)
    bar = tqdm(total=steps, desc="value model", disable=not progress, leave=False)
    value.train()
    losses = []
    for _ in range(epochs):
        order = torch.randperm(len(encoded), generator=gen).tolist()
        total, count = 0.0, 0
        for ids, predict, target in _batches(encoded, batch_size, pad, order):
            q = _q_taken(value, ids.to(device))
            err = (q - target.to(device)).masked_fill(~predict.to(device), 0.0)
            per_row = 0.5 * (err ** 2).sum(1) / predict.sum(1).clamp(min=1).to(device)
            loss = per_row.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(value.parameters(), GRAD_CLIP_NORM)
            opt.step()
            value_of_loss = loss.item()
            total, count = total + value_of_loss * len(ids), count + len(ids)
            bar.update(1)
            bar.set_postfix(loss=f"{value_of_loss:.4f}")
        losses.append(total / count)
    bar.close()
    return losses


def _save(model: Any, tokenizer: Any, target: Path) -> Path:
    target = target.expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    return target
