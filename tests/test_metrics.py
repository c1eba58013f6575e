"""Pareto metrics against brute force and hand-computed values."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mogen import metrics


def brute_hv(points, ref):
    """Inclusion-exclusion over every non-empty subset of points."""
    p, r = np.asarray(points, float), np.asarray(ref, float)
    total = 0.0
    for k in range(1, len(p) + 1):
        for subset in itertools.combinations(range(len(p)), k):
            corner = p[list(subset)].min(axis=0)
            total += (-1) ** (k + 1) * np.prod(np.clip(corner - r, 0, None))
    return total


def grid_hv(points, ref):
    """Unit cells of an integer grid dominated by some point (integer points and ref)."""
    p, r = np.asarray(points, int), np.asarray(ref, int)
    axes = [range(r[k], p[:, k].max()) for k in range(p.shape[1])]
    return sum(1 for cell in itertools.product(*axes) if np.any(np.all(p >= np.asarray(cell) + 1, axis=1)))


@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("seed", range(4))
def test_hypervolume_is_exact(n, seed):
    rng = np.random.default_rng(seed)
    m = 9 if n < 4 else 7
    pts = rng.integers(1, 6, size=(m, n))
    pts = np.vstack([pts, pts[:2]])  # duplicates
    ref = np.zeros(n)
    assert metrics.hypervolume(pts, ref) == pytest.approx(brute_hv(pts, ref))
    assert metrics.hypervolume(pts, ref) == grid_hv(pts, ref.astype(int))
    real = rng.random((8, n)) + 0.1
    assert metrics.hypervolume(real, ref) == pytest.approx(brute_hv(real, ref), rel=1e-12)


def test_hypervolume_small_cases_and_errors():
    assert metrics.hypervolume([[2, 1], [1, 2]], [0, 0]) == pytest.approx(3.0)
    assert metrics.hypervolume([[2, 1], [1, 2], [1, 1]], [0, 0]) == pytest.approx(3.0)  # dominated point
    assert metrics.hypervolume([[1, 1, 1]], [0, 0, 0]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="not strictly dominated by point 1"):
        metrics.hypervolume([[2, 2], [0, 3]], [0, 0])
    with pytest.raises(ValueError, match="ref must be 2"):
        metrics.hypervolume([[2, 2]], [0, 0, 0])


def test_front():
    pts = [[1, 3], [2, 2], [1, 1], [2, 2], [3, 0.5]]
    assert metrics.pareto_front(pts).tolist() == [[1, 3], [2, 2], [3, 0.5]]
    assert metrics.front_length(pts) == 3


def test_inner_product_sparsity_spacing():
    prefs = [[1, 0], [0.5, 0.5], [0, 1]]
    rewards = [[3, 0], [2, 2], [0, 4]]
    assert metrics.inner_product(prefs, rewards) == pytest.approx((3 + 2 + 4) / 3)
    assert metrics.sparsity(rewards) == pytest.approx(((1 + 4) + (4 + 4)) / 2)
    d = np.array([np.sqrt(5), np.sqrt(5), np.sqrt(8)])
    assert metrics.spacing(rewards) == pytest.approx(np.sqrt(np.mean((d - d.mean()) ** 2)))
    with pytest.raises(ValueError, match="same shape"):
        metrics.inner_product(prefs, rewards[:2])


def test_controllability():
    prefs = [[w, 1 - w] for w in np.linspace(0, 1, 11)]
    ordered = [[w, 1 - w] for w in np.linspace(0.1, 0.9, 11)]
    assert metrics.controllability(prefs, ordered) == 1.0
    swapped = list(ordered)
    swapped[3], swapped[4] = swapped[4], swapped[3]
    assert metrics.controllability(prefs, swapped) == pytest.approx(1 - 2 / (11 * 10))


def test_controllability_ignores_tied_preferences():
    """On the 3-objective lattice most pairs tie in one objective: that objective asks nothing, the
    other two decide; identical preferences are not pairs."""
    from mogen.evaluation import preference_grid

    prefs = preference_grid(3, 5)
    assert metrics.controllability(prefs, 0.1 + 0.5 * prefs) == 1.0  # rewards follow the weights
    flat = np.tile([0.2, 0.2, 0.2], (len(prefs), 1))
    assert metrics.controllability(prefs, flat) == 0.0
    # (1, 0, 0) vs (0, 1, 0): objective 3 tied; objectives 1 and 2 swapped the wrong way, so that pair fails
    rewards = 0.1 + 0.5 * prefs
    i, j = prefs.tolist().index([1.0, 0.0, 0.0]), prefs.tolist().index([0.0, 1.0, 0.0])
    rewards[[i, j]] = rewards[[j, i]]
    assert metrics.controllability(prefs, rewards) < 1.0
    twice = np.concatenate([prefs[:2], prefs[:2]])
    assert metrics.controllability(twice, 0.1 + twice) == 1.0
    with pytest.raises(ValueError, match="2 distinct preference points"):
        metrics.controllability([[0.5, 0.5], [0.5, 0.5]], [[1, 2], [2, 1]])
