"""What a sweep asks of a Ray cluster (``mogen sweep --ray``): the ``resources`` key of a sweep config.

::

    resources: {num_gpus: 1, num_cpus: 4}     # every method's workers (top level)
    max_retries: 2                            # each point's retries after a failure (default 2)
    methods:
      - {name: MPAW, kind: mpaw, resources: {num_gpus: 0.5, actors: 2}}   # this method's, over the top level's

Each method's points are decoded by ``actors`` Ray actors (default 1), each holding the method's models and
reserving ``num_cpus``, ``num_gpus`` (default 0) and ``memory`` (bytes, default none) while it lives. An actor
runs torch with ``torch_threads`` CPU threads; by default as many as its ``num_cpus``, else the driver's
``torch.get_num_threads()``, and it reserves as many CPUs as it runs threads when ``num_cpus`` is not given.
So by default an actor computes as a serial run of the driver's machine does (CPU arithmetic with another
thread count may differ in the last bits and flip sampled tokens; Ray itself starts workers with one thread),
and actors do not crowd onto shared cores (torch threads that share cores slow each other down several
times). A method's keys override the top level's, key by key. The keys are read only by a Ray run; they are
not part of a point's fingerprint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from ..configs import ConfigError, checked_field, check_positive, parse, to_dict

__all__ = ["Resources", "parse_resources", "DEFAULT_RETRIES", "RESOURCE_DEFAULTS"]

#: Retries of a failed point (``max_retries``) when neither the config nor the caller sets them.
DEFAULT_RETRIES = 2

#: What an actor reserves when the config does not say.
RESOURCE_DEFAULTS = {"num_gpus": 0.0, "actors": 1}


def _check_amount(value: Optional[float], path: str) -> None:
    """A field check: None or a finite number >= 0; above 1 a whole number (Ray's rule for fractions)."""
    if value is None:
        return
    if not math.isfinite(value) or value < 0:
        raise ConfigError(path, f"must be a number >= 0, got {value!r}")
    if value > 1 and value != int(value):
        raise ConfigError(path, f"must be a fraction <= 1 or a whole number, got {value!r}")


def _amount() -> Any:
    return checked_field(_check_amount, None)


def _positive() -> Any:
    return checked_field(check_positive, None)


@dataclass
class Resources:
    """One ``resources`` mapping (the module docstring)."""

    num_cpus: Optional[float] = _amount()
    num_gpus: Optional[float] = _amount()
    memory: Optional[int] = _positive()
    actors: Optional[int] = _positive()
    torch_threads: Optional[int] = _positive()


def parse_resources(raw: Any, where: str) -> dict:
    """The keys set in the ``resources`` mapping ``raw`` at key path ``where``, checked."""
    if raw is None:
        return {}
    return to_dict(parse(Resources, raw, where))
