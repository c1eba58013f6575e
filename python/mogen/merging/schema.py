"""The merge config schema: whole-model (``models``) and sliced (``slices``) mergekit configs.

:func:`parse_merge_config` checks a config's shape key by key (unknown keys refused, types,
``layer_range`` values, a registered ``merge_method``) and returns a :class:`MergeConfig`; the
readers, :mod:`mogen.merging.config` (whole models) and :mod:`mogen.merging.layerwise` (slices,
per-layer gradients, filters), then check what depends on the method (its parameter names, via
the registry) and on the checkpoints (layer counts). Every error is a
:class:`~mogen.configs.ConfigError`: ``<file>: <slices[1].sources[0].layer_range>: <message>``
(``merge config`` in place of the file for a dict).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Optional, Union

from ..configs import ConfigError, checked_field, check_dtype, config_errors, parse
from .methods import METHODS

__all__ = ["MergeConfig", "ModelEntry", "SliceEntry", "SourceEntry", "parse_merge_config", "LABEL", "merge_error"]

LABEL = "merge config"
#: ``merge_error(path, message)``: a :class:`ConfigError` of a merge config
merge_error = functools.partial(ConfigError, label=LABEL)


def _layer_range(rng: list, path: str) -> None:
    if len(rng) != 2 or not 0 <= rng[0] < rng[1]:
        raise merge_error(path, f"expected [begin, end) with 0 <= begin < end, got {rng!r}")


def _non_empty(value: list, path: str) -> None:
    if not value:
        raise merge_error(path, "expected a non-empty list")


def _method(name: str, path: str) -> None:
    if name not in METHODS:
        raise merge_error(path, f"unknown merge method {name!r} (registered: {', '.join(METHODS)})")


def _tokenizer_source(value: Optional[str], path: str) -> None:
    if value not in (None, "base"):
        raise merge_error(path, f"{value!r} is not supported (only 'base')")


@dataclass
class ModelEntry:
    """One model of a whole-model config (a bare path string is read as ``{model: path}``)."""

    model: str
    parameters: Optional[dict] = None


@dataclass
class SourceEntry:
    """One source of a slice: a model and the layers ``[begin, end)`` taken from it."""

    model: str
    layer_range: list[int] = checked_field(_layer_range)
    parameters: Optional[dict] = None


@dataclass
class SliceEntry:
    sources: list[SourceEntry] = checked_field(_non_empty)
    parameters: Optional[dict] = None
    base_model: Optional[str] = None


@dataclass
class MergeConfig:
    """A mergekit config as mogen reads it: ``models`` or ``slices``, and the merge-wide keys."""

    merge_method: str = checked_field(_method)
    models: Optional[list[Union[str, ModelEntry]]] = checked_field(_non_empty, None)
    slices: Optional[list[SliceEntry]] = checked_field(_non_empty, None)
    base_model: Optional[str] = None
    dtype: Optional[str] = checked_field(check_dtype, None)
    out_dtype: Optional[str] = checked_field(check_dtype, None)
    parameters: Optional[dict] = None
    tokenizer_source: Optional[str] = checked_field(_tokenizer_source, None)
    chat_template: Any = None  # accepted without effect on tensors
    name: Any = None


def parse_merge_config(cfg: Any, file: Any = None) -> MergeConfig:
    """The checked :class:`MergeConfig` of a mapping (``file``: where it was read, for errors)."""
    with config_errors(file, LABEL):
        checked = parse(MergeConfig, cfg)
        if checked.slices is not None and checked.models is not None:
            raise merge_error("slices", "give either 'slices' or 'models', not both")
        if checked.slices is None and checked.models is None:
            raise merge_error("models", "is required (or 'slices')")
        return checked
