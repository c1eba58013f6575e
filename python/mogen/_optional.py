"""Optional dependencies: packages that only some features need, each brought by one of mogen's extras
(pyproject.toml's ``[project.optional-dependencies]``). Every feature imports them through :func:`require`, so a
missing one is always reported the same way: the feature, the package and the ``pip install`` that brings it.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Optional

__all__ = ["MissingDependency", "require", "missing"]


class MissingDependency(ImportError):
    """A package that a feature needs is not installed (or cannot be imported). The command line reports it as
    a one-line error (exit 2) rather than a traceback, as it does bad input."""


def missing(package: str, extra: str, purpose: str, cause: BaseException,
            instead: Optional[str] = None) -> MissingDependency:
    """The error for ``purpose`` without ``package`` (``cause``: why the import failed; ``instead``: what else
    works without it)."""
    alternative = f"; or {instead}" if instead else ""
    return MissingDependency(f"{purpose} needs the `{package}` package, in mogen's `{extra}` extra: "
                             f"pip install 'mogen[{extra}]'{alternative} ({cause})", name=package)


def require(module: str, extra: str, purpose: str, instead: Optional[str] = None) -> ModuleType:
    """``module`` imported (a dotted name imports its package too), or a :class:`MissingDependency` saying that
    ``purpose`` needs its package and which extra of mogen brings it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise missing(module.partition(".")[0], extra, purpose, exc, instead) from None
