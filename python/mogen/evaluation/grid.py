"""Preference grids on the simplex."""

from __future__ import annotations

import itertools

import numpy as np

__all__ = ["preference_grid"]


def preference_grid(n: int, points: int = 11) -> np.ndarray:
    """Evenly spaced preferences on the n-simplex, ``[P, n]`` float64.

    Two objectives: ``points`` points from ``(0, 1)`` to ``(1, 0)`` (11 gives steps of 0.1).
    Three or more: the lattice of every ``mu`` with entries in ``{0, 1/d, ..., 1}``
    summing to 1, with ``d = points - 1`` divisions (``C(d + n - 1, n - 1)`` points).
    Ordered so that consecutive points are neighbours in the first objective.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2 objectives, got {n!r}")
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise ValueError(f"points must be an int >= 2, got {points!r}")
    d = points - 1
    rows = [c for c in itertools.product(range(d + 1), repeat=n) if sum(c) == d]
    grid = np.asarray(sorted(rows), dtype=np.float64) / d
    return np.round(grid, 12)
