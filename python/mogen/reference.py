"""Pure-PyTorch reference of every mogen kernel.

These functions define the math the compiled kernels must reproduce (docs/design.md
section 1). They are used by the tests and as the fallback when the compiled
extension is missing. They favour clarity over speed: every step is a plain
torch op, computed in ``dtype`` (fp32 by default, fp64 for tight checks).
"""

from __future__ import annotations

import hashlib as _hashlib
import math as _math
from typing import Optional, Sequence

import numpy as _np
import torch

from .numerics import ZERO_NORM_EPS, ZERO_SUM_EPS

__all__ = ["fused_log_ratio", "fused_log_ratio_topk", "fused_log_ratio_argmax", "topk_value_scores", "merge_linear",
           "merge_task_arithmetic", "bone_soup_matrix", "bone_soup_lambdas", "merge_ties", "merge_dare", "dare_mask",
           "merge_slerp"]


def _guide_term(
    expert: torch.Tensor,
    ref: torch.Tensor,
    vocab_map: Optional[torch.Tensor],
    temperature: float,
    unmapped: float,
    dtype: torch.dtype,
) -> torch.Tensor:
    """``log p_e(m(v)) - log p_r(m(v))`` over the base vocabulary, ``[B, V_b]``."""
    diff = torch.log_softmax(expert.to(dtype) / temperature, dim=-1) - torch.log_softmax(
        ref.to(dtype) / temperature, dim=-1
    )
    if vocab_map is None:
        return diff
    ids = vocab_map.to(device=diff.device, dtype=torch.long)
    mapped = ids >= 0
    gathered = diff.index_select(1, ids.clamp(min=0))
    return torch.where(mapped, gathered, torch.full_like(gathered, unmapped))


