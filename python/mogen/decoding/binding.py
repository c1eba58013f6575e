"""Guides bound to one decoding call: their runners (layer 1) and terms (layer 2).

:func:`bind_guides` validates the guides against the base (vocabularies, maps,
devices, weights), registers one runner per distinct model and output kind,
and returns the :class:`~mogen.decoding.terms.Fusion` a driver calls each step.
Every driver (``generate``, the logits processor, chunk search) binds its
guides here, so none of them knows which kinds of guides it holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from ..vocab import build_vocab_map
from .checks import normal_tensor
from .guides import Guide, logits_width, reads_candidates, shares_tokenizer
from .kinds import guide_kind
from .models import LMRunner
from .runners import RunnerSet
from .terms import Fusion
from .textterms import TEXT_KINDS
from .weights import as_guide_list, resolve_weights

__all__ = ["Guidance", "bind_guides"]


@dataclass
class Guidance:
    """The guides of one call, bound: ``runners`` to feed, ``fusion`` to score with."""

    guides: list[Guide]
    active: list[int]  # indices into ``guides`` of the guides that run
    runners: RunnerSet
    fusion: Fusion
    lockstep_models: dict[str, torch.nn.Module] = field(default_factory=dict)  # read the base's ids
    models: dict[str, torch.nn.Module] = field(default_factory=dict)  # every guide model, by name


_WIDTH_HINT = ("a guide without its own tokenizer must share the base's vocabulary (pass tokenizer= so padded "
               "LM-head rows are excluded, or give the guide its tokenizer)")


class _Binder:
    """What a guide kind's :meth:`~mogen.decoding.kinds.GuideTerm.bind` uses: vocabulary checks, maps, runners."""

    def __init__(self, tokenizer: Any, vocab_size: int, device: torch.device, strict_width: bool) -> None:
        self.tokenizer = tokenizer
        self.exact = strict_width and tokenizer is None
        self.vocab_size = vocab_size
        self.device = device
        self.runners = RunnerSet(device, tokenizer)
        self.lockstep: dict[str, torch.nn.Module] = {}
        self.models: dict[str, torch.nn.Module] = {}

    def need(self, g: Guide, shared: bool) -> int:
        """The width a guide's model must cover: the base's vocabulary, or its own tokenizer's."""
        return self.vocab_size if shared else len(g.tokenizer)

    def vmap(self, g: Guide, shared: bool) -> Optional[torch.Tensor]:
        return None if shared else normal_tensor(build_vocab_map(self.tokenizer, g.tokenizer), self.device)

    def runner(self, model: Any, width: int, name: str, g: Guide, shared: bool, output: str = "logits") -> tuple:
        """Register ``model`` (once per model and output kind) and return its RunnerRef ``(group, index)``."""
        self.models[name] = model
        if shared:
            self.lockstep[name] = model
        return self.runners.add(LMRunner(model, width, name, output), None if shared else g.tokenizer, name,
                                candidates=reads_candidates(g, shared))

    def check_width(self, model: Any, need: int, name: str, what: str) -> None:
        """A model reading the base's ids has (at least, or exactly) the base's vocabulary."""
        width = logits_width(model)
        if width < need or (self.exact and width != need):
            raise ValueError(f"{name} has {what} of {width} but the base has {need}; {_WIDTH_HINT}")


def bind_guides(guides: Any, weights: Any, *, batch: Optional[int], tokenizer: Any, vocab_size: int,
                device: torch.device, beta: float, gamma: float, strict_width: bool = True) -> Guidance:
    """Validate ``guides`` and bind them to runners and terms (docs/design.md section 2).

    A guide runs when its weight is non-zero on some row (and, for value
    guides, ``gamma != 0``). Without a base tokenizer a guide sharing the
    base's ids must have exactly ``vocab_size`` logits (``strict_width``) or at
    least that many. Raises ValueError / TypeError naming the guide.
    """
    guide_list = as_guide_list(guides)
    shared = [shares_tokenizer(tokenizer, g.tokenizer) for g in guide_list]
    for i, (g, same) in enumerate(zip(guide_list, shared)):
        if not same and tokenizer is None:
            raise ValueError(
                f"guides[{i}] has its own tokenizer but no base tokenizer was given: pass tokenizer=<the base "
                "model's tokenizer> so the generated text can be re-tokenized for the guide"
            )
    w, nonzero = resolve_weights(weights, guide_list, batch)
    kinds = [guide_kind(g) for g in guide_list]
    kinds = [TEXT_KINDS.get(kind, kind) if reads_candidates(g, same) else kind
             for g, kind, same in zip(guide_list, kinds, shared)]
    active = [i for i, (g, a) in enumerate(zip(guide_list, nonzero))
              if a and kinds[i].runs(g, beta=beta, gamma=gamma)]
    w = w[..., active]
    binder = _Binder(tokenizer, vocab_size, device, strict_width)
    terms = [kinds[i].bind(binder, i, column, guide_list[i], shared[i]) for column, i in enumerate(active)]
    ks = sorted({t.top_k for t in terms if t.top_k is not None})
    if len(ks) > 1:
        raise ValueError("guides scored at candidates (value guides with top_k, guides with cross_vocab='text') must "
                         f"share one top_k in a call, got top_k values {ks}")
    fusion = Fusion(terms, normal_tensor(w, device), beta=beta, gamma=gamma,
                    value_top_k=ks[0] if ks else None)
    return Guidance(guide_list, active, binder.runners, fusion, binder.lockstep, binder.models)
