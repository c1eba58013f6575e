"""The beam pool of chunk search: candidates, top-W selection, per-prompt generators.

Selection (MPAW Alg. 1 line 6), per prompt: the pool's finished beams and
this round's candidates, best score first (ties: pool first, then candidates
in row order); identical sequences count once. When fewer than ``W`` distinct
candidates exist the remaining places go to copies of the best live ones (so a
sampled search keeps ``W`` beams exploring); a finished beam is never copied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

__all__ = ["Beam", "select_beams", "prompt_generators", "SearchOutput"]


@dataclass(frozen=True)
class Beam:
    """One sequence of the search and its score (docs/design.md section 1, chunk-level search).

    Attributes:
        tokens: the generated base ids (the prompt excluded; when ``finished``, ends with the eos or the token
            where a stopping criterion fired).
        score: ``log pi_b(y|x) + beta * sum_i w_i term_i + gamma * sum_j u_j Q_j``.
        base_logprob: ``log pi_b(y|x)``.
        terms: per guide in the order given: ``log pi_e(y|x) - log pi_r(y|x)`` (proxy) or ``Q(x, y)``
            (value), unweighted; NaN for a guide that did not run (weight 0 on the prompt's whole batch,
            or a value guide with ``gamma = 0``).
        finished: whether the beam ended (eos or a stopping criterion); it is never extended again.
        row: this round's batch row (live candidates; -1 otherwise).
    """

    tokens: tuple[int, ...]
    score: float
    base_logprob: float
    terms: tuple[float, ...]
    finished: bool
    row: int = -1


@dataclass
class SearchOutput:
    """``mogen.search(..., return_scores=True)``: the best sequences and every final beam.

    Attributes:
        sequences: LongTensor ``[B, T + n]``: prompt (as given, left padded) and each prompt's best beam,
            padded on the right with ``pad_token_id``.
        beams: per prompt, its final beams (the last top ``W``), best first.
    """

    sequences: torch.Tensor
    beams: list[list[Beam]]


def _order_key(beam: Beam) -> float:
    return -beam.score if not math.isnan(beam.score) else math.inf


def select_beams(pool: Sequence[Beam], candidates: Sequence[Beam], width: int) -> list[Beam]:
    """The top ``width`` of ``pool + candidates``, best first: distinct sequences, then copies of live ones."""
    ordered = sorted([*pool, *candidates], key=_order_key)  # stable: pool first on equal scores
    kept: list[Beam] = []
    seen: set[tuple[int, ...]] = set()
    for beam in ordered:
        if len(kept) == width:
            break
        if beam.tokens not in seen:
            seen.add(beam.tokens)
            kept.append(beam)
    live = [b for b in ordered if not b.finished]
    copies = [b for b in live if not any(b is k for k in kept)]
    kept += copies[: width - len(kept)]
    return sorted(kept, key=_order_key)


def _check_generator(g: Any, name: str, device: torch.device) -> torch.Generator:
    if not isinstance(g, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator, got {type(g).__name__}")
    if torch.device(g.device).type != device.type:
        raise ValueError(f"{name} is on {g.device} but sampling happens on {device}; create it with "
                         f"torch.Generator(device='{device.type}')")
    return g


def prompt_generators(generator: Any, batch: int, device: torch.device) -> list[torch.Generator]:
    """One generator per prompt, so a prompt's draws never depend on the other prompts of the batch.

    - a list of ``B`` generators: prompt ``b`` draws from ``generator[b]``;
    - one generator ``g``: prompt ``b`` draws from ``torch.Generator(device).manual_seed(s[b])`` where
      ``s = torch.randint(0, 2**62, (B,), generator=g)`` (``g`` advances by that one draw);
    - None: the same with torch's default generator (reproducible under ``torch.manual_seed``).
    """
    if isinstance(generator, (list, tuple)):
        if len(generator) != batch:
            raise ValueError(f"generator is a list of {len(generator)} generators but there are {batch} prompts; "
                             "give one per prompt, or a single torch.Generator")
        return [_check_generator(g, f"generator[{b}]", device) for b, g in enumerate(generator)]
    where: Optional[torch.device] = None
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or a list of them, got {type(generator).__name__}")
        where = torch.device(generator.device)
    seeds = torch.randint(0, 2**62, (batch,), generator=generator, device=where).tolist()
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
