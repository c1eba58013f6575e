"""The embedded demo: one base steered toward two conflicting objectives.

``mogen demo`` (``make demo``) builds or loads the cached tiny models (see
:mod:`mogen.demo.train`), then decodes the same neutral prompts at several
weightings of the two guides, all in ONE batch with per-row weights, and
prints each objective's mean reward per weighting: the trade-off moves with
the weights.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, TextIO

import torch

from . import corpus as demo_corpus
from .train import DemoConfig, DemoModels, load_demo_models

__all__ = ["DemoResult", "run_demo", "decode_demo", "WEIGHTINGS"]

#: The weightings of (nature, city) the demo compares, plus the base alone.
WEIGHTINGS: tuple[tuple[float, float], ...] = ((0.0, 0.0), (1.0, 0.0), (0.5, 0.5), (0.0, 1.0))


@dataclass
class DemoResult:
    """Mean reward per weighting, and one example continuation each."""

    weightings: list
    rewards: list  # [len(weightings)][n_objectives] mean rewards
    examples: list  # one (prompt, continuation) per weighting
    texts: list  # every continuation, per weighting
    seconds: float
    tokens: int

    @property
    def tradeoff_moves(self) -> bool:
        """Objective 1 higher at weights (1, 0) than at (0, 1), objective 2 the other way round."""
        by_w = {tuple(w): r for w, r in zip(self.weightings, self.rewards)}
        a, b = by_w.get((1.0, 0.0)), by_w.get((0.0, 1.0))
        return a is not None and b is not None and a[0] > b[0] and b[1] > a[1]


def decode_demo(
    models: DemoModels,
    *,
    weightings: Sequence[Sequence[float]] = WEIGHTINGS,
    prompts: Sequence[str] = demo_corpus.PROMPTS,
    samples: int = 4,
    beta: float = 1.0,
    max_new_tokens: int = 24,
    seed: int = 0,
    top_p: Optional[float] = 0.95,
) -> DemoResult:
    """Decode ``prompts`` x ``samples`` at every weighting in one batch; score the continuations."""
    import mogen

    guides = [
        mogen.ProxyGuide(models.experts[name], models.reference, tokenizer=models.guide_tokenizer)
        for name, _ in demo_corpus.OBJECTIVES
    ]
    rows = [p for _ in weightings for p in prompts for _ in range(samples)]
    weights = torch.tensor([w for w in weightings for _ in prompts for _ in range(samples)], dtype=torch.float32)
    tok = models.base_tokenizer
    enc = tok(rows, return_tensors="pt", padding=True)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    out = mogen.generate(
        models.base, enc["input_ids"], enc["attention_mask"], guides=guides, tokenizer=tok, weights=weights,
        beta=beta, max_new_tokens=max_new_tokens, do_sample=True, top_p=top_p, generator=gen,
    )
    seconds = time.perf_counter() - t0
    new = out[:, enc["input_ids"].shape[1]:]
    texts = tok.batch_decode(new, skip_special_tokens=True)
    tokens = int((new != tok.pad_token_id).sum())
    per = len(prompts) * samples
    rewards, examples, grouped = [], [], []
    for k in range(len(weightings)):
        chunk = texts[k * per : (k + 1) * per]
        grouped.append(chunk)
        rewards.append([sum(fn(t) for t in chunk) / len(chunk) for _, fn in demo_corpus.OBJECTIVES])
        examples.append((rows[k * per], chunk[0].strip()))
    return DemoResult([tuple(w) for w in weightings], rewards, examples, grouped, seconds, tokens)


def _table(result: DemoResult, out: Callable[[str], None]) -> None:
    names = [n for n, _ in demo_corpus.OBJECTIVES]
    head = f" {'weights (' + ', '.join(names) + ')':<24} | " + " | ".join(f"{n + ' rate':>11}" for n in names)
    out(head + " | example continuation")
    out("-" * (len(head) + 40))
    for w, r, (prompt, text) in zip(result.weightings, result.rewards, result.examples):
        label = f"({w[0]:.1f}, {w[1]:.1f})" + ("  base only" if not any(w) else "")
        cells = " | ".join(f"{v:>11.3f}" for v in r)
        shown = text if len(text) <= 60 else text[:57] + "..."
        out(f" {label:<24} | {cells} | {shown}")


def run_demo(
    *,
    config: DemoConfig = DemoConfig(),
    root: Optional[Path] = None,
    rebuild: bool = False,
    seed: int = 0,
    samples: int = 4,
    beta: float = 1.0,
    max_new_tokens: int = 24,
    stream: TextIO = sys.stdout,
) -> DemoResult:
    """Build/load the demo models, decode at every weighting, print the table; return the numbers."""

    def out(line: str = "") -> None:
        print(line, file=stream, flush=True)

    models = load_demo_models(config, root, rebuild=rebuild, log=out)
    names = [n for n, _ in demo_corpus.OBJECTIVES]
    n_base = sum(p.numel() for p in models.base.parameters())
    n_guide = sum(p.numel() for p in models.reference.parameters())
    out(f"mogen demo: a {n_base / 1e6:.2f}M-parameter base (byte-level BPE, {len(models.base_tokenizer)} tokens) "
        f"steered by 2 guides of {n_guide / 1e6:.2f}M-parameter expert/reference pairs with their own "
        f"tokenizer (metaspace BPE, {len(models.guide_tokenizer)} tokens).")
    out(f"objective 1 = {names[0]}-word rate, objective 2 = {names[1]}-word rate; "
        f"{len(demo_corpus.PROMPTS)} neutral prompts x {samples} samples per weighting, top-p 0.95, beta {beta}, "
        "all weightings in one batch (per-row weights).")
    out()
    result = decode_demo(models, samples=samples, beta=beta, max_new_tokens=max_new_tokens, seed=seed)
    _table(result, out)
    out()
    out(f"decoded {result.tokens} tokens in {result.seconds:.1f}s ({result.tokens / max(result.seconds, 1e-9):.0f} tokens/s "
        f"for {len(result.weightings) * len(demo_corpus.PROMPTS) * samples} rows)")
    first = {tuple(w): r for w, r in zip(result.weightings, result.rewards)}
    if (1.0, 0.0) in first and (0.0, 1.0) in first:
        a, b = first[(1.0, 0.0)], first[(0.0, 1.0)]
        moved = result.tradeoff_moves
        out(f"trade-off: {names[0]} {b[0]:.3f} -> {a[0]:.3f} and {names[1]} {a[1]:.3f} -> {b[1]:.3f} "
            f"between weights (0, 1) and (1, 0): {'moves with the weights' if moved else 'DID NOT MOVE'}")
    p = models.path
    out()
    out("Try a weighting yourself (streams the text):")
    out(f"  mogen decode --base {p / 'base'} \\\n      --guide {p / 'expert_nature'}:{p / 'reference'} "
        f"--guide {p / 'expert_city'}:{p / 'reference'} \\\n      --weights 0.3,0.7 --sample "
        f"--prompt \"{demo_corpus.PROMPTS[0]}\"")
    return result
