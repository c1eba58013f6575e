"""Sampling from fused scores: the nucleus (top-p) mask and one draw per row.

Plain torch for now (a softmax and a cumsum over the sorted candidates, one
multinomial draw); decoding calls them here so that a fused sampling kernel
can take their place without touching the decoding loop.
"""

from __future__ import annotations

from typing import Optional

import torch


def top_p_mask(sorted_scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus (top-p) mask for scores sorted best first, bool ``[B, K]``.

    Keeps the shortest prefix whose probability mass (``softmax`` over the K
    given scores) reaches ``top_p``: candidate ``j`` is kept when the mass of the
    candidates before it is ``< top_p``. The best candidate is always kept.
    """
    probs = torch.softmax(sorted_scores.float(), dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs
    keep = mass_before < top_p
    keep[:, :1] = True
    return keep


def sample(scores: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One draw per row from ``softmax(scores)``, int64 ``[B]``; ``-inf`` entries are never drawn."""
    probs = torch.softmax(scores.float(), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)
