"""Merge methods: their parameters, the coefficient matrix of the linear ones,
and the per-tensor math of the others (docs/design.md section 1).

Inputs of a merge are numbered: the N sources first, then ``base`` (when the
method or the caller gives one), then the SFT checkpoint (Bone Soup with
``alpha != 0``). The linear methods (``linear``, ``task_arithmetic``,
``bone_soup``) reduce to one coefficient matrix ``[K, inputs]`` run by the
streaming kernel; ``ties``, ``dare_linear``, ``dare_ties`` and ``slerp`` need a
whole tensor at a time and run per tensor in fp32 with torch.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from ..numerics import NORMALIZE_ZERO_SUM, ZERO_NORM_EPS, ZERO_SUM_EPS
from .bone_soup import bone_soup_coefficients

__all__ = ["METHODS", "LINEAR_METHODS", "MergeMethodSpec", "resolve", "dare_seed", "dare_keep_mask"]

LINEAR_METHODS = ("linear", "task_arithmetic", "bone_soup")
METHODS = LINEAR_METHODS + ("ties", "dare_linear", "dare_ties", "slerp")
_NEEDS_BASE = ("task_arithmetic", "ties", "dare_linear", "dare_ties")
SLERP_DOT_THRESHOLD = 0.9995
SLERP_EPS = ZERO_NORM_EPS


@dataclass
class MergeMethodSpec:
    name: str
    num_sources: int
    num_outputs: int  # K
    uses_base: bool
    uses_sft: bool
    coef: Optional[np.ndarray] = None  # [K, inputs] float64, linear methods
    weights: Optional[np.ndarray] = None  # [K, N] per-source weights, ties / dare
    density: Optional[np.ndarray] = None  # [N]
    t: Optional[np.ndarray] = None  # [K], slerp
    params: dict = field(default_factory=dict)

    @property
    def linear(self) -> bool:
        return self.name in LINEAR_METHODS

    @property
    def num_inputs(self) -> int:
        return self.num_sources + int(self.uses_base) + int(self.uses_sft)

    def required_inputs(self) -> list[int]:
        """Inputs every merged tensor must be present in."""
        if self.linear:
            return [i for i in range(self.num_inputs) if np.any(self.coef[:, i] != 0.0)]
        return list(range(self.num_inputs))


def _matrix(values, n: int, what: str) -> np.ndarray:
    """``[n]`` or ``[K, n]`` finite numbers as a float64 ``[K, n]`` array."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    try:
        a = np.array(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be numbers, [N] or [K, N], got {values!r}") from None
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[1] != n or a.shape[0] == 0:
        raise ValueError(f"{what} must be [N] or [K, N] with N = {n} sources, got shape {tuple(np.shape(values))}")
    if not np.isfinite(a).all():
        raise ValueError(f"{what} must be finite, got {values!r}")
    return a


def _scalar(x, what: str, lo: Optional[float] = None, hi: Optional[float] = None) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a number, got {x!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{what} must be finite, got {x!r}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ValueError(f"{what} must be in [{lo}, {hi}], got {v}")
    return v


def _per_source(x, n: int, what: str, lo: float, hi: float) -> np.ndarray:
    a = np.array([x] * n if np.ndim(x) == 0 else x, dtype=np.float64)
    if a.shape != (n,):
        raise ValueError(f"{what} must be a number or one per source ({n}), got {x!r}")
    for v in a:
        _scalar(v, what, lo, hi)
    return a


def _normalize_rows(w: np.ndarray, what: str) -> np.ndarray:
    s = w.sum(axis=1, keepdims=True)
    if (np.abs(s) < NORMALIZE_ZERO_SUM).any():
        raise ValueError(f"normalize=True divides {what} by their sum, which is 0")
    return w / s


def resolve(method: str, num_sources: int, coefficients, has_base: bool, params: dict) -> MergeMethodSpec:
    """Validates a method's arguments and precomputes what the engine needs."""
    if method not in METHODS:
        raise ValueError(f"unknown merge method {method!r}; choose one of {', '.join(METHODS)}")
    if num_sources < 1:
        raise ValueError("merge needs at least one source")
    params = dict(params)

    def take(name, default):
        return params.pop(name, default)

    if method in _NEEDS_BASE and not has_base:
        raise ValueError(f"method {method!r} merges deltas from a base checkpoint: pass base=")
    n = num_sources
    spec = MergeMethodSpec(method, n, 1, uses_base=has_base and method != "bone_soup", uses_sft=False)
    if method == "linear":
        if coefficients is None:
            raise ValueError("linear merging needs coefficients ([N] or [K, N])")
        c = _matrix(coefficients, n, "coefficients")
        if take("normalize", False):
            c = _normalize_rows(c, "coefficients")
        spec.uses_base = False
        spec.coef = c
    elif method == "task_arithmetic":
        if coefficients is None:
            raise ValueError("task_arithmetic needs coefficients (one weight per task model)")
        w = _matrix(coefficients, n, "coefficients")
        if take("normalize", False):
            w = _normalize_rows(w, "coefficients")
        lam = _scalar(take("lambda", take("lambda_", 1.0)), "lambda")
        w = lam * w
        spec.coef = np.concatenate([w, 1.0 - w.sum(axis=1, keepdims=True)], axis=1)
    elif method == "bone_soup":
        if coefficients is None:
            raise ValueError("bone_soup needs the preference mu as coefficients ([n] or [K, n])")
        if "beta" not in params:
            raise ValueError("bone_soup needs beta (the backbones' dominant reward weight)")
        mu = _matrix(coefficients, n, "coefficients (mu)")
        lam, c_sft = bone_soup_coefficients(mu, take("beta", None), take("alpha", 0.0))
        sft = take("sft", None)
        spec.uses_base = False
        if c_sft != 0.0:
            if sft is None:
                raise ValueError("bone_soup with alpha != 0 extrapolates away from the SFT checkpoint: pass sft=")
            spec.uses_sft = True
            spec.params["sft"] = sft
            spec.coef = np.concatenate([lam, np.full((lam.shape[0], 1), c_sft)], axis=1)
        else:
            spec.coef = lam
    elif method in ("ties", "dare_linear", "dare_ties"):
        w = np.ones((1, n)) if coefficients is None else _matrix(coefficients, n, "coefficients (weights)")
        density = take("density", None)
        drop = take("drop_rate", None)
        if density is not None and drop is not None:
            raise ValueError("pass density or drop_rate, not both")
        if drop is not None:
            density = 1.0 - _per_source(drop, n, "drop_rate", 0.0, 1.0)
        spec.density = _per_source(1.0 if density is None else density, n, "density", 0.0, 1.0)
        spec.weights = w
        ties = method == "ties"
        spec.params["normalize"] = bool(take("normalize", ties))
        spec.params["lambda"] = _scalar(take("lambda", take("lambda_", 1.0)), "lambda")
        if not ties:
            spec.params["rescale"] = bool(take("rescale", True))
            seed = take("seed", 0)
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise TypeError(f"seed must be an int, got {seed!r}")
            spec.params["seed"] = seed
            if (spec.density == 0.0).any() and spec.params["rescale"]:
                raise ValueError("density 0 drops everything; rescaling by 1/density is undefined")
    elif method == "slerp":
        if n != 2:
            raise ValueError(f"slerp interpolates two sources, got {n}")
        t = take("t", None)
        if t is None:
            t = coefficients
        elif coefficients is not None:
            raise ValueError("pass slerp's t as t= or as coefficients, not both")
        if t is None:
            raise ValueError("slerp needs t (0 = the first source, 1 = the second)")
        ts = np.atleast_1d(np.array(t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else t, dtype=np.float64))
        if ts.ndim != 1 or not np.isfinite(ts).all():
            raise ValueError(f"slerp's t must be a finite number or a list of K numbers, got {t!r}")
        spec.t = ts
        spec.uses_base = False
    if params:
        raise TypeError(f"method {method!r} got unexpected parameters: {', '.join(sorted(params))}")
    if spec.coef is not None:
        spec.num_outputs = spec.coef.shape[0]
    elif spec.weights is not None:
        spec.num_outputs = spec.weights.shape[0]
    else:
        spec.num_outputs = len(spec.t)
    return spec


# ---------------------------------------------------------------- per-tensor math (fp32)


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


def sparse_task_merge(spec: MergeMethodSpec, k: int, name: str, base: torch.Tensor, xs: list) -> torch.Tensor:
    """ties / dare_linear / dare_ties for output k, all in fp32."""
    w = spec.weights[k if spec.weights.shape[0] > 1 else 0]
    weighted = []
    for i, x in enumerate(xs):
        delta = x - base
        d = float(spec.density[i])
        if spec.name == "ties":
            mask = magnitude_mask(delta, d)
            if mask is not None:
                delta = delta * mask
        elif d < 1.0:
            delta = delta * dare_keep_mask(spec.params["seed"], name, i, delta.shape, d)
            if spec.params["rescale"]:
                delta = delta / d
        weighted.append(delta * float(w[i]))
    if spec.name == "dare_linear":
        mixed = torch.stack(weighted).sum(0) if weighted else torch.zeros_like(base)
        divisor = torch.full_like(base, float(w.sum()))
        divisor[divisor.abs() < ZERO_SUM_EPS] = 1.0
    else:
        total = torch.stack(weighted).sum(0)
        elected = torch.where(total >= 0, 1.0, -1.0)
        mixed = torch.zeros_like(base)
        divisor = torch.zeros_like(base)
        for i, wd in enumerate(weighted):
            agree = torch.sign(wd) == elected
            mixed += wd * agree
            divisor += float(w[i]) * agree
        divisor[divisor == 0] = 1.0
    if spec.params["normalize"]:
        mixed = mixed / divisor
    lam = spec.params["lambda"]
    if lam != 1.0:
        mixed = mixed * lam
    return base + mixed


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
