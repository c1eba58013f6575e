"""mogen's built-in merge methods, each a registered :class:`~mogen.merging.methods.MergeMethod`.

``linear``, ``task_arithmetic``, ``bone_soup`` and ``passthrough`` are linear (one
coefficient matrix run by the streaming kernel); ``ties``, ``dare_linear``,
``dare_ties`` and ``slerp`` need a whole tensor at a time and run per tensor in
fp32 with torch.
"""

from __future__ import annotations

import hashlib
import math
import os
from typing import Optional

import numpy as np
import torch

from ..numerics import ZERO_NORM_EPS, ZERO_SUM_EPS
from .bone_soup import bone_soup_coefficients
from .methods import (LinearMethod, MergeMethod, MethodParams, as_matrix, as_scalar, normalize_rows, per_source,
                      register_method)

__all__ = ["dare_seed", "dare_keep_mask", "magnitude_mask", "slerp_scales"]

SLERP_DOT_THRESHOLD = 0.9995
SLERP_EPS = ZERO_NORM_EPS


def _lambda(params: MethodParams) -> float:
    return as_scalar(params.take("lambda", params.take("lambda_", 1.0)), "lambda")


@register_method
class Linear(LinearMethod):
    name = "linear"
    summary = "sum_i c_i x_i (normalize: divided by sum_i c_i)"
    parameters = ("normalize",)
    config_parameters = ("normalize",)
    config_weight = None  # a config names every model's weight

    def coefficients(self, spec, coefficients, params):
        if coefficients is None:
            raise ValueError("linear merging needs coefficients ([N] or [K, N])")
        c = as_matrix(coefficients, spec.num_sources, "coefficients")
        return normalize_rows(c, "coefficients") if params.take("normalize", False) else c

    def config_args(self, sources, weights, densities, base, params):
        if any(w is None for w in weights):
            raise ValueError("merge config: linear needs parameters.weight for every model")
        params.setdefault("normalize", True)  # mergekit's default
        return super().config_args(sources, weights, densities, base, params)


@register_method
class TaskArithmetic(LinearMethod):
    name = "task_arithmetic"
    summary = "base + lambda sum_i c_i (x_i - base)"
    needs_base = True
    parameters = ("lambda", "lambda_", "normalize")
    config_parameters = ("normalize", "lambda")

    def coefficients(self, spec, coefficients, params):
        if coefficients is None:
            raise ValueError("task_arithmetic needs coefficients (one weight per task model)")
        w = as_matrix(coefficients, spec.num_sources, "coefficients")
        if params.take("normalize", False):
            w = normalize_rows(w, "coefficients")
        w = _lambda(params) * w
        return np.concatenate([w, 1.0 - w.sum(axis=1, keepdims=True)], axis=1)


@register_method
class BoneSoup(LinearMethod):
    name = "bone_soup"
    summary = "Bone Soup: the coefficients are the preference mu"
    parameters = ("bone_beta", "alpha", "sft")
    config_parameters = ("bone_beta", "alpha", "sft")
    layerwise = False

    def coefficients(self, spec, coefficients, params):
        if coefficients is None:
            raise ValueError("bone_soup needs the preference mu as coefficients ([n] or [K, n])")
        if not params.given("bone_beta"):
            raise ValueError("bone_soup needs bone_beta (the backbones' dominant reward weight)")
        mu = as_matrix(coefficients, spec.num_sources, "coefficients (mu)")
        lam, c_sft = bone_soup_coefficients(mu, params.take("bone_beta"), params.take("alpha", 0.0))
        sft = params.take("sft")
        if c_sft == 0.0:
            return lam
        if sft is None:
            raise ValueError("bone_soup with alpha != 0 extrapolates away from the SFT checkpoint: pass sft=")
        spec.uses_sft = True
        spec.params["sft"] = sft
        return np.concatenate([lam, np.full((lam.shape[0], 1), c_sft)], axis=1)

    def config_args(self, sources, weights, densities, base, params):
        params["bone_beta"] = params.get("bone_beta")
        return super().config_args(sources, weights, densities, base, params)


# ---------------------------------------------------------------- ties and dare (per tensor, fp32)


