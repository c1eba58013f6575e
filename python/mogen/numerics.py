"""Named numeric facts shared across mogen: the simplex check and its tolerance, the thresholds
below which a sum or norm counts as zero, and the trainers' gradient clip.

Numpy and the standard library only, so that any module may import it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SIMPLEX_TOL", "ZERO_SUM_EPS", "NORMALIZE_ZERO_SUM", "ZERO_NORM_EPS", "SINGULAR_EPS", "REWARD_STD_MIN",
           "GRAD_CLIP_NORM", "MIN_SECONDS", "off_simplex"]

#: how far a preference's entries may fall below 0 and its sum stray from 1 and still be on the simplex
SIMPLEX_TOL = 1e-6
#: a sum of merge weights smaller than this in magnitude divides as 1 (task arithmetic, DARE-linear)
ZERO_SUM_EPS = 1e-8
#: ``normalize=True`` refuses weights whose per-output sum is smaller than this in magnitude
NORMALIZE_ZERO_SUM = 1e-12
#: a tensor norm smaller than this is not divided by (SLERP's directions)
ZERO_NORM_EPS = 1e-8
#: Bone Soup's matrix ``B`` counts as singular when its eigenvalue ``a = (n beta - 1)/(n - 1)`` is this small
SINGULAR_EPS = 1e-9
#: a reward standard deviation below this leaves value targets unscaled
REWARD_STD_MIN = 1e-8
#: gradient-norm clip of mogen's trainers (value heads, the demo's experts)
GRAD_CLIP_NORM = 1.0
#: the least time a rate (tokens per second) divides by
MIN_SECONDS = 1e-9


def off_simplex(rows, tol: float = SIMPLEX_TOL) -> np.ndarray:
    """Per row of ``rows`` (``[n]`` or ``[K, n]``): True where it is off the probability simplex, that is
    an entry is not finite, one is below ``-tol``, or the row's sum is more than ``tol`` from 1."""
    r = np.atleast_2d(np.asarray(rows, dtype=np.float64))
    return ~np.isfinite(r).all(axis=1) | (r < -tol).any(axis=1) | (np.abs(r.sum(axis=1) - 1.0) > tol)
