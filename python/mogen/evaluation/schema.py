"""The sweep config as written: one dataclass per level of the file (:mod:`mogen.evaluation.config` describes
the keys), with the checks of its fields, read by :func:`mogen.configs.parse`.

The keys each level takes are its dataclass's fields, so the lists that other modules need
(:data:`GENERATION_KEYS`, :data:`MODEL_PATH_KEYS`, :data:`MODEL_LIST_KEYS`) are derived from, or sit beside, them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from ..configs import ConfigError, checked_field, check_dtype, check_positive
from .bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED
from .prompts import PromptSource
from .resources import DEFAULT_RETRIES, Resources

__all__ = ["LABEL", "SweepFile", "Bootstrap", "Decoding", "ModelPaths", "MpawParams", "SearchParams",
           "GENERATION_KEYS", "MODEL_PATH_KEYS", "MODEL_LIST_KEYS"]

#: what an error names in place of the file when the config came as a mapping
LABEL = "sweep config"


def _pos(default: Any = None) -> Any:
    return checked_field(check_positive, default)


def _check_cross_vocab(value: Optional[str], path: str) -> None:
    from ..decoding.guides import CROSS_VOCAB  # the decoders are imported when a config names a cross_vocab

    if value is not None and value not in CROSS_VOCAB:
        raise ConfigError(path, f"must be one of {list(CROSS_VOCAB)}, got {value!r}", label=LABEL)


def _check_number(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Any:
    """A field check: None or a finite number in the interval from ``low`` to ``high``."""
    text = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def check(value: Optional[float], path: str) -> None:
        if value is None:
            return
        ok = math.isfinite(value) and (low < value if low_open else low <= value) and \
            (value < high if high_open else value <= high)
        if not ok:
            raise ConfigError(path, f"must be a number in {text}, got {value!r}")

    return check


def _check_count(value: Optional[int], path: str) -> None:
    if value is not None and value < 0:
        raise ConfigError(path, f"must be an int >= 0, got {value!r}")


def _check_device(value: Optional[str], path: str) -> None:
    """A field check: a torch device this machine has (``cpu``, ``cuda``, ``cuda:1``, ...)."""
    if value is None:
        return
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        raise ConfigError(path, f"must be a torch device such as cpu, cuda or cuda:1, got {value!r}") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(path, f"{value!r}: CUDA is not available on this machine (torch {torch.__version__}); "
                                    "set models.device: cpu")
        if device.index is not None and device.index >= count:
            raise ConfigError(path, f"{value!r}: this machine has {count} CUDA device(s)")
    elif device.type != "cpu" and device.type != "mps":
        raise ConfigError(path, f"must be cpu, cuda, cuda:N or mps, got {value!r}")


def _finite_list(value: list, path: str) -> None:
    if not all(math.isfinite(x) for x in value):
        raise ConfigError(path, f"must be finite numbers, got {value}")


@dataclass
class MpawParams:
    """A ``methods`` entry of kind ``mpaw``: its parameters besides name and kind."""

    beta: Optional[float] = None
    # guides with their own tokenizer: ProxyGuide's
    cross_vocab: Optional[str] = checked_field(_check_cross_vocab, None)
    text_top_k: Optional[int] = _pos()  # their candidates with cross_vocab: text (ProxyGuide's top_k)


@dataclass
class SearchParams:
    """A ``methods`` entry of kind ``mpaw_search``: its parameters besides name and kind."""

    beta: Optional[float] = None
    beam_width: Optional[int] = _pos()
    expansion: Optional[int] = _pos()
    chunk_length: Optional[int] = _pos()
    proposal: Any = None
    cross_vocab: Optional[str] = checked_field(_check_cross_vocab, None)
    text_top_k: Optional[int] = _pos()


@dataclass
class Bootstrap:
    """``bootstrap``: the resamples behind every 95% interval and their seed."""

    resamples: int = _pos(DEFAULT_RESAMPLES)
    seed: int = DEFAULT_SEED


@dataclass
class Decoding:
    """``decoding``: the run's own keys (seed, batch_size) and the ``model.generate`` arguments a sweep passes
    to every method (:data:`GENERATION_KEYS`)."""

    max_new_tokens: Optional[int] = _pos()
    min_new_tokens: Optional[int] = checked_field(_check_count, None)
    do_sample: Optional[bool] = None
    temperature: Optional[float] = checked_field(_check_number(0, math.inf, low_open=True, high_open=True), None)
    top_k: Optional[int] = checked_field(_check_count, None)
    top_p: Optional[float] = checked_field(_check_number(0, 1, low_open=True), None)
    min_p: Optional[float] = checked_field(_check_number(0, 1), None)
    typical_p: Optional[float] = checked_field(_check_number(0, 1, low_open=True), None)
    repetition_penalty: Optional[float] = checked_field(_check_number(0, math.inf, low_open=True, high_open=True), None)
    no_repeat_ngram_size: Optional[int] = checked_field(_check_count, None)
    bad_words_ids: Optional[list[list[int]]] = None
    stop_strings: Optional[Union[str, list[str]]] = None
    eos_token_id: Optional[Union[int, list[int]]] = None
    pad_token_id: Optional[int] = None
    seed: Optional[int] = None
    batch_size: Optional[int] = _pos()


#: the ``decoding`` keys that are ``model.generate``'s arguments (the rest are the run's: seed, batch_size)
GENERATION_KEYS = tuple(f.name for f in dataclasses.fields(Decoding) if f.name not in ("seed", "batch_size"))

_Path = Union[str, Path]


@dataclass
class ModelPaths:
    """``models``: the folders each method takes what it needs from, their dtype and device."""

    tokenizer: Optional[_Path] = None
    base: Optional[_Path] = None
    policies: Optional[list[_Path]] = None
    backbones: Optional[list[_Path]] = None
    bone_beta: Optional[float] = None
    alpha: Optional[float] = None
    sft: Optional[_Path] = None
    experts: Optional[list[_Path]] = None
    reference: Optional[_Path] = None
    expert_beta: Optional[float] = None
    expert_alpha: Optional[float] = None
    value_models: Optional[list[_Path]] = None
    guide_tokenizer: Optional[_Path] = None
    dtype: Optional[str] = checked_field(check_dtype, None)
    device: Optional[str] = checked_field(_check_device, None)


#: the ``models`` keys that name one folder, and those that name a list of folders
MODEL_PATH_KEYS = ("tokenizer", "base", "sft", "reference", "guide_tokenizer")
MODEL_LIST_KEYS = ("policies", "backbones", "experts", "value_models")


@dataclass
class SweepFile:
    """A sweep config as written (:mod:`mogen.evaluation.config`'s keys), checked key by key."""

    output: _Path
    prompts: Union[str, list[str], PromptSource]
    rewards: list[Union[str, dict]]  # each checked by mogen.evaluation.rewards.parse_reward
    reference_point: list[float] = checked_field(_finite_list)  # required
    models: Optional[ModelPaths]
    methods: list[dict]
    preferences: Union[int, list[list[float]]] = 11
    samples: int = _pos(1)
    seeds: int = _pos(1)
    bootstrap: Optional[Bootstrap] = None
    decoding: Optional[Decoding] = None
    resources: Optional[Resources] = None
    max_retries: int = checked_field(_check_count, DEFAULT_RETRIES)
