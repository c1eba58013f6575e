"""Rewards as a sweep (``rewards[i]``) or value training (``train_value_model(reward=...)``) takes them.

A reward entry is one of::

    mymod:helpful                                  # module:function, reward(prompt, response) or reward(response)
    {function: mymod:helpful, offset: 0.5, scale: 2.0, name: helpful}
    {model: rm_folder, label: 0, batch_size: 16, max_length: 512, template: "{prompt}{response}",
     offset: 0.0, scale: 1.0, name: helpful}       # a sequence-classification reward model

(:mod:`mogen.evaluation.reward_models` for the model's keys). Every reward gives a
*raw* score per (prompt, response); the reward the metrics use is

    reward = (raw - offset) * scale            (offset 0, scale 1 by default: the raw score)

so ``offset`` / ``scale`` put rewards of different ranges on one footing (a
reward model's mean and 1 / standard deviation, say; a negative scale turns a
cost into a reward). A sweep caches the raw scores in its point files under
each reward's :attr:`RewardSpec.key` (the function's ``module:function``; for a
model, a hash of its folder, label, max_length, template, dtype and weight
files), so a resumed or extended run scores only what is missing, and a changed
``offset`` / ``scale`` rescores nothing. The name (``name``, else the
function's name, else the model folder's name, ``_<label>`` added for a label
other than 0) heads the reward's column in ``means.csv`` and the plot.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from ..configs import ConfigError, checked_field, key_path, parse
from ..value.data import Reward, checked
from .reward_models import RewardModel, RewardModelEntry, check_finite, check_reward_model, check_scale
from .schema import LABEL

__all__ = ["RewardSpec", "FunctionEntry", "RewardModelEntry", "parse_reward", "import_reward"]


@dataclass
class FunctionEntry:
    """A reward entry naming a function, with its normalisation."""

    function: str
    offset: float = checked_field(check_finite, 0.0)
    scale: float = checked_field(check_scale, 1.0)
    name: Optional[str] = None


def import_reward(spec: str, path: str = "rewards") -> Reward:
    """``module:function`` as ``reward(prompt, response) -> float`` (a one-argument function gets the response)."""
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise ConfigError(path, f"a reward must be 'module:function', got {spec!r}", label=LABEL)
    module, name = spec.split(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(path, f"cannot import reward {spec!r}: {exc}", label=LABEL) from None
    if not callable(fn):
        raise ConfigError(path, f"reward {spec!r} is not callable", label=LABEL)
    try:
        takes_one = len([p for p in inspect.signature(fn).parameters.values()
                         if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]) == 1
    except (TypeError, ValueError):
        takes_one = False
    return (lambda prompt, response: fn(response)) if takes_one else fn


class _FunctionScorer:
    def __init__(self, fn: Reward) -> None:
        self.fn = fn

    def score(self, prompts: Sequence[str], responses: Sequence[str], *, progress: bool = False,
              bar: Any = None) -> list[float]:
        out = []
        for prompt, response in zip(prompts, responses):
            out.append(checked(prompt, response, self.fn(prompt, response)).reward)
            if bar is not None:
                bar.update(1)
        return out


@dataclass(frozen=True)
class RewardSpec:
    """One checked reward entry: where its scores come from and how they are normalised."""

    name: str
    key: str  # the raw scores' key in the point files
    source: str  # "module:function", or the reward model's folder
    offset: float = 0.0
    scale: float = 1.0
    function: Optional[Callable] = field(default=None, compare=False, repr=False)
    model: Optional[dict] = None  # RewardModel's keyword arguments: folder, label, batch_size, max_length, template

    @property
    def kind(self) -> str:
        return "model" if self.model is not None else "function"

    @property
    def normalised(self) -> bool:
        """True unless the reward is the raw score (offset 0, scale 1)."""
        return (self.offset, self.scale) != (0.0, 1.0)

    def normalise(self, raw: float) -> float:
        """``(raw - offset) * scale``."""
        return (raw - self.offset) * self.scale if self.normalised else raw

    def describe(self) -> dict:
        """What the run's outputs record of this reward."""
        out: dict = {"name": self.name, "kind": self.kind, "source": self.source, "key": self.key}
        if self.model is not None:
            out.update({k: (str(v) if isinstance(v, Path) else v) for k, v in self.model.items() if k != "folder"})
        out.update(offset=self.offset, scale=self.scale)
        return out

    def text(self) -> str:
        """One line for metrics.md: the name, the source, the normalisation."""
        what = self.source if self.model is None else (
            f"reward model {self.source} label {self.model['label']}, template {self.model['template']!r}, "
            f"max_length {self.model['max_length']}")
        norm = f", reward = (raw - {self.offset:g}) * {self.scale:g}" if self.normalised else ""
        return f"{self.name} = {what}{norm}"

    def scorer(self, *, device: Any = "cpu", dtype: Any = None) -> Any:
        """An object whose ``score(prompts, responses, progress=, bar=)`` gives the raw scores (a reward model is
        loaded here, on ``device`` in ``dtype``)."""
        if self.model is None:
            return _FunctionScorer(self.function)
        return RewardModel(**self.model, device=device, dtype=dtype, name=self.name)


def _weights_stamp(folder: Path) -> list:
    """Names, sizes and modification times of a model folder's config and weight files (a cache key part)."""
    files = sorted(p for pattern in ("config.json", "*.safetensors", "*.bin", "*.safetensors.index.json")
                   for p in folder.glob(pattern))
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def parse_reward(entry: Any, path: str = "rewards", base_dir: Union[str, Path] = ".", dtype: Any = None) -> RewardSpec:
    """The :class:`RewardSpec` of one reward entry (the module docstring's forms; a model folder relative to
    ``base_dir``); ``dtype`` (a name or None) enters a reward model's cache key. A reward model's folder is
    checked (:func:`~mogen.evaluation.reward_models.check_reward_model`); its weights load only when scored."""
    if isinstance(entry, str):
        fn = import_reward(entry, path)
        return RewardSpec(entry.split(":")[-1], entry, entry, function=fn)
    if not isinstance(entry, dict) or not ({"model", "function"} & set(entry)):
        raise ConfigError(path, "a reward is 'module:function', {function: 'module:function', ...} or "
                                f"{{model: FOLDER, ...}}, got {entry!r}")
    if "model" in entry and "function" in entry:
        raise ConfigError(path, "a reward has either 'model' or 'function', not both")
    if "function" in entry:
        fe = parse(FunctionEntry, entry, path)
        fn = import_reward(fe.function, key_path(path, "function"))
        return RewardSpec(fe.name or fe.function.split(":")[-1], fe.function, fe.function, fe.offset, fe.scale,
                          function=fn)
    me = parse(RewardModelEntry, entry, path)
    folder = Path(base_dir) / Path(me.model).expanduser()
    check_reward_model(folder, me.label, me.template, path)
    model = {"folder": folder, "label": me.label, "batch_size": me.batch_size, "max_length": me.max_length,
             "template": me.template}
    blob = {"folder": str(folder), "label": me.label, "max_length": me.max_length, "template": me.template,
            "dtype": None if dtype is None else str(dtype), "files": _weights_stamp(folder)}
    key = "model:" + hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]
    name = me.name or (folder.name + (f"_{me.label}" if me.label else ""))
    return RewardSpec(name, key, str(folder), me.offset, me.scale, model=model)

