"""Bone Soup merging coefficients (MAGE Stage 1; docs/design.md section 1)."""

from __future__ import annotations

import math

import numpy as np

from ..numerics import SINGULAR_EPS, off_simplex

__all__ = ["bone_soup_coefficients"]


def bone_soup_coefficients(mu, bone_beta: float, alpha: float = 0.0):
    """Merging coefficients of n backbone checkpoints for preference ``mu``.

    The backbones were trained on rewards mixed by the circulant matrix ``B``
    (``beta`` on the diagonal, ``(1 - beta) / (n - 1)`` elsewhere), so the
    preference is met by ``lambda = B^-1 mu``, in closed form
    ``lambda = (mu - b * sum(mu)) / a`` with ``a = (n beta - 1) / (n - 1)`` and
    ``b = (1 - beta) / (n - 1)``. Extrapolating away from the SFT checkpoint,
    ``(1 + alpha) theta_hat - alpha theta_sft``, scales the backbones' coefficients
    by ``1 + alpha`` and gives the SFT checkpoint ``-alpha``.

    Args:
        mu: a preference on the simplex, ``[n]`` (n >= 2), or ``[K, n]`` for K preferences.
        bone_beta: ``beta``, the dominant reward weight of each backbone (named apart from the guidance
            scale ``beta`` of decoding); ``B`` is singular at ``beta = 1/n``.
        alpha: extrapolation strength (0: none).

    Returns:
        ``(lambdas, sft_coefficient)``: a float64 array shaped like ``mu`` holding
        ``(1 + alpha) * lambda``, and ``-alpha`` (the SFT checkpoint's coefficient).
    """
    m = np.asarray(mu, dtype=np.float64)
    if m.ndim not in (1, 2) or m.shape[-1] < 2:
        raise ValueError(f"mu must be [n] or [K, n] with n >= 2 objectives, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError(f"mu must be finite, got {mu}")
    n = m.shape[-1]
    rows = np.atleast_2d(m)
    sums = rows.sum(axis=1)
    off = off_simplex(rows)
    if off.any():
        bad = int(np.argmax(off))
        raise ValueError(
            f"mu must lie on the simplex (entries >= 0 summing to 1); row {bad} = {rows[bad].tolist()} "
            f"sums to {sums[bad]:.6g}"
        )
    beta = float(bone_beta)
    alpha = float(alpha)
    if not math.isfinite(beta):
        raise ValueError(f"bone_beta must be finite, got {beta}")
    if not math.isfinite(alpha):
        raise ValueError(f"alpha must be finite, got {alpha}")
    a = (n * beta - 1.0) / (n - 1)
    b = (1.0 - beta) / (n - 1)
    if abs(a) < SINGULAR_EPS:
        raise ValueError(
            f"bone_beta = {beta} makes the Bone Soup matrix B singular (beta = 1/n = {1.0 / n:.6g} for n = {n}); "
            "pick bone_beta in (1/n, 1]"
        )
    lam = (m - b * m.sum(axis=-1, keepdims=True)) / a
    return (1.0 + alpha) * lam, -alpha
