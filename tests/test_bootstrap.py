"""The sweep's bootstrap: paired draws, the right spread, seeded."""

from __future__ import annotations

import numpy as np
import pytest

from mogen.evaluation.bootstrap import interval, replicate_metrics, resampled_means


def _rewards(seed=0, points=2, prompts=12, samples=6, prompt_sd=1.0, noise_sd=0.5):
    """``[P, X, S, 1]``: a per-prompt effect shared by every point, plus per-sample noise."""
    rng = np.random.default_rng(seed)
    effect = rng.normal(0, prompt_sd, size=(1, prompts, 1, 1))
    return effect + rng.normal(0, noise_sd, size=(points, prompts, samples, 1))


def test_spread_matches_the_two_stage_variance():
    """Resampling prompts, then samples within each: Var(mean) = (X-1)/X s_b^2 / X + (S-1)/S s_w^2 / (X S),
    with s_b^2 the variance of the prompt means and s_w^2 the mean within-prompt variance."""
    r = _rewards()
    _, x, s, _ = r.shape
    means = np.stack(list(resampled_means(r, 4000, seed=1)))[:, 0, 0]
    prompt_means = r[0, :, :, 0].mean(axis=1)
    s_b2 = prompt_means.var()  # population variance: the bootstrap's plug-in
    s_w2 = r[0, :, :, 0].var(axis=1).mean()
    expected = np.sqrt(s_b2 / x + s_w2 / (x * s))
    assert means.std() == pytest.approx(expected, rel=0.08)
    assert means.mean() == pytest.approx(r[0].mean(), abs=3 * expected / np.sqrt(4000) * 10)


def test_draws_are_paired_across_points_and_methods():
    """A point that is another plus 0.1 everywhere stays exactly 0.1 above it in every replicate, and two
    methods resampled with the same seed see the same draws."""
    r = _rewards(points=1)
    shifted = np.concatenate([r, r + 0.1])
    for means in resampled_means(shifted, 200, seed=5):
        assert means[1, 0] - means[0, 0] == pytest.approx(0.1, abs=1e-12)
    a = np.stack(list(resampled_means(r, 50, seed=5)))
    b = np.stack(list(resampled_means(2 * r, 50, seed=5)))
    np.testing.assert_allclose(b, 2 * a, atol=1e-12)


def test_seeded_and_interval():
    r = _rewards()
    one = replicate_metrics(r, lambda m: {"m": m.mean()}, 300, seed=2)["m"]
    two = replicate_metrics(r, lambda m: {"m": m.mean()}, 300, seed=2)["m"]
    other = replicate_metrics(r, lambda m: {"m": m.mean()}, 300, seed=3)["m"]
    assert one.shape == (300,) and np.array_equal(one, two) and not np.array_equal(one, other)
    iv = interval(0.5, np.arange(1001) / 1000)
    assert (iv.value, iv.low, iv.high) == (0.5, pytest.approx(0.025), pytest.approx(0.975))
    flat = interval(1.0, np.ones(10))
    assert flat.low == flat.high == 1.0
    with pytest.raises(ValueError, match=r"\[P, X, S, n\]"):
        next(resampled_means(np.zeros((2, 3, 4)), 10))
