"""mergekit's parameter settings: a number, a per-layer gradient, or filtered entries.

A setting is one of
- a scalar (number, bool or string): used as is;
- a gradient, a list of numbers: interpolated linearly at the layer's position
  ``t`` in [0, 1] (``t = i / (n - 1)`` for layer ``i`` of an n-layer slice, 0
  for tensors outside the layers), as mergekit does:
  ``x = t * (len - 1)``, ``i0 = floor(x)``, value ``(1 - f) v[i0] + f v[i0 + 1]``
  with ``f = x - i0`` (a list of non-numbers takes ``v[floor(x)]``);
- a ``{filter, value}`` entry or a list of them: the first whose ``filter`` is a
  substring of the tensor's name (or is absent or ``"*"``) gives the value,
  itself a scalar or a gradient. No entry matching means "not set here", and
  the lookup falls through to the next level (slice, then top level).
"""

from __future__ import annotations

from typing import Any, Optional

from ..configs import ConfigError


def _error(path: str, message: str) -> ConfigError:
    return ConfigError(path, message, label="merge config")

__all__ = ["check_setting", "evaluate_setting", "is_scalar_setting"]

_SCALARS = (int, float, bool, str)


def _is_entry(x: Any) -> bool:
    return isinstance(x, dict)


def check_setting(setting: Any, where: str) -> None:
    """Raises a ConfigError (a ValueError) at key path ``where`` unless mergekit accepts ``setting``."""
    if isinstance(setting, _SCALARS):
        return
    entries = [setting] if _is_entry(setting) else setting
    if not isinstance(entries, list) or not entries:
        raise _error(where, f"expected a number, a list of numbers (a gradient) or filter/value entries, "
                     f"got {setting!r}")
    if all(isinstance(e, _SCALARS) for e in entries):
        return
    for i, e in enumerate(entries):
        here = f"{where}[{i}]"
        if not _is_entry(e):
            raise _error(here, f"a list mixing filter/value entries and numbers, got {e!r}")
        unknown = set(e) - {"filter", "value"}
        if unknown:
            raise _error(here, f"unknown keys {sorted(unknown)} (an entry has 'filter' and 'value')")
        if "value" not in e:
            raise _error(here, "an entry needs 'value'")
        if e.get("filter") is not None and not isinstance(e["filter"], str):
            raise _error(f"{here}.filter", f"expected a string, got {e['filter']!r}")
        v = e["value"]
        if not isinstance(v, _SCALARS) and not (isinstance(v, list) and v and all(isinstance(x, _SCALARS) for x in v)):
            raise _error(f"{here}.value", f"expected a number or a list of numbers, got {v!r}")


def is_scalar_setting(setting: Any) -> bool:
    return isinstance(setting, _SCALARS) or setting is None


def _gradient(values: list, t: float) -> Any:
    # The same float operations as mergekit, so boundary layers land on the same side.
    scaled = t * (len(values) - 1)
    i0 = int(scaled)
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        i1 = min(len(values) - 1, i0 + 1)
        frac = scaled - i0
        return (1 - frac) * values[i0] + frac * values[i1]
    return values[i0]


def evaluate_setting(setting: Any, tensor_name: str, t: float) -> Optional[Any]:
    """The value of a checked setting for tensor ``tensor_name`` at layer position ``t``;
    None when filtered entries exist but none matches the name."""
    if isinstance(setting, _SCALARS):
        return setting
    entries = [setting] if _is_entry(setting) else setting
    if all(isinstance(e, _SCALARS) for e in entries):
        return _gradient(entries, t)
    for e in entries:
        f = e.get("filter")
        if f is None or f == "*" or (tensor_name and f in tensor_name):
            return evaluate_setting(e["value"], tensor_name, t)
    return None
