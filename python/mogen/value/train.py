"""Training explicit value models (MAGE eq. 16): the one-call API, on ``transformers.Trainer``.

:func:`train_value_model` builds a value model from a causal LM (its head
replaced by a zero-initialised value head, :func:`~mogen.value_format.make_value_model`),
samples responses from a policy, scores them with the user's reward (a
function, a ``module:function`` string or a sequence-classification reward
model, :mod:`mogen.evaluation.rewards`), and fits, for every response ``y`` of prompt ``x`` with reward ``r``::

    L = 1/2 * mean_t (Q(x, y<t)[y_t] - (r - offset) / scale)^2

over every token ``y_t`` of the response, the final eos included (a response
cut at ``max_new_tokens`` has no eos; its last token is the last target),
averaged over the rows of each optimizer step (:mod:`mogen.value.targets`,
:mod:`mogen.value.trainer`). That is eq. 16 averaged over the response's
tokens, so long and short responses weigh the same; ``offset`` / ``scale``
are the mean and standard deviation of the training rewards, stored in the
model's ``mogen_value_model`` entry. The head starts at zero, so a head row
that no target ever reached keeps ``Q = 0``: the average training reward,
neither favoured nor penalised; :attr:`ValueTrainingResult.untrained_rows`
says how many there are. Seeded and deterministic on CPU for a fixed thread count.

:func:`fit_examples` is the training step alone, on prepared examples (what
``mogen value train`` runs on a dataset of :mod:`mogen.value.dataset`), under
any launcher Trainer supports.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch

from .._optional import require
from ..decoding.loading import load_causal_lm
from ..numerics import REWARD_STD_MIN
from ..value_format import make_value_model
from .data import Example, Reward, checked, encode_example, open_reward, sample_responses
from .targets import batch_targets, last_positions, q_taken

# transformers' Trainer (and accelerate, which it needs) is imported inside the functions that train:
# `import mogen` should not pay for it.

__all__ = ["train_value_model", "fit_examples", "split_examples", "ValueTrainingResult", "predict_final_values",
           "batch_targets", "save_value_model"]


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


def _encode(tokenizer: Any, examples: Sequence[Example], targets: Sequence[float]) -> list:
    return [(*encode_example(tokenizer, e.prompt, e.response, e.ended), t) for e, t in zip(examples, targets)]


def _untrained_rows(encoded: list, head_rows: int) -> int:
    """How many of the head's rows no response token (eos included) ever targets."""
    reached = {t for ids, n_prompt, _ in encoded for t in ids[n_prompt:]}
    return head_rows - len({t for t in reached if 0 <= t < head_rows})


