"""Prompts as users have them: the sweep config's ``prompts``.

::

    prompts: prompts.txt                    # one prompt per line (blank lines skipped)
    prompts: [first prompt, second prompt]  # inline
    prompts: {path: data.jsonl, field: prompt, split: train, limit: 100, shuffle_seed: 0, chat_template: true}

The mapping form reads a ``.txt`` file itself (one prompt per line, no
``field`` or ``split``), and with the ``datasets`` library
(``pip install 'mogen[data]'``) a ``.jsonl`` / ``.json``, ``.csv`` or
``.parquet`` file, or a folder written by ``datasets``' ``save_to_disk``:

- ``field``: the column holding the prompts (default ``prompt``); every value
  must be a non-empty string;
- ``split``: the split of a ``DatasetDict`` folder (default ``train``, or its
  only split); a file is one split, ``train``;
- ``shuffle_seed``: the rows in the order of
  ``numpy.random.default_rng(shuffle_seed).permutation`` (what
  ``Dataset.shuffle(seed=...)`` draws), before ``limit``;
- ``limit``: keep the first ``limit`` rows (after the shuffle: a random subset);
- ``chat_template``: decode each prompt through the base tokenizer's chat
  template (one user turn, ``add_generation_prompt=True``); the tokenizer must
  have one. The text the rewards see as the prompt stays the raw prompt.

Errors are :class:`~mogen.configs.ConfigError` at ``prompts.<key>`` (a field
that does not exist names the fields that do; without ``datasets`` installed a
structured file names the ``data`` extra).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from .._optional import MissingDependency, require
from ..configs import ConfigError, checked_field, check_positive

__all__ = ["PromptSource", "read_prompts", "chat_prompts", "check_chat_template", "DATA_FORMATS", "DEFAULT_FIELD"]

#: file suffix -> the ``datasets`` builder that reads it
DATA_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
#: the column read when ``field`` is not given
DEFAULT_FIELD = "prompt"


@dataclass
class PromptSource:
    """The mapping form of ``prompts`` (the module docstring's keys)."""

    path: str
    field: Optional[str] = None
    split: Optional[str] = None
    limit: Optional[int] = checked_field(check_positive, None)
    shuffle_seed: Optional[int] = None
    chat_template: bool = False


def _lines(file: Path, key: str) -> list[str]:
    try:
        return [ln for ln in file.read_text().splitlines() if ln.strip()]
    except OSError as exc:
        raise ConfigError(key, f"cannot read the prompts file: {exc}") from None


def _datasets(file: Path) -> Any:
    try:
        return require("datasets", "data", f"reading {str(file)!r}")
    except MissingDependency as exc:  # a config error: it names the key (prompts.path) and the file
        raise ConfigError("prompts.path", str(exc)) from None


def _load(file: Path, split: Optional[str]) -> Any:
    """The one ``datasets.Dataset`` of ``file`` (a data file or a save_to_disk folder) and ``split``."""
    if not file.exists():
        raise ConfigError("prompts.path", f"prompts file {str(file)!r} does not exist")
    if not file.is_dir() and file.suffix.lower() not in DATA_FORMATS:
        raise ConfigError("prompts.path", f"cannot read {str(file)!r}: prompts come from a .txt, .jsonl, .json, "
                                          ".csv or .parquet file or a datasets folder (save_to_disk)")
    datasets = _datasets(file)
    bars = datasets.is_progress_bar_enabled()
    if bars:
        datasets.disable_progress_bars()
    try:
        if file.is_dir():
            data = datasets.load_from_disk(str(file))
        else:
            data = datasets.load_dataset(DATA_FORMATS[file.suffix.lower()], data_files=str(file))
    except Exception as exc:  # datasets' errors have no common base (FileNotFoundError, DatasetGenerationError, ...)
        what = "a folder written by datasets' save_to_disk" if file.is_dir() else "readable"
        raise ConfigError("prompts.path", f"{str(file)!r} is not {what}: {exc}") from None
    finally:
        if bars:
            datasets.enable_progress_bars()
    if isinstance(data, datasets.DatasetDict):
        splits = list(data)
        if split is None:
            if "train" not in data and len(splits) != 1:
                raise ConfigError("prompts.split", f"{str(file)!r} has the splits {splits}: choose one")
            split = "train" if "train" in data else splits[0]
        if split not in data:
            raise ConfigError("prompts.split", f"{str(file)!r} has no split {split!r}; its splits: {splits}")
        return data[split]
    if split is not None and str(data.split) != split:
        raise ConfigError("prompts.split", f"{str(file)!r} holds one dataset (split {data.split}), not split {split!r}")
    return data


def _order(n: int, shuffle_seed: Optional[int], limit: Optional[int]) -> list[int]:
    order = np.random.default_rng(shuffle_seed).permutation(n).tolist() if shuffle_seed is not None else list(range(n))
    return order[:limit] if limit is not None else order


def _from_source(src: PromptSource, base_dir: Path) -> list[str]:
    file = base_dir / Path(src.path).expanduser()
    if file.suffix.lower() == ".txt" and not file.is_dir():
        for key in ("field", "split"):
            if getattr(src, key) is not None:
                raise ConfigError(f"prompts.{key}", f"a .txt file has one prompt per line, no {key}s")
        rows = _lines(file, "prompts.path")
        return [rows[i] for i in _order(len(rows), src.shuffle_seed, src.limit)]
    ds = _load(file, src.split)
    name = src.field if src.field is not None else DEFAULT_FIELD
    if name not in ds.column_names:
        default = "" if src.field is not None else " (the default; set prompts.field)"
        raise ConfigError("prompts.field", f"{str(file)!r} has no field {name!r}{default}; its fields: "
                                           f"{ds.column_names}")
    values = ds.select(_order(len(ds), src.shuffle_seed, src.limit), keep_in_memory=True)[name]
    for value in values:
        if not isinstance(value, str) or not value.strip():
            raise ConfigError("prompts.field", f"field {name!r} of {str(file)!r} holds {value!r}: every prompt must "
                                               "be a non-empty string")
    return list(values)


def read_prompts(raw: Union[str, Sequence[str], PromptSource], base_dir: Union[str, Path] = ".") -> list[str]:
    """The prompts of a checked ``prompts`` value (paths relative to ``base_dir``)."""
    base_dir = Path(base_dir)
    if isinstance(raw, PromptSource):
        prompts = _from_source(raw, base_dir)
    elif isinstance(raw, str):
        prompts = _lines(base_dir / raw, "prompts")
    else:
        prompts = list(raw)
    if not prompts:
        raise ConfigError("prompts", "prompts is empty")
    return prompts


def check_chat_template(tokenizer_path: Optional[Path], key: str = "prompts.chat_template") -> None:
    """The tokenizer in ``tokenizer_path`` has a chat template; ConfigError at ``key`` otherwise."""
    from ..decoding.loading import load_tokenizer

    if tokenizer_path is None:
        raise ConfigError(key, "applies the base tokenizer's chat template: give models.tokenizer or models.base")
    try:
        tok = load_tokenizer(tokenizer_path, "tokenizer")
    except (OSError, ValueError) as exc:
        raise ConfigError(key, f"cannot load the tokenizer in {str(tokenizer_path)!r}: {exc}") from None
    if getattr(tok, "chat_template", None) is None:
        raise ConfigError(key, f"the tokenizer in {str(tokenizer_path)!r} has no chat template; leave chat_template "
                               "off and write the prompts as the model reads them")


def chat_prompts(tokenizer: Any, prompts: Sequence[str]) -> list[str]:
    """Each prompt as one user turn through ``tokenizer``'s chat template, ready for the assistant's reply."""
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in prompts]
