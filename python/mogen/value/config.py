"""The configs of ``mogen value sample`` and ``mogen value train`` (YAML; paths relative to the file).

Sampling (:func:`run_sample`, :mod:`mogen.value.dataset`)::

    policy: ref/                  # pi_ref, the model responses are sampled from (MAGE eq. 15)
    tokenizer: ref/               # default: the policy's folder
    prompts: prompts.txt          # as a sweep config takes them: a .txt file, a list, or {path, field, split,
                                  #   limit, shuffle_seed} (mogen.evaluation.prompts)
    rewards:                      # one reward entry per objective (mogen.evaluation.rewards); the entry's name
      - mymod:helpful             #   names the objective
      - {model: rm/, label: 0, name: harmless}
    output: data/                 # the dataset folder; a rerun finishes it
    samples_per_prompt: 4
    max_new_tokens: 32
    temperature: 1.0
    top_p: null                   # nucleus sampling; null samples pi_ref itself
    seed: 0
    batch_size: 64                # responses per decoder call
    prompts_per_shard: null       # the unit of resumption (default batch_size // samples_per_prompt)
    format: jsonl                 # or parquet
    device: cpu                   # cuda: each torchrun rank on cuda:LOCAL_RANK
    dtype: null                   # the policy's and reward models' dtype (default: as saved)

Training (:func:`run_train`, :func:`mogen.value.train.fit_examples`)::

    dataset: data/                # what `mogen value sample` wrote
    model: ref/                   # the causal LM the value model starts from (its head becomes the value head)
    tokenizer: null               # default: the model's folder
    objective: helpful            # the dataset's reward to regress (default: its only one)
    objectives: [helpful]         # the names stored in the value model (default: [objective])
    heldout: 0.2                  # share of the rows held out: Trainer's eval dataset, Spearman reported
    seed: 0                       # the split and the row order (and TrainingArguments.seed unless given)
    output: value_helpful/        # the value model, written when training ends
    training_args:                # any transformers.TrainingArguments field, e.g.
      num_train_epochs: 3
      per_device_train_batch_size: 32
      gradient_accumulation_steps: 1
      learning_rate: 1.0e-3
      bf16: true
      save_strategy: epoch        # checkpoints in output_dir (default: <output>.checkpoints)
      resume_from_checkpoint: null   # a checkpoint folder, or true for the last one in output_dir

Where ``training_args`` leave a field out, mogen's choices apply
(:data:`mogen.value.trainer.TRAINING_DEFAULTS`: constant learning rate, no weight decay,
clipped gradients, no checkpoints, no reporting). Every error is a
:class:`~mogen.configs.ConfigError` naming the file and the key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from ..configs import ConfigError, checked_field, check_dtype, check_positive, config_errors, parse
from ..evaluation.config import read_yaml
from ..evaluation.prompts import PromptSource, read_prompts
from ..evaluation.rewards import parse_reward
from .dataset import FORMATS, read_dataset, sample_dataset

__all__ = ["SampleConfig", "TrainConfig", "load_sample_config", "load_train_config", "run_sample", "run_train"]


def _check_format(value: str, path: str) -> None:
    if value not in FORMATS:
        raise ConfigError(path, f"must be one of {list(FORMATS)}, got {value!r}")


def _check_heldout(value: float, path: str) -> None:
    if not 0.0 <= value < 1.0:
        raise ConfigError(path, f"must be in [0, 1), got {value!r}")


def _pos(default: Any) -> Any:
    return checked_field(check_positive, default)


@dataclass
class SampleConfig:
    """``mogen value sample``'s config (the module docstring's keys)."""

    policy: str
    prompts: Union[str, list[str], PromptSource]
    rewards: list[Union[str, dict]]
    output: str
    tokenizer: Optional[str] = None
    samples_per_prompt: int = _pos(4)
    max_new_tokens: int = _pos(32)
    temperature: float = 1.0
    top_p: Optional[float] = None
    seed: int = 0
    batch_size: int = _pos(64)
    prompts_per_shard: Optional[int] = _pos(None)
    format: str = checked_field(_check_format, "jsonl")
    device: str = "cpu"
    dtype: Optional[str] = checked_field(check_dtype, None)


@dataclass
class TrainConfig:
    """``mogen value train``'s config (the module docstring's keys)."""

    dataset: str
    model: str
    output: str
    tokenizer: Optional[str] = None
    objective: Optional[str] = None
    objectives: Optional[list[str]] = None
    heldout: float = checked_field(_check_heldout, 0.2)
    seed: int = 0
    training_args: dict = field(default_factory=dict)


def _load(cls: type, file: Union[str, Path]) -> tuple[Any, Path]:
    file = Path(file)
    with config_errors(file):
        return parse(cls, read_yaml(file), file=file), file.parent


def load_sample_config(file: Union[str, Path]) -> tuple[SampleConfig, list, Path]:
    """``(config, [RewardSpec], base folder)``; every reward checked (``rewards[i].<key>``), names distinct."""
    cfg, base = _load(SampleConfig, file)
    with config_errors(file):
        if isinstance(cfg.prompts, PromptSource) and cfg.prompts.chat_template:
            raise ConfigError("prompts.chat_template", "is a sweep setting; write the prompts as the policy reads "
                                                       "them (the dataset stores them as sampled)")
        if not cfg.rewards:
            raise ConfigError("rewards", "needs at least one reward entry (one per objective)")
        specs = [parse_reward(entry, f"rewards[{i}]", base, cfg.dtype) for i, entry in enumerate(cfg.rewards)]
        for i, spec in enumerate(specs):
            if spec.name in [s.name for s in specs[:i]]:
                raise ConfigError(f"rewards[{i}]", f"a second reward named {spec.name!r}: give it another `name`")
    return cfg, specs, base


def load_train_config(file: Union[str, Path]) -> tuple[TrainConfig, Path]:
    """``(config, base folder)``."""
    return _load(TrainConfig, file)


def _device(device: str) -> str:
    """``cuda`` is ``cuda:LOCAL_RANK`` under a launcher, so each rank samples on its own GPU."""
    local = os.environ.get("LOCAL_RANK")
    return f"cuda:{local}" if device == "cuda" and local is not None else device


def run_sample(file: Union[str, Path], progress: bool = True) -> Path:
    """``mogen value sample --config file``: sample and score (this rank's shards of) the dataset; its folder."""
    from ..decoding.loading import load_causal_lm, load_tokenizer, parse_dtype

    cfg, specs, base = load_sample_config(file)
    with config_errors(file):
        prompts = read_prompts(cfg.prompts, base)
    dtype = parse_dtype(cfg.dtype) if cfg.dtype else None
    policy = load_causal_lm(base / cfg.policy, dtype=dtype, device=_device(cfg.device), what="policy")
    tokenizer = load_tokenizer(base / (cfg.tokenizer or cfg.policy), "tokenizer")
    describe = {"policy": cfg.policy, "rewards": {s.name: s.describe() for s in specs}}
    return sample_dataset(policy, tokenizer, prompts, {s.name: s for s in specs}, base / cfg.output,
                          samples_per_prompt=cfg.samples_per_prompt, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
                          top_p=cfg.top_p, temperature=cfg.temperature, batch_size=cfg.batch_size,
                          prompts_per_shard=cfg.prompts_per_shard, format=cfg.format, describe=describe,
                          progress=progress)


def run_train(file: Union[str, Path], progress: bool = True) -> Any:
    """``mogen value train --config file``: train on the dataset (every rank of a launcher runs this); the
    :class:`~mogen.value.train.ValueTrainingResult`, ``path`` set."""
    from ..decoding.loading import load_tokenizer
    from .train import fit_examples, split_examples, trainer_module

    cfg, base = load_train_config(file)
    data = read_dataset(base / cfg.dataset)
    with config_errors(file):
        try:
            objective = data.objective(cfg.objective)
        except ValueError as exc:
            raise ConfigError("objective", str(exc)) from None
        output = base / cfg.output
        defaults = {"seed": cfg.seed, "output_dir": str(output) + ".checkpoints", "disable_tqdm": not progress}
        args = trainer_module().training_arguments(cfg.training_args, defaults)  # checked before any loading
    train, held = split_examples(data.examples(objective), cfg.heldout, cfg.seed)
    tokenizer = load_tokenizer(base / (cfg.tokenizer or cfg.model), "tokenizer")
    return fit_examples(base / cfg.model, tokenizer, train, held, training_args=args, defaults={},
                        objectives=cfg.objectives or [objective], shuffle_seed=cfg.seed + 1, save_to=output,
                        progress=progress)
