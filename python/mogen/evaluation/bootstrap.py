"""Bootstrap intervals for a sweep's metrics.

A sweep's rewards are ``R [P, X, S, n]``: P preference points, X prompts, S
samples per prompt (pooled over decoding seeds), n objectives. A metric is a
function of the mean rewards ``[P, n]``. One bootstrap replicate draws X
prompts with replacement and, for each drawn prompt, S of its samples with
replacement, and recomputes every metric from the means of what it drew.

The drawn indices are the same at every preference point and for every method
of the run: all of them decode the same prompts with the same seeds (sample
``s`` of a prompt comes from the same random stream at every point), so their
rewards are paired, and a replicate keeps the pairs together. That is also
what lets a comparison of two methods (a ratio or difference of their HV) be
read from the same replicates.

The interval of a metric is the 2.5th and 97.5th percentile of its replicates
(a 95% percentile interval); the replicates are kept so that checks can judge
any function of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

__all__ = ["DEFAULT_RESAMPLES", "DEFAULT_SEED", "CONFIDENCE", "TAILS", "Interval", "resampled_means", "interval",
           "replicate_metrics"]

#: Replicates per interval, and the seed of their draws (a rerun reports the same intervals).
DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
#: The coverage of every interval.
CONFIDENCE = 0.95
#: The percentiles that bound a CONFIDENCE interval.
TAILS = ((1.0 - CONFIDENCE) / 2 * 100, (1.0 + CONFIDENCE) / 2 * 100)
#: Replicates drawn at once (bounds the memory of the gathered rewards).
_CHUNK = 50


@dataclass(frozen=True)
class Interval:
    """A point estimate and its bootstrap interval ``[low, high]``."""

    value: float
    low: float
    high: float

    def clears(self, target: float, above: bool = True) -> str:
        """``"met"`` when the whole interval is on the right side of ``target`` (``>=`` when ``above``),
        ``"not met"`` when it is wholly on the wrong side, else ``"within noise"``."""
        lo, hi = (self.low, self.high) if above else (-self.high, -self.low)
        t = target if above else -target
        if lo >= t:
            return "met"
        if hi < t:
            return "not met"
        return "within noise"


def _check(rewards: np.ndarray) -> np.ndarray:
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim != 4 or 0 in r.shape:
        raise ValueError(f"rewards must be a non-empty [P, X, S, n] array, got shape {r.shape}")
    return r


def resampled_means(rewards: np.ndarray, resamples: int = DEFAULT_RESAMPLES,
                    seed: int = DEFAULT_SEED) -> Iterator[np.ndarray]:
    """Mean rewards ``[P, n]`` of each of ``resamples`` bootstrap replicates of ``rewards [P, X, S, n]``.

    The draws depend only on ``(X, S, resamples, seed)``: two methods resampled
    with the same arguments see the same prompts and samples in each replicate.
    """
    r = _check(rewards)
    _, x, s, _ = r.shape
    rng = np.random.default_rng(seed)
    done = 0
    while done < resamples:
        b = min(_CHUNK, resamples - done)
        prompts = rng.integers(0, x, size=(b, x))
        samples = rng.integers(0, s, size=(b, x, s))
        drawn = r[:, prompts[:, :, None], samples, :]  # [P, b, X, S, n]
        for means in drawn.mean(axis=(2, 3)).transpose(1, 0, 2):
            yield means
        done += b


def interval(value: float, replicates: np.ndarray) -> Interval:
    """``value`` with the :data:`CONFIDENCE` percentile interval of its ``replicates`` (NaN ones ignored)."""
    rep = np.asarray(replicates, dtype=np.float64)
    rep = rep[np.isfinite(rep)]
    if rep.size == 0:
        return Interval(float(value), float("nan"), float("nan"))
    low, high = np.percentile(rep, TAILS)
    return Interval(float(value), float(low), float(high))


def replicate_metrics(rewards: np.ndarray, metrics: Callable[[np.ndarray], dict], resamples: int = DEFAULT_RESAMPLES,
                      seed: int = DEFAULT_SEED) -> dict[str, np.ndarray]:
    """``metrics(means [P, n]) -> {name: value}`` over every replicate: ``{name: [resamples, ...]}`` float64
    (a scalar value gives ``[resamples]``, an array value ``[resamples, *shape]``)."""
    out: dict[str, list] = {}
    for means in resampled_means(rewards, resamples, seed):
        for name, v in metrics(means).items():
            out.setdefault(name, []).append(v)
    return {name: np.asarray(v, dtype=np.float64) for name, v in out.items()}
