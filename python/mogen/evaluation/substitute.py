"""Substitute files: a sweep config run as written, with other folders and smaller settings.

``mogen sweep --config sweep.yaml --substitute stand_ins.yaml`` (``run_sweep(..., substitute=)``,
``load_sweep_config(..., substitute=)``) runs ``sweep.yaml`` with the changes of ``stand_ins.yaml``, so that a
config written for a GPU box (8B models, hundreds of prompts) can be run end to end anywhere on tiny stand-ins
of the same architectures and tokenizers, without a second copy of the config to keep in step::

    paths:                                    # a path as the config writes it -> the stand-in that replaces it
      models/Meta-Llama-3-8B-Instruct: tiny/llama
      models/gpt2-large-helpful-reward_model: tiny/rm_helpful
      data/hh_rlhf_test.parquet: tiny/prompts.parquet
    output: runs/tiny                         # the run folder instead of the config's
    override:                                 # config values replaced; a mapping merges key by key
      preferences: 3
      samples: 1
      seeds: 1
      decoding: {max_new_tokens: 8}           # the other decoding settings stay the config's
      prompts: {limit: 2}
      models: {device: cpu}

- ``paths``: each key is a path exactly as the config writes it (compared after ``os.path.normpath``:
  ``models/x/`` is ``models/x``), wherever the config names files or folders: ``models`` (``base``,
  ``tokenizer``, ``sft``, ``reference``, ``guide_tokenizer`` and every entry of ``policies``, ``backbones``,
  ``experts``, ``value_models``), ``rewards[i].model`` and ``prompts`` (a file, or ``prompts.path``). A path
  written several times (``base`` and ``sft``) is replaced everywhere. Every key must be a path of the config;
  the stand-in is relative to the substitute file's folder. :func:`config_paths` lists a config's paths (a test
  can check that a substitute file covers all of them).
- ``output``: the run folder, relative to the substitute file's folder.
- ``override``: values as the config would write them (relative paths relative to the config's folder). Every
  key must be a key of the config (and of its section: ``decoding``, ``models``, ``bootstrap``, ``prompts``);
  a mapping merges into the config's mapping at that key, anything else replaces the config's value
  (``methods: [...]`` replaces the list). The run folder is ``output``, not ``override.output``.

``paths`` apply to the config as written, then ``override``. Errors are
:class:`~mogen.configs.ConfigError` naming the substitute file and its key (``stand_ins.yaml:
paths['models/x']: ...``, ``stand_ins.yaml: override.decoding.max_new_tokens: ...``): an unknown key, a path
the config does not name, and a value set by ``override`` that the config's schema refuses. An error about a
substituted path names the config's key and says which stand-in it was.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import typing
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

from ..configs import ConfigError, config_errors, key_path, parse, unknown_keys
from .config import read_yaml
from .schema import MODEL_LIST_KEYS, MODEL_PATH_KEYS, SweepFile

__all__ = ["SubstituteFile", "Substitution", "apply_substitutes", "config_paths"]

_LABEL = "substitute file"


@dataclass
class SubstituteFile:
    """A substitute file as written (the module docstring's keys)."""

    paths: Optional[dict] = None
    output: Optional[str] = None
    override: Optional[dict] = None


@dataclass
class _Slot:
    """One place of a config that names a file or folder."""

    where: str  # its key path: models.experts[1]
    value: str
    put: Callable[[str], None]


def _slots(raw: dict) -> list[_Slot]:
    out: list[_Slot] = []

    def at(container: Any, key: Any, where: str) -> None:
        if isinstance(container[key], str):
            out.append(_Slot(where, container[key], lambda v: container.__setitem__(key, v)))

    prompts = raw.get("prompts")
    if isinstance(prompts, str):
        at(raw, "prompts", "prompts")
    elif isinstance(prompts, dict) and "path" in prompts:
        at(prompts, "path", "prompts.path")
    rewards = raw.get("rewards")
    for i, entry in enumerate(rewards if isinstance(rewards, list) else []):
        if isinstance(entry, dict) and "model" in entry:
            at(entry, "model", key_path(key_path("rewards", i), "model"))
    models = raw.get("models")
    if isinstance(models, dict):
        for k in MODEL_PATH_KEYS:
            if k in models:
                at(models, k, key_path("models", k))
        for k in MODEL_LIST_KEYS:
            if isinstance(models.get(k), list):
                for j in range(len(models[k])):
                    at(models[k], j, key_path(key_path("models", k), j))
    return out


def config_paths(raw: Any) -> list[tuple[str, str]]:
    """``(key path, path)`` for every file or folder the config ``raw`` (a mapping as read from its YAML)
    names, in the order of the module docstring: the paths a substitute file's ``paths`` can replace."""
    return [(s.where, s.value) for s in _slots(raw)] if isinstance(raw, dict) else []


def _norm(path: str) -> str:
    return os.path.normpath(path)


def _section(name: str) -> Optional[type]:
    """The dataclass that checks the mapping at top-level key ``name`` of the config, or None."""
    tp = typing.get_type_hints(SweepFile)[name]
    for t in (tp, *typing.get_args(tp)):
        if dataclasses.is_dataclass(t):
            return t
    return None


@dataclass
class Substitution:
    """What a substitute file changed: the config key paths ``override`` set, and the key paths whose paths
    ``paths`` replaced (with the ``paths`` key that did it), for errors."""

    file: Any = None
    overridden: list = field(default_factory=list)
    substituted: dict = field(default_factory=dict)  # config key path -> the paths key

    def _owner(self, path: str, paths: Any) -> Optional[str]:
        for p in paths:
            if path == p or path.startswith(p + ".") or path.startswith(p + "["):
                return p
        return None

    @contextmanager
    def blame(self) -> Iterator[None]:
        """Re-raises a ConfigError about a value ``override`` set as an error of the substitute file at
        ``override.<key>``; one about a substituted path says which stand-in it was."""
        try:
            yield
        except ConfigError as exc:
            if self._owner(exc.path, self.overridden) is not None:
                raise ConfigError(key_path("override", exc.path), exc.message, self.file, _LABEL) from None
            slot = self._owner(exc.path, self.substituted)
            if slot is not None:
                where = str(self.file) if self.file is not None else "the substitute file"
                raise ConfigError(exc.path, f"{exc.message} (a stand-in: {where} paths[{self.substituted[slot]!r}])",
                                  exc.file, exc.label) from None
            raise


def _merge(into: Any, value: Any) -> Any:
    """``value`` merged into ``into``: mappings key by key (recursively), anything else replaced."""
    if isinstance(into, dict) and isinstance(value, dict):
        out = dict(into)
        for k, v in value.items():
            out[k] = _merge(into.get(k), v)
        return out
    return copy.deepcopy(value)


def _override(out: dict, override: dict, applied: Substitution) -> None:
    known = [f.name for f in dataclasses.fields(SweepFile)]
    unknown_keys(override, known, "override", " (the config's keys)")
    for key, value in override.items():
        where = key_path("override", key)
        if key == "output":
            raise ConfigError(where, "the run folder is the substitute file's own `output` key (relative to it)")
        section = _section(key)
        if isinstance(value, dict) and section is not None:
            unknown_keys(value, [f.name for f in dataclasses.fields(section)], where, f" of {key}")
            if key in out and not isinstance(out[key], dict):
                raise ConfigError(where, f"merges into the config's {key} mapping, but the config's {key} is "
                                         f"{out[key]!r}: give the whole value")
            applied.overridden += [key_path(key, k) for k in value]
        else:
            applied.overridden.append(key)
        out[key] = _merge(out.get(key), value)


def apply_substitutes(raw: Any, substitute: Union[str, Path, dict], *,
                      config_file: Any = None) -> tuple[Any, Substitution]:
    """``(the config raw with the substitute file applied, what changed)``; ``raw`` is the config as read from
    its YAML (``config_file``: its file, for errors), ``substitute`` a substitute file or its mapping (then
    paths are relative to the working directory)."""
    if isinstance(substitute, dict):
        data, file, root = substitute, None, Path(".")
    else:
        file = Path(substitute)
        data = read_yaml(file)
        root = file.parent
    applied = Substitution(file)
    with config_errors(file, _LABEL):
        spec = parse(SubstituteFile, {} if data is None else data)
        if not isinstance(raw, dict):
            return raw, applied  # the config's own parse says what is wrong
        out = copy.deepcopy(raw)
        slots = _slots(out)
        for given, stand_in in (spec.paths or {}).items():
            where = f"paths[{given!r}]"
            if not isinstance(given, str) or not isinstance(stand_in, str):
                raise ConfigError(where, f"maps a path of the config to the path of its stand-in (two strings), got "
                                         f"{given!r}: {stand_in!r}")
            hits = [s for s in slots if _norm(s.value) == _norm(given)]
            if not hits:
                named = sorted({s.value for s in slots})
                config = f"the config {str(config_file)!r}" if config_file is not None else "the config"
                raise ConfigError(where, f"{given!r} is not a path of {config}; its paths: {named}")
            new = os.path.abspath(root / Path(stand_in).expanduser())
            for s in hits:
                s.put(new)
                applied.substituted[s.where] = given
        if spec.output is not None:
            out["output"] = os.path.abspath(root / Path(spec.output).expanduser())
        if spec.override:
            _override(out, spec.override, applied)
    return out, applied