def fused_log_ratio(
    base_logits: torch.Tensor,
    expert_logits: Sequence[torch.Tensor],
    ref_logits: Sequence[torch.Tensor],
    weights: torch.Tensor,
    *,
    vocab_maps: Optional[Sequence[Optional[torch.Tensor]]] = None,
    beta: float = 1.0,
    base_temperature: float = 1.0,
    temperatures: Optional[Sequence[float]] = None,
    unmapped: float = 0.0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Fused multi-objective score, ``[B, V_b]`` in ``dtype``.

    ``s(v) = log_softmax(z_b / tau)(v)
             + beta * sum_i w_i * (log_softmax(z_ei / t_i)[m_i(v)] - log_softmax(z_ri / t_i)[m_i(v)])``

    where ``m_i(v) = -1`` contributes ``unmapped`` instead of the log-ratio.
    ``weights`` is ``[M]`` (shared by all rows) or ``[B, M]`` (per row).
    """
    m = len(expert_logits)
    maps = list(vocab_maps) if vocab_maps is not None else [None] * m
    temps = list(temperatures) if temperatures is not None else [1.0] * m
    out = torch.log_softmax(base_logits.to(dtype) / base_temperature, dim=-1)
    w = torch.as_tensor(weights, dtype=dtype, device=out.device)
    if w.dim() == 1:
        w = w.unsqueeze(0).expand(out.shape[0], m)
    for i in range(m):
        term = _guide_term(expert_logits[i], ref_logits[i], maps[i], temps[i], unmapped, dtype)
        out = out + beta * w[:, i : i + 1] * term
    return out


def fused_log_ratio_topk(
    base_logits: torch.Tensor,
    expert_logits: Sequence[torch.Tensor],
    ref_logits: Sequence[torch.Tensor],
    weights: torch.Tensor,
    k: int,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best fused scores per row, ``([B, k] values, [B, k] int64 ids)``, best first."""
    scores = fused_log_ratio(base_logits, expert_logits, ref_logits, weights, **kwargs)
    return torch.topk(scores, k, dim=-1, largest=True, sorted=True)


def fused_log_ratio_argmax(
    base_logits: torch.Tensor,
    expert_logits: Sequence[torch.Tensor],
    ref_logits: Sequence[torch.Tensor],
    weights: torch.Tensor,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The best fused score per row and its id, ``([B] values, [B] int64 ids)``; ``torch.argmax``
    ranks NaN above everything and returns the lowest id of equal scores."""
    scores = fused_log_ratio(base_logits, expert_logits, ref_logits, weights, **kwargs)
    ids = torch.argmax(scores, dim=-1)
    return scores.gather(1, ids.unsqueeze(1)).squeeze(1), ids


# ---------------------------------------------------------------- value scores (K2)


def topk_value_scores(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    ids: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Value-head scores at candidate ids only, ``[B, k]`` in ``dtype``.

    ``out[b, c] = hidden[b] . weight[ids[b, c]] + bias[ids[b, c]]`` with
    hidden ``[B, H]``, weight ``[V, H]``, ids ``[B, k]`` (int32 or int64, in
    ``[0, V)``) and bias ``[V]`` or None; every input is cast to ``dtype``
    before the products, which are summed in ``dtype``.
    """
    flat = ids.reshape(-1).to(device=weight.device, dtype=torch.long)
    rows = weight.index_select(0, flat).to(dtype).reshape(ids.shape[0], ids.shape[1], weight.shape[1])
    out = torch.bmm(rows, hidden.to(dtype).unsqueeze(2)).squeeze(2)
    if bias is not None:
        out = out + bias.index_select(0, flat).to(dtype).reshape(ids.shape)
    return out


# ---------------------------------------------------------------- merging (K3)
#
# Per-tensor references of the merge methods (docs/design.md section 1), in float64
# on whole tensors. The engine (mogen.merging) streams and accumulates in fp32;
# these define what it must compute.


def merge_linear(tensors: Sequence[torch.Tensor], coefficients: Sequence[float]) -> torch.Tensor:
    """``sum_k c_k theta_k`` in float64."""
    out = torch.zeros(tensors[0].shape, dtype=torch.float64)
    for c, t in zip(coefficients, tensors):
        out += float(c) * t.to(torch.float64)
    return out


def merge_task_arithmetic(base: torch.Tensor, tensors: Sequence[torch.Tensor], weights: Sequence[float],
                          lam: float = 1.0) -> torch.Tensor:
    """``theta_0 + lam * sum_k w_k (theta_k - theta_0)`` in float64."""
    b = base.to(torch.float64)
    return b + lam * sum(float(w) * (t.to(torch.float64) - b) for w, t in zip(weights, tensors))


def bone_soup_matrix(n: int, beta: float) -> torch.Tensor:
    """Bone Soup's circulant reward-mixing matrix B: beta on the diagonal, (1 - beta)/(n - 1) elsewhere."""
    off = (1.0 - beta) / (n - 1)
    return torch.full((n, n), off, dtype=torch.float64) + (beta - off) * torch.eye(n, dtype=torch.float64)


def bone_soup_lambdas(mu: Sequence[float], beta: float) -> torch.Tensor:
    """``lambda = B^-1 mu`` by a linear solve (the engine uses the closed form)."""
    m = torch.as_tensor(mu, dtype=torch.float64)
    return torch.linalg.solve(bone_soup_matrix(m.shape[-1], beta), m)


def _top_k_mask(delta32: torch.Tensor, density: float) -> torch.Tensor:
    """Keeps the max(1, int(density * numel)) largest |delta| (fp32 magnitudes; ties: lower index
    first); all at density >= 1, none at density <= 0."""
    n = delta32.numel()
    k = n if density >= 1.0 else (0 if density <= 0.0 or n == 0 else max(1, int(density * n)))
    keep = torch.zeros(n, dtype=torch.bool)
    if k >= n:
        keep[:] = True
    elif k > 0:
        order = _np.argsort(-delta32.abs().reshape(-1).numpy(), kind="stable")
        keep[torch.from_numpy(order[:k].copy())] = True
    return keep.reshape(delta32.shape)


def dare_mask(seed: int, name: str, source: int, shape, density: float) -> torch.Tensor:
    """DARE's keep mask of source ``source`` on tensor ``name``: each element kept with
    probability ``density``, from a generator seeded by sha256(seed, name, source)."""
    digest = _hashlib.sha256(f"mogen-dare\0{seed}\0{name}\0{source}".encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return torch.rand(tuple(shape), generator=g, dtype=torch.float32) < density


def _disjoint(base: torch.Tensor, weighted: list, weights: Sequence[float], normalize: bool, lam: float,
              consensus: bool) -> torch.Tensor:
    if consensus:
        total = sum(weighted)
        sign = torch.where(total >= 0, 1.0, -1.0).to(torch.float64)
        agree = [torch.sign(d) == sign for d in weighted]
        mixed = sum(d * a for d, a in zip(weighted, agree))
        divisor = sum(float(w) * a.to(torch.float64) for w, a in zip(weights, agree))
        divisor = torch.where(divisor == 0, torch.ones_like(divisor), divisor)
    else:
        mixed = sum(weighted)
        s = float(sum(weights))
        divisor = torch.full_like(base, 1.0 if abs(s) < ZERO_SUM_EPS else s)
    if normalize:
        mixed = mixed / divisor
    return base + lam * mixed


def merge_ties(base: torch.Tensor, tensors: Sequence[torch.Tensor], weights: Sequence[float],
               density, normalize: bool = True, lam: float = 1.0) -> torch.Tensor:
    """TIES: per source keep the top ``density`` fraction of its delta by magnitude, elect
    each element's sign from the weighted sum, average the agreeing weighted deltas
    (divided by the agreeing weights when ``normalize``). float64."""
    dens = [density] * len(tensors) if isinstance(density, (int, float)) else list(density)
    b = base.to(torch.float64)
    weighted = []
    for w, t, d in zip(weights, tensors, dens):
        delta32 = t.to(torch.float32) - base.to(torch.float32)
        keep = _top_k_mask(delta32, d)
        weighted.append(float(w) * (t.to(torch.float64) - b) * keep)
    return _disjoint(b, weighted, weights, normalize, lam, consensus=True)


def merge_dare(base: torch.Tensor, tensors: Sequence[torch.Tensor], weights: Sequence[float], density, *,
               name: str, seed: int = 0, ties: bool = False, rescale: bool = True, normalize: bool = False,
               lam: float = 1.0) -> torch.Tensor:
    """DARE: drop each delta element with probability 1 - density (``dare_mask``), rescale the
    rest by 1/density, then sum (dare_linear) or TIES' sign election (dare_ties). float64."""
    dens = [density] * len(tensors) if isinstance(density, (int, float)) else list(density)
    b = base.to(torch.float64)
    weighted = []
    for i, (w, t, d) in enumerate(zip(weights, tensors, dens)):
        delta = t.to(torch.float64) - b
        if d < 1.0:
            delta = delta * dare_mask(seed, name, i, delta.shape, d)
            if rescale:
                delta = delta / d
        weighted.append(float(w) * delta)
    return _disjoint(b, weighted, weights, normalize, lam, consensus=ties)


def merge_slerp(v0: torch.Tensor, v1: torch.Tensor, t: float, dot_threshold: float = 0.9995,
                eps: float = ZERO_NORM_EPS) -> torch.Tensor:
    """Spherical interpolation of the flattened tensors' directions (linear when nearly
    parallel, ``|cos| > dot_threshold``), applied to the unnormalised tensors. float64."""
    a, b = v0.to(torch.float64), v1.to(torch.float64)
    na, nb = a.norm().item(), b.norm().item()
    cos = float((a / (na if na > eps else 1.0) * (b / (nb if nb > eps else 1.0))).sum())
    if abs(cos) > dot_threshold:
        return (1.0 - t) * a + t * b
    theta = _math.acos(max(-1.0, min(1.0, cos)))
    return (_math.sin((1.0 - t) * theta) * a + _math.sin(t * theta) * b) / _math.sin(theta)
