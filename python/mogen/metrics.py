"""Pareto-front metrics of a preference sweep (MAGE sec. 5.4, docs/design.md section 1).

Every function maximises: a point ``r`` of ``n`` rewards is better when every
coordinate is larger. Inputs are array-likes (``[N, n]`` points, ``[N, n]``
preferences in sweep order), outputs plain floats or ints. Reference points
are always explicit.

- :func:`hypervolume`: the volume dominated by the points above ``ref``
  (eq. 27), exact for any ``n`` (a sweep in 2-D, slicing by the last objective
  beyond);
- :func:`inner_product`: mean over points of ``mu . r`` (eq. 28);
- :func:`sparsity`: mean squared distance between consecutive points (eq. 29),
  so the order matters: :func:`mogen.evaluation.preference_grid` lists any
  ``n`` as a path of neighbouring preferences;
- :func:`spacing`: standard deviation of each point's distance to its nearest
  other point (eq. 30);
- :func:`controllability`: MAGE Definition 1, the share of ordered pairs of
  distinct preference points where every objective's reward moves the way its
  preference moves (an objective whose preference is tied in the pair, as on
  the three-objective lattice, asks nothing);
- :func:`pareto_front` / :func:`front_length`: the non-dominated points.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["hypervolume", "inner_product", "sparsity", "spacing", "controllability", "pareto_front", "front_length"]


def _points(points: Any, name: str = "points") -> np.ndarray:
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty [N, n] array, got shape {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError(f"{name} must be finite")
    return p


def pareto_front(points: Any) -> np.ndarray:
    """The distinct non-dominated points of ``points [N, n]`` (maximisation), ``[F, n]`` in input order."""
    p = _points(points)
    keep = []
    for i, x in enumerate(p):
        dominated = np.any(np.all(p >= x, axis=1) & np.any(p > x, axis=1))
        duplicate = any(np.array_equal(x, p[j]) for j in keep)
        if not dominated and not duplicate:
            keep.append(i)
    return p[keep]


def front_length(points: Any) -> int:
    """How many distinct points are non-dominated."""
    return int(pareto_front(points).shape[0])


def _hv(front: np.ndarray, ref: np.ndarray) -> float:
    """Exact hypervolume of mutually non-dominated ``front`` above ``ref`` (all strictly above)."""
    n = front.shape[1]
    if n == 1:
        return float(front[:, 0].max() - ref[0])
    if n == 2:
        order = np.argsort(-front[:, 0], kind="stable")
        total, y_top = 0.0, ref[1]
        for x, y in front[order]:  # x descending, so y ascending along the front
            if y > y_top:
                total += (x - ref[0]) * (y - y_top)
                y_top = y
        return float(total)
    order = np.argsort(-front[:, -1], kind="stable")
    pts = front[order]
    total = 0.0
    for i in range(len(pts)):
        low = pts[i + 1, -1] if i + 1 < len(pts) else ref[-1]
        height = pts[i, -1] - low
        if height > 0:
            slab = pareto_front(pts[: i + 1, :-1])
            total += height * _hv(slab, ref[:-1])
    return float(total)


def hypervolume(points: Any, ref: Any) -> float:
    """Volume of the union of boxes ``[ref, p]`` over ``points [N, n]`` (MAGE eq. 27), exact.

    Raises ValueError unless every point is strictly above ``ref`` in every coordinate.
    """
    p = _points(points)
    r = np.asarray(ref, dtype=np.float64).reshape(-1)
    if r.shape[0] != p.shape[1] or not np.isfinite(r).all():
        raise ValueError(f"ref must be {p.shape[1]} finite numbers, got {np.asarray(ref).tolist()}")
    below = np.where(~np.all(p > r, axis=1))[0]
    if below.size:
        raise ValueError(f"ref {r.tolist()} is not strictly dominated by point {int(below[0])} "
                         f"({p[below[0]].tolist()}); choose a reference point below every point")
    return _hv(pareto_front(p), r)


def _paired(prefs: Any, rewards: Any) -> tuple[np.ndarray, np.ndarray]:
    mu, r = _points(prefs, "prefs"), _points(rewards, "rewards")
    if mu.shape != r.shape:
        raise ValueError(f"prefs {mu.shape} and rewards {r.shape} must have the same shape [N, n]")
    return mu, r


def inner_product(prefs: Any, rewards: Any) -> float:
    """Mean over points of ``mu_i . r_i`` (MAGE eq. 28)."""
    mu, r = _paired(prefs, rewards)
    return float(np.mean(np.sum(mu * r, axis=1)))


def sparsity(rewards: Any) -> float:
    """``1/(N-1) sum_i ||r_i - r_{i-1}||^2`` over points in preference order (MAGE eq. 29).

    Consecutive rows should be neighbouring preferences, or a jump across the simplex counts as a gap:
    for ``n >= 3`` :func:`mogen.evaluation.preference_grid` orders its lattice as a path whose
    consecutive points are one lattice step apart, which keeps eq. 29 a mean over neighbours.
    """
    r = _points(rewards, "rewards")
    if len(r) < 2:
        raise ValueError("sparsity needs at least 2 points")
    return float(np.sum(np.diff(r, axis=0) ** 2) / (len(r) - 1))


def spacing(rewards: Any) -> float:
    """Standard deviation of ``d_i = min_{j != i} ||r_i - r_j||`` (MAGE eq. 30)."""
    r = _points(rewards, "rewards")
    if len(r) < 2:
        raise ValueError("spacing needs at least 2 points")
    dist = np.sqrt(((r[:, None, :] - r[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(dist, np.inf)
    d = dist.min(axis=1)
    return float(np.sqrt(np.mean((d - d.mean()) ** 2)))


def controllability(prefs: Any, rewards: Any) -> float:
    """MAGE Definition 1: over ordered pairs ``i != j`` with ``mu_i != mu_j``, the share where for every
    objective ``k`` with ``mu_ik != mu_jk``, ``sgn(mu_ik - mu_jk) == sgn(R_k(i) - R_k(j))``.

    An objective whose preference is tied in a pair constrains nothing: the preference does not say
    which reward should be larger, and demanding exactly equal mean rewards would fail almost every
    such pair. Two objectives on a grid never tie (``mu_2 = 1 - mu_1``), so there this is the literal
    definition; on the three-objective lattice most pairs tie in one objective and are judged on the
    other two.
    """
    mu, r = _paired(prefs, rewards)
    dmu = np.sign(mu[:, None, :] - mu[None, :, :])  # [N, N, n]
    agree = np.all((dmu == 0) | (dmu == np.sign(r[:, None, :] - r[None, :, :])), axis=2)
    distinct = np.any(dmu != 0, axis=2)  # excludes i == j and repeated preferences
    if not distinct.any():
        raise ValueError("controllability needs at least 2 distinct preference points")
    return float((agree & distinct).sum() / distinct.sum())
