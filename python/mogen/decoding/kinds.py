"""Guide kinds as registered classes (docs/design.md section 2, layer 2).

A guide kind is one :class:`GuideTerm` subclass, registered for the guide
class it serves with :func:`register_guide_kind`. The term owns everything a
decoding call needs from the guide:

- :meth:`GuideTerm.bind`: check the guide against the base and register its
  models as runners (through the call's binder);
- its *step* contribution: :meth:`GuideTerm.full` over the whole vocabulary
  ``[B, V]``, or :meth:`GuideTerm.at` a few candidate ids when ``top_k`` is set;
  terms with ``fused = True`` (proxy guides) are instead gathered by
  :class:`~mogen.decoding.terms.Fusion` so kernel K1 fuses them in one call;
- its *sequence* contribution for chunk search: :meth:`GuideTerm.track` asks a
  :class:`~mogen.decoding.scoring.Tracking` for per-token tallies before the
  prefill, :meth:`GuideTerm.sequence` reads them back as float64 ``[R]``.

The fused score multiplies a term by ``scale`` (``"beta"`` or ``"gamma"``)
times the guide's weight. Adding a guide kind means one new class and one
:func:`register_guide_kind` call; ``generate``, ``search`` and the logits
processor then take the guide like the built-in ones.
"""

from __future__ import annotations

from typing import Any, ClassVar, Optional

import torch

__all__ = ["GuideTerm", "register_guide_kind", "guide_kind", "guide_kinds"]

_KINDS: dict[type, type["GuideTerm"]] = {}


class GuideTerm:
    """What one guide adds to the fused score of one decoding call.

    Attributes:
        guide: the guide object.
        column: the guide's column in the call's weights (over the active guides).
        top_k: None (the term covers the whole vocabulary), or k (it is valued only at the k best
            candidates of the rest of the score, :meth:`at`; every term in this mode shares one k).
    """

    scale: ClassVar[str] = "gamma"
    fused: ClassVar[bool] = False

    def __init__(self, guide: Any, column: int) -> None:
        self.guide = guide
        self.column = column
        self.top_k: Optional[int] = None

    @classmethod
    def runs(cls, guide: Any, *, beta: float, gamma: float) -> bool:
        """Whether a guide with non-zero weight takes part (its models are run) at these scales."""
        return True

    @classmethod
    def bind(cls, binder: Any, index: int, column: int, guide: Any, shared: bool) -> "GuideTerm":
        """The guide's term; ``binder.runner(...)`` registers its models (``shared``: it reads the base's ids)."""
        raise NotImplementedError(f"{cls.__name__}.bind")

    def full(self) -> torch.Tensor:
        """The step contribution over the base vocabulary, float32 ``[B, V]`` (or ``[1, V]``)."""
        raise NotImplementedError(f"{type(self).__name__}.full")

    def at(self, ids: torch.Tensor) -> torch.Tensor:
        """The step contribution at base ids ``ids [B, k]``, float32 ``[B, k]``."""
        full = self.full()
        return full.expand(ids.shape[0], -1).gather(1, ids)

    def track(self, tracking: Any) -> Any:
        """Before the prefill: ask ``tracking`` for the tallies :meth:`sequence` reads; returns their handles."""
        raise NotImplementedError(f"{type(self).__name__}.track")

    def sequence(self, tracking: Any, handles: Any) -> torch.Tensor:
        """The sequence contribution of every row's continuation so far, float64 ``[R]``."""
        raise NotImplementedError(f"{type(self).__name__}.sequence")


def register_guide_kind(guide_type: type, term_type: type[GuideTerm]) -> None:
    """Guides that are instances of ``guide_type`` are bound as ``term_type`` (which must subclass GuideTerm).

    A guide object needs ``weight`` (its default weight) and ``tokenizer`` (None: the base's).
    """
    if not (isinstance(guide_type, type) and isinstance(term_type, type) and issubclass(term_type, GuideTerm)):
        raise TypeError("register_guide_kind(guide_type, term_type) takes a class and a GuideTerm subclass")
    if term_type.scale not in ("beta", "gamma"):
        raise ValueError(f"{term_type.__name__}.scale must be 'beta' or 'gamma', got {term_type.scale!r}")
    _KINDS[guide_type] = term_type


def guide_kind(guide: Any) -> Optional[type[GuideTerm]]:
    """The term class registered for ``guide``'s class (or a base class of it); None when there is none."""
    for cls in type(guide).__mro__:
        if cls in _KINDS:
            return _KINDS[cls]
    return None


def guide_kinds() -> tuple[type, ...]:
    """The registered guide classes."""
    return tuple(_KINDS)