def predict_final_values(model: Any, tokenizer: Any, examples: Sequence[Example], batch_size: int = 32) -> list[float]:
    """The value model's prediction at each response's last token, ``Q(x, y<T)[y_T]``, in reward units."""
    entry = getattr(model.config, "mogen_value_model", {}) or {}
    scale, offset = float(entry.get("reward_scale", 1.0)), float(entry.get("reward_offset", 0.0))
    encoded = _encode(tokenizer, examples, [e.reward for e in examples])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[float] = []
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            ids, predict, _ = batch_targets(encoded[start : start + batch_size], pad)
            q = q_taken(model, ids.to(device)).cpu()
            out.extend((q[torch.arange(len(q)), last_positions(predict)] * scale + offset).tolist())
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
    training_args: Any = None,
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
        epochs, lr, batch_size: AdamW over every parameter, at a constant rate, gradients clipped.
        heldout: fraction of examples kept out of training to report the
            Spearman correlation of the final-token prediction with the reward.
        seed: sampling, split and row order (the Trainer's seed too, unless ``training_args`` sets one).
        save_to: folder to write (model and tokenizer), renamed into place when complete.
        progress: Trainer's progress bar.
        training_args: ``transformers.TrainingArguments``, used as they are (``epochs``, ``lr`` and
            ``batch_size`` are then theirs), or a mapping of their fields over these defaults:
            ``num_train_epochs=epochs``, ``learning_rate=lr``, ``per_device_*_batch_size=batch_size``,
            ``seed=seed``, a temporary ``output_dir``, and :data:`~mogen.value.trainer.TRAINING_DEFAULTS`.

    Raises:
        ValueError: neither (prompts, reward) nor data, non-finite rewards
        (naming the text), bad sizes; a bad reward entry is a
        :class:`~mogen.configs.ConfigError` naming its key (``reward.label``), as is
        a ``training_args`` key TrainingArguments does not take (``training_args.<key>``).
    """
    t0 = time.perf_counter()
    examples = _examples(model, tokenizer, prompts, reward, data, policy, samples_per_prompt, max_new_tokens, top_p,
                         seed)
    train, held = split_examples(examples, heldout, seed)
    with tempfile.TemporaryDirectory(prefix="mogen-value-") as scratch:
        defaults = {"num_train_epochs": epochs, "learning_rate": lr, "per_device_train_batch_size": batch_size,
                    "per_device_eval_batch_size": batch_size, "seed": seed, "disable_tqdm": not progress,
                    "output_dir": scratch}
        result = fit_examples(model, tokenizer, train, held, training_args=training_args, defaults=defaults,
                              objectives=objectives, shuffle_seed=seed + 1, save_to=save_to, progress=progress)
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
    opener = open_reward(reward)  # a bad reward fails before the sampling
    source = _load(policy if policy is not None else model)
    pairs = sample_responses(source, tokenizer, list(prompts), samples_per_prompt=samples_per_prompt,
                             max_new_tokens=max_new_tokens, seed=seed, top_p=top_p)
    param = next(source.parameters())
    rewards = opener(param.device, param.dtype)(pairs)  # a reward model loads where the policy is
    return [Example(p, r, v, bool(ended)) for (p, r, ended), v in zip(pairs, rewards)]


def split_examples(examples: Sequence[Example], heldout: float, seed: int) -> tuple[list[Example], list[Example]]:
    """``(train, held)``: ``round(heldout * n)`` examples held out, chosen by ``randperm(n)`` seeded with ``seed``
    (the same on every rank)."""
    if not 0.0 <= heldout < 1.0:
        raise ValueError(f"heldout must be in [0, 1), got {heldout}")
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    n_held = int(round(heldout * len(examples)))
    held, train = [examples[i] for i in order[:n_held]], [examples[i] for i in order[n_held:]]
    if len(train) < 2:
        raise ValueError(f"{len(examples)} examples leave {len(train)} to train on; give more prompts or data")
    return train, held


def reward_normalisation(train: Sequence[Example]) -> tuple[float, float]:
    """``(offset, scale)``: the mean and standard deviation of the training rewards (scale 1 when they are all
    equal)."""
    rewards = [e.reward for e in train]
    offset = sum(rewards) / len(rewards)
    std = math.sqrt(sum((r - offset) ** 2 for r in rewards) / len(rewards))
    return offset, (std if std > REWARD_STD_MIN else 1.0)


def fit_examples(model: Union[str, Path, Any], tokenizer: Any, train: Sequence[Example], held: Sequence[Example], *,
                 training_args: Any, defaults: dict, objectives: Sequence[str], shuffle_seed: int,
                 save_to: Union[str, Path, None] = None, progress: bool = True) -> ValueTrainingResult:
    """Train a value model from ``model`` on ``train`` with :class:`~mogen.value.trainer.ValueTrainer`; ``held``
    is its eval dataset (Spearman of the final-token value with the reward). ``training_args``: as
    :func:`train_value_model` takes them, over ``defaults``. Every rank of a distributed run calls this with the
    same examples; the main process alone writes ``save_to``. ``result.model`` is the trained model as this
    process holds it (a shard under FSDP / ZeRO-3: read the saved folder)."""
    trainer_mod = trainer_module()
    args = trainer_mod.training_arguments(training_args, defaults)
    offset, scale = reward_normalisation(train)
    value = make_value_model(copy.deepcopy(_load(model)), objectives=objectives, reward_scale=scale,
                             reward_offset=offset)
    encoded = _encode(tokenizer, train, [(e.reward - offset) / scale for e in train])
    held_rows = _encode(tokenizer, held, [(e.reward - offset) / scale for e in held])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    trainer = trainer_mod.ValueTrainer(
        model=value, args=args, train_dataset=trainer_mod.ValueRows(encoded),
        eval_dataset=trainer_mod.ValueRows(held_rows) if held_rows else None,
        data_collator=trainer_mod.RowCollator(pad), shuffle_seed=shuffle_seed)
    # No processing_class: Trainer would rewrite the model config's pad / bos / eos ids from the tokenizer.
    if not progress:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # without a bar, Trainer prints every log line
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    value = trainer.accelerator.unwrap_model(trainer.model).eval()
    result = ValueTrainingResult(value, list(trainer.epoch_losses), offset, scale, None, len(train), len(held))
    result.head_rows = int(value.get_output_embeddings().weight.shape[0])
    result.untrained_rows = _untrained_rows(encoded, result.head_rows)
    if held_rows:
        result.heldout_spearman = float(trainer.evaluate()["eval_spearman"])
    if save_to is not None:
        result.path = save_value_model(trainer, tokenizer, Path(save_to))
    return result


def trainer_module() -> Any:
    """:mod:`mogen.value.trainer`; a :class:`~mogen._optional.MissingDependency` naming the extra that brings
    `accelerate` when it is missing (transformers' Trainer needs it, but says so only when the training
    arguments are made)."""
    require("accelerate", "train", "value training (transformers' Trainer)")
    from . import trainer

    return trainer


def save_value_model(trainer: Any, tokenizer: Any, target: Path) -> Path:
    """Write the trained model and its tokenizer to ``target``, the main process alone: every rank takes part in
    gathering the weights (``trainer.save_model``: FSDP, ZeRO-3) into a temporary folder beside ``target``,
    which is renamed into place when complete (an existing ``target`` is replaced)."""
    from accelerate.utils import broadcast_object_list

    acc = trainer.accelerator
    target = target.expanduser().absolute()
    where = broadcast_object_list([target.parent / f".{target.name}.tmp-{os.getpid()}"])  # the main's pid
    tmp = Path(where[0])
    if acc.is_main_process:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    acc.wait_for_everyone()
    trainer.save_model(str(tmp))
    acc.wait_for_everyone()
    if acc.is_main_process:
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    acc.wait_for_everyone()
    return target
