"""``mogen demo --search``: chunk-level beam search against token-level decoding on the demo models.

For each weighting ``w`` of (nature, city), the demo prompts x ``samples``
are decoded by token-level :func:`mogen.generate` (fused sampling, top-p
0.95, as the demo's proxy table) and by :func:`mogen.search` (W = 4,
kappa = 4, L = 8, proposals from the base and from the fused distribution),
all with the same proxy guides, which read the text in their own tokenizer.
Each output is rewarded by both objectives; the table prints the weighted
objective ``w . rewards`` averaged over all outputs of that weighting.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from ..decoding import search
from ..provenance import provenance_lines
from . import corpus as demo_corpus
from .run import _decode_rows, _guides
from .train import DemoModels

__all__ = ["SEARCH_WEIGHTINGS", "SearchComparison", "compare_search", "print_comparison", "record_comparison"]

SEARCH_WEIGHTINGS: tuple[tuple[float, float], ...] = ((1.0, 0.0), (0.5, 0.5), (0.0, 1.0))


@dataclass
class SearchComparison:
    """Per decoder (``"generate"``, ``"search/base"``, ``"search/guided"``): ``w . rewards`` per weighting."""

    weightings: list
    objective: dict = field(default_factory=dict)  # decoder -> [mean w . rewards per weighting]
    seconds: dict = field(default_factory=dict)  # decoder -> wall time over all weightings
    examples: dict = field(default_factory=dict)  # decoder -> one text per weighting

    def mean(self, decoder: str) -> float:
        return sum(self.objective[decoder]) / len(self.objective[decoder])

    def wins(self, decoder: str) -> int:
        """At how many weightings ``decoder``'s objective is >= generate's."""
        return sum(s >= g for s, g in zip(self.objective[decoder], self.objective["generate"]))

    @property
    def search_wins(self) -> bool:
        """Every search decoder's objective, averaged over the weightings, >= generate's."""
        return all(self.mean(k) >= self.mean("generate") for k in self.objective if k != "generate")


def _weighted(texts: Sequence[str], w: Sequence[float]) -> float:
    fns = [fn for _, fn in demo_corpus.OBJECTIVES]
    return sum(sum(wi * fn(t) for wi, fn in zip(w, fns)) for t in texts) / len(texts)


def _search_rows(models: DemoModels, rows: list[str], guides: list, w: Sequence[float], *, proposal: str,
                 max_new_tokens: int, seed: int, top_p: float, beta: float) -> list[str]:
    tok = models.base_tokenizer
    enc = tok(rows, return_tensors="pt", padding=True)
    out = search(models.base, enc["input_ids"], enc["attention_mask"], guides=guides, tokenizer=tok,
                       weights=list(w), beam_width=4, expansion=4, chunk_length=8, max_new_tokens=max_new_tokens,
                       proposal=proposal, top_p=top_p, beta=beta, generator=torch.Generator().manual_seed(seed))
    return tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def compare_search(models: DemoModels, *, weightings: Sequence[Sequence[float]] = SEARCH_WEIGHTINGS,
                   prompts: Sequence[str] = demo_corpus.PROMPTS, samples: int = 4, max_new_tokens: int = 24,
                   seed: int = 0, top_p: float = 0.95, beta: float = 1.0) -> SearchComparison:
    """Decode ``prompts`` x ``samples`` at every weighting with generate and both searches; score them."""
    rows = [p for p in prompts for _ in range(samples)]
    guides = _guides(models, "proxy")
    result = SearchComparison([tuple(w) for w in weightings])
    decoders: dict[str, Callable[[Sequence[float]], list[str]]] = {
        "generate": lambda w: _decode_rows(models, rows, guides, torch.tensor([list(w)] * len(rows)), beta=beta,
                                           gamma=1.0, max_new_tokens=max_new_tokens, seed=seed, top_p=top_p)[0],
    }
    for proposal in ("base", "guided"):
        decoders[f"search/{proposal}"] = lambda w, p=proposal: _search_rows(
            models, rows, guides, w, proposal=p, max_new_tokens=max_new_tokens, seed=seed, top_p=top_p, beta=beta)
    for name, decode in decoders.items():
        t0 = time.perf_counter()
        texts = [decode(w) for w in weightings]
        result.seconds[name] = time.perf_counter() - t0
        result.objective[name] = [_weighted(t, w) for t, w in zip(texts, weightings)]
        result.examples[name] = [t[0].strip() for t in texts]
    return result


def print_comparison(result: SearchComparison, out: Callable[[str], None]) -> None:
    labels = [f"({w[0]:.1f}, {w[1]:.1f})" for w in result.weightings]
    out(f" {'decoder':<16} | " + " | ".join(f"{x:>10}" for x in labels) + f" | {'mean':>7} | seconds")
    out("-" * (30 + 13 * len(labels)))
    for name, values in result.objective.items():
        cells = " | ".join(f"{v:>10.3f}" for v in values)
        out(f" {name:<16} | {cells} | {result.mean(name):>7.3f} | {result.seconds[name]:.1f}")
    n = len(result.weightings)
    for name in result.objective:
        if name != "generate":
            out(f"{name}: w . rewards >= token-level generate's at {result.wins(name)} of {n} weightings "
                f"(mean {result.mean(name):.3f} vs {result.mean('generate'):.3f})")
    out("(w . rewards: mean over prompts x samples of w_nature * nature rate + w_city * city rate)")


def record_comparison(printed: Sequence[str], seed: int) -> Optional[Path]:
    """From a checkout, writes ``benchmarks/results/search_demo_cpu.md``: where it came from
    (:func:`mogen.provenance.provenance_lines`) and what ``mogen demo --search`` printed. None elsewhere."""
    results = Path(__file__).resolve().parents[3] / "benchmarks" / "results"
    if not results.is_dir():
        return None
    path = results / "search_demo_cpu.md"
    path.write_text("\n".join(["## mogen demo --search (demo models)", "", *provenance_lines(), "", "```", *printed,
                               "```", "", f"Deterministic given the seed (--seed {seed}); the seconds column is wall "
                               "time on the machine above, shared with other work."]) + "\n")
    return path
