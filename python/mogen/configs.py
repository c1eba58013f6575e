"""Typed configs: a mapping parsed into a dataclass, every error naming its key path and file.

The three config readers (merge configs, :mod:`mogen.merging.schema`; sweep configs,
:mod:`mogen.evaluation.config`; MAGE, :class:`mogen.mage.MAGEConfig`) describe their keys as
dataclasses and read them with :func:`parse`: unknown keys are refused, scalars and lists are
type-checked against the field annotations (``int``, ``float``, ``bool``, ``str``, ``Optional``,
``Union``, ``list[...]``, ``dict``, ``Any``, nested dataclasses), and a field's ``metadata["check"]``
(``check(value, path)``) checks its value. Every failure is a :class:`ConfigError` whose text is
``<file>: <key.path[1].sub>: <message>`` (a label such as ``merge config`` stands in for the file
when the config came as a dict).
"""

from __future__ import annotations

import dataclasses
import typing
from contextlib import contextmanager
from typing import Any, Optional, Union

__all__ = ["ConfigError", "checked_field", "parse", "to_dict", "key_path", "config_errors", "unknown_keys",
           "check_type", "check_dtype", "check_positive"]


class ConfigError(ValueError):
    """A config error at ``path`` (``slices[1].sources[0].layer_range``) of ``file``."""

    def __init__(self, path: str, message: str, file: Any = None, label: str = "config") -> None:
        self.path, self.message, self.file, self.label = path, message, file, label
        super().__init__(str(self))

    def __str__(self) -> str:
        where = str(self.file) if self.file is not None else self.label
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"

    def located(self, file: Any = None, label: Optional[str] = None) -> "ConfigError":
        """This error with its file (if it had none) and label set."""
        return ConfigError(self.path, self.message, self.file if self.file is not None else file,
                           label or self.label)


def key_path(path: str, key: Union[str, int]) -> str:
    """``path`` extended by a key (``a.b``) or an index (``a[1]``)."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


@contextmanager
def config_errors(file: Any = None, label: Optional[str] = None):
    """Re-raises every :class:`ConfigError` inside with ``file`` (and ``label``) filled in."""
    try:
        yield
    except ConfigError as exc:
        raise exc.located(file, label) from None


def unknown_keys(given: Any, known: Any, path: str, what: str = "") -> None:
    """Refuses the keys of ``given`` outside ``known``; the error's path is the first unknown key's."""
    extra = sorted(set(given) - set(known), key=str)
    if extra:
        raise ConfigError(key_path(path, str(extra[0])),
                          f"unknown key(s) {extra}{what}; known: {list(known)}")


def check_dtype(value: Any, path: str) -> None:
    """A field check: ``value`` names a floating dtype of :mod:`mogen.dtypes` (``bf16``, ``float32``, ...)."""
    from .dtypes import FLOATS, lookup

    if value is not None:
        try:
            lookup(value, allowed=FLOATS)
        except ValueError as exc:
            raise ConfigError(path, str(exc)) from None


def checked_field(check: Any, default: Any = dataclasses.MISSING) -> Any:
    """A dataclass field whose value :func:`parse` checks with ``check(value, path)`` (no default: required)."""
    return dataclasses.field(default=default, metadata={"check": check})


def check_positive(value: Any, path: str) -> None:
    """A field check: ``value`` is None or an int >= 1."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(path, f"must be an int >= 1, got {value!r}")


_NAMES = {int: "an int", float: "a number", bool: "a bool", str: "a string", list: "a list", dict: "a mapping"}


def _name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Union:
        return " or ".join(_name(a) for a in typing.get_args(tp) if a is not type(None))
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return _NAMES.get(origin or tp, getattr(tp, "__name__", str(tp)))


def check_type(value: Any, tp: Any, path: str) -> Any:
    """``value`` checked against annotation ``tp`` (ints pass as floats; bools never as numbers)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Union:
        if value is None and type(None) in args:
            return None
        deepest = None  # an error inside the value (not about its type) names the deeper key
        for a in (a for a in args if a is not type(None)):
            try:
                return check_type(value, a, path)
            except ConfigError as exc:
                if exc.path != path and (deepest is None or len(exc.path) > len(deepest.path)):
                    deepest = exc
        raise deepest or ConfigError(path, f"expected {_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return parse(tp, value, path)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(path, f"expected {_name(tp)}, got {value!r}")
        return [check_type(v, args[0], key_path(path, i)) for i, v in enumerate(value)] if args else list(value)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a mapping, got {value!r}")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is list and isinstance(value, list):
        return list(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(path, f"expected {_name(tp)}, got {value!r}")
    return value


def parse(cls: type, data: Any, path: str = "", file: Any = None) -> Any:
    """An instance of dataclass ``cls`` from mapping ``data``, checked key by key."""
    if not isinstance(data, dict):
        raise ConfigError(path, f"expected a mapping, got {data!r}", file)
    with config_errors(file):
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        unknown_keys(data, fields, path)
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for name, f in fields.items():
            sub = key_path(path, name)
            if name not in data:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise ConfigError(sub, "is required")
                continue
            value = check_type(data[name], hints[name], sub)
            check = f.metadata.get("check")
            if check is not None:
                check(value, sub)
            kwargs[name] = value
        return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """A parsed config back as plain data (what :func:`parse` reads), fields left at None omitted."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if f.init and getattr(obj, f.name) is not None}
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
