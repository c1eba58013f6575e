"""Preference grids on the simplex."""

from __future__ import annotations

import numpy as np

__all__ = ["preference_grid"]


def _snake(n: int, d: int) -> list[tuple[int, ...]]:
    """Every composition of ``d`` into ``n`` parts, consecutive ones a lattice step apart.

    First part ascending; the compositions of the rest are listed recursively, reversed for odd first
    parts. By induction the list starts at ``(0, ..., 0, d)`` and ends at ``(d, 0, ..., 0)``, so each
    block of first part ``a`` ends next to where block ``a + 1`` starts (one unit moves into part 1).
    """
    if n == 1:
        return [(d,)]
    out = []
    for a in range(d + 1):
        rest = _snake(n - 1, d - a)
        out += [(a, *c) for c in (rest[::-1] if a % 2 else rest)]
    return out


def preference_grid(n: int, points: int = 11) -> np.ndarray:
    """Evenly spaced preferences on the n-simplex, ``[P, n]`` float64.

    Two objectives: ``points`` points from ``(0, 1)`` to ``(1, 0)`` (11 gives steps of 0.1).
    Three or more: the lattice of every ``mu`` with entries in ``{0, 1/d, ..., 1}``
    summing to 1, with ``d = points - 1`` divisions (``C(d + n - 1, n - 1)`` points:
    15 for ``n = 3, points = 5``).
    Ordered as a path through the lattice: ``mu_1`` ascending, and consecutive points
    always neighbours (they differ by ``1/d`` in exactly two objectives), a boustrophedon
    for ``n = 3``. Metrics over points "in preference order" (:func:`mogen.metrics.sparsity`)
    so compare neighbours only; for two objectives this is the order ``mu_1 = 0, 0.1, ...``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2 objectives, got {n!r}")
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise ValueError(f"points must be an int >= 2, got {points!r}")
    d = points - 1
    grid = np.asarray(_snake(n, d), dtype=np.float64) / d
    return np.round(grid, 12)