class _SparseTaskMethod(MergeMethod):
    """ties / dare_linear / dare_ties: sparsified deltas from base, weighted, (sign-elected,) summed."""

    needs_base = True
    parameters = ("density", "drop_rate", "normalize", "lambda", "lambda_")
    config_parameters = ("normalize", "lambda")
    normalize_default = False

    def setup(self, spec, coefficients, params):
        n = spec.num_sources
        w = np.ones((1, n)) if coefficients is None else as_matrix(coefficients, n, "coefficients (weights)")
        density, drop = params.take("density"), params.take("drop_rate")
        if density is not None and drop is not None:
            raise ValueError("pass density or drop_rate, not both")
        if drop is not None:
            density = 1.0 - per_source(drop, n, "drop_rate", 0.0, 1.0)
        spec.params["density"] = per_source(1.0 if density is None else density, n, "density", 0.0, 1.0)
        spec.params["weights"] = w
        spec.params["normalize"] = bool(params.take("normalize", self.normalize_default))
        spec.params["lambda"] = _lambda(params)
        spec.num_outputs = w.shape[0]

    def config_args(self, sources, weights, densities, base, params):
        return {"sources": sources, "base": base, "coefficients": weights, "density": densities, **params}

    def sparsify(self, spec, name: str, i: int, delta: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def merge_tensor(self, spec, k, name, xs, base):
        w = spec.params["weights"]
        w = w[k if w.shape[0] > 1 else 0]
        weighted = [self.sparsify(spec, name, i, x - base) * float(w[i]) for i, x in enumerate(xs)]
        mixed, divisor = self.combine(weighted, w, base)
        if spec.params["normalize"]:
            mixed = mixed / divisor
        lam = spec.params["lambda"]
        if lam != 1.0:
            mixed = mixed * lam
        return base + mixed

    def combine(self, weighted: list, w: np.ndarray, base: torch.Tensor) -> tuple:
        """Sign election: the sum of the weighted deltas agreeing with the sign of their total, and the
        sum of their weights (the divisor of normalize)."""
        total = torch.stack(weighted).sum(0)
        elected = torch.where(total >= 0, 1.0, -1.0)
        mixed = torch.zeros_like(base)
        divisor = torch.zeros_like(base)
        for i, wd in enumerate(weighted):
            agree = torch.sign(wd) == elected
            mixed += wd * agree
            divisor += float(w[i]) * agree
        divisor[divisor == 0] = 1.0
        return mixed, divisor


@register_method
class Ties(_SparseTaskMethod):
    name = "ties"
    summary = "TIES: the top density of |x_i - base|, sign election (normalize defaults to true)"
    normalize_default = True

    def sparsify(self, spec, name, i, delta):
        mask = magnitude_mask(delta, float(spec.params["density"][i]))
        return delta if mask is None else delta * mask


class _Dare(_SparseTaskMethod):
    parameters = _SparseTaskMethod.parameters + ("rescale", "seed")
    config_parameters = _SparseTaskMethod.config_parameters + ("rescale", "seed")

    def setup(self, spec, coefficients, params):
        super().setup(spec, coefficients, params)
        spec.params["rescale"] = bool(params.take("rescale", True))
        seed = params.take("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}")
        spec.params["seed"] = seed
        if (spec.params["density"] == 0.0).any() and spec.params["rescale"]:
            raise ValueError("density 0 drops everything; rescaling by 1/density is undefined")

    def sparsify(self, spec, name, i, delta):
        d = float(spec.params["density"][i])
        if d < 1.0:
            delta = delta * dare_keep_mask(spec.params["seed"], name, i, delta.shape, d)
            if spec.params["rescale"]:
                delta = delta / d
        return delta


@register_method
class DareLinear(_Dare):
    name = "dare_linear"
    summary = "DARE: deltas dropped at random, rescaled (rescale=True), summed"

    def combine(self, weighted, w, base):
        mixed = torch.stack(weighted).sum(0) if weighted else torch.zeros_like(base)
        divisor = torch.full_like(base, float(w.sum()))
        divisor[divisor.abs() < ZERO_SUM_EPS] = 1.0
        return mixed, divisor


@register_method
class DareTies(_Dare):
    name = "dare_ties"
    summary = "DARE drops with TIES sign election"


def dare_seed(seed: int, name: str, source: int) -> int:
    """The RNG seed of source ``source``'s drop mask on tensor ``name``."""
    digest = hashlib.sha256(f"mogen-dare\0{seed}\0{name}\0{source}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def dare_keep_mask(seed: int, name: str, source: int, shape, density: float) -> torch.Tensor:
    """Bool mask of the elements DARE keeps (each with probability ``density``)."""
    g = torch.Generator().manual_seed(dare_seed(seed, name, source))
    return torch.rand(tuple(shape), generator=g, dtype=torch.float32) < density


def magnitude_mask(delta: torch.Tensor, density: float) -> Optional[torch.Tensor]:
    """Bool mask keeping the ``max(1, int(density * numel))`` largest ``|delta|`` (ties: lower index
    first; nothing at density 0); None when everything is kept."""
    n = delta.numel()
    if density >= 1.0:
        return None
    if density <= 0.0 or n == 0:
        return torch.zeros(delta.shape, dtype=torch.bool)
    k = max(1, int(density * n))
    if k >= n:
        return None
    flat = delta.abs().reshape(-1)
    thr = torch.kthvalue(flat, n - k + 1).values
    mask = flat > thr
    need = k - int(mask.sum())
    if need > 0:
        mask[torch.nonzero(flat == thr).reshape(-1)[:need]] = True
    return mask.reshape(delta.shape)


# ---------------------------------------------------------------- slerp (per tensor, fp32)


@register_method
class Slerp(MergeMethod):
    name = "slerp"
    summary = "spherical interpolation of two sources (t: 0 = the first, 1 = the second)"
    parameters = ("t",)
    config_parameters = ("t",)

    def setup(self, spec, coefficients, params):
        if spec.num_sources != 2:
            raise ValueError(f"slerp interpolates two sources, got {spec.num_sources}")
        t = params.take("t")
        if t is None:
            t = coefficients
        elif coefficients is not None:
            raise ValueError("pass slerp's t as t= or as coefficients, not both")
        if t is None:
            raise ValueError("slerp needs t (0 = the first source, 1 = the second)")
        ts = np.atleast_1d(np.array(t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else t, dtype=np.float64))
        if ts.ndim != 1 or not np.isfinite(ts).all():
            raise ValueError(f"slerp's t must be a finite number or a list of K numbers, got {t!r}")
        spec.params["t"] = ts
        spec.num_outputs = len(ts)

    def merge_tensor(self, spec, k, name, xs, base):
        s0, s1 = slerp_scales(float(spec.params["t"][k]), xs[0], xs[1])
        return xs[0] * s0 + xs[1] * s1

    def config_args(self, sources, weights, densities, base, params):
        if base is None:
            raise ValueError("merge config: slerp needs base_model (the t = 0 end)")
        others = [s for s in sources if os.path.abspath(s) != os.path.abspath(base)]
        if len(others) != 1:
            raise ValueError("merge config: slerp merges base_model with exactly one other model")
        t = params.pop("t", None)
        if t is None:
            raise ValueError("merge config: slerp needs parameters.t")
        return {"sources": [base, others[0]], "base": None, "t": t, **params}


def _dot64(a: torch.Tensor, b: torch.Tensor) -> float:
    """sum(a * b) accumulated in fp64, 1M elements at a time (bounded memory)."""
    fa, fb = a.reshape(-1), b.reshape(-1)
    step = 1 << 20
    return float(sum((fa[i : i + step].double() * fb[i : i + step].double()).sum() for i in range(0, fa.numel(), step)))


def slerp_scales(t: float, v0: torch.Tensor, v1: torch.Tensor) -> tuple[float, float]:
    """(s0, s1) with slerp(t, v0, v1) = s0 v0 + s1 v1: spherical interpolation of the directions
    of the flattened tensors, linear when they are nearly parallel."""
    n0 = math.sqrt(_dot64(v0, v0))
    n1 = math.sqrt(_dot64(v1, v1))
    d0 = n0 if n0 > SLERP_EPS else 1.0
    d1 = n1 if n1 > SLERP_EPS else 1.0
    dot = _dot64(v0, v1) / (d0 * d1)
    if abs(dot) > SLERP_DOT_THRESHOLD:
        return 1.0 - t, t
    theta = math.acos(max(-1.0, min(1.0, dot)))
    s = math.sin(theta)
    return math.sin((1.0 - t) * theta) / s, math.sin(t * theta) / s


# ---------------------------------------------------------------- passthrough (configs with slices)


@register_method
class Passthrough(LinearMethod):
    name = "passthrough"
    summary = "one source as is, or times scale (frankenmerges from config slices)"
    parameters = ("scale",)
    model_parameters = ("scale",)
    layerwise_only = True

    def coefficients(self, spec, coefficients, params):
        if spec.num_sources != 1 or coefficients is not None:
            raise ValueError(f"passthrough takes one source and no coefficients, got {spec.num_sources} source(s)")
        return as_matrix([params.take("scale", 1.0)], 1, "scale")
