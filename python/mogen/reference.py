"""Pure-PyTorch reference of every mogen kernel.

These functions define the math the compiled kernels must reproduce (DESIGN.md
section 1). They are used by the tests and as the fallback when the compiled
extension is missing. They favour clarity over speed: every step is a plain
torch op, computed in ``dtype`` (fp32 by default, fp64 for tight checks).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

__all__ = ["fused_log_ratio", "fused_log_ratio_topk"]


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
