"""The embedded demo: one base steered toward two conflicting objectives.

``mogen demo`` (``make demo``) builds or loads the cached tiny models (see
:mod:`mogen.demo.train`), then decodes the same neutral prompts at several
weightings of the two guides, all in ONE batch with per-row weights, and
prints each objective's mean reward per weighting: the trade-off moves with
the weights.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, TextIO

import torch

from ..decoding import ProxyGuide, ValueGuide, generate
from ..merging import merge_into
from ..numerics import MIN_SECONDS
from . import corpus as demo_corpus
from .train import DemoConfig, DemoModels, load_demo_models

__all__ = ["DemoResult", "run_demo", "decode_demo", "WEIGHTINGS", "METHODS"]

#: The weightings of (nature, city) the demo compares, plus the base alone.
WEIGHTINGS: tuple[tuple[float, float], ...] = ((0.0, 0.0), (1.0, 0.0), (0.5, 0.5), (0.0, 1.0))


#: The scale of value guidance in the demo (value models predict z-scored rewards).
DEMO_GAMMA = 3.0

#: What steers the base in the demo's tables.
METHODS: dict[str, str] = {
    "proxy": "proxy guides (expert/reference log-ratios, MPAW token level)",
    "value": "value models as an ensemble (MAGE-E, gamma * sum_j u_j Q_j)",
    "value-merged": "one value model merged with the weights (MAGE-E-M, merge_into per weighting)",
}


@dataclass
class DemoResult:
    """Mean reward per weighting, and one example continuation each."""

    weightings: list
    rewards: list  # [len(weightings)][n_objectives] mean rewards
    examples: list  # one (prompt, continuation) per weighting
    texts: list  # every continuation, per weighting
    seconds: float
    tokens: int
    method: str = "proxy"
    merge_seconds: float = 0.0  # value-merged: time spent in merge_into, all weightings

    @property
    def tradeoff_moves(self) -> bool:
        """Objective 1 higher at weights (1, 0) than at (0, 1), objective 2 the other way round."""
        by_w = {tuple(w): r for w, r in zip(self.weightings, self.rewards)}
        a, b = by_w.get((1.0, 0.0)), by_w.get((0.0, 1.0))
        return a is not None and b is not None and a[0] > b[0] and b[1] > a[1]


def _guides(models: DemoModels, method: str, live: Any = None) -> list:
    tok = models.guide_tokenizer
    if method == "proxy":
        return [ProxyGuide(models.experts[name], models.reference, tokenizer=tok)
                for name, _ in demo_corpus.OBJECTIVES]
    if method == "value":
        return [ValueGuide(models.values[name], tokenizer=tok) for name, _ in demo_corpus.OBJECTIVES]
    return [ValueGuide(live, tokenizer=tok)]


def _decode_rows(models: DemoModels, rows: list[str], guides: list, weights: torch.Tensor, *, beta: float,
                 gamma: float, max_new_tokens: int, seed: int, top_p: Optional[float]) -> tuple[list[str], int]:
    tok = models.base_tokenizer
    enc = tok(rows, return_tensors="pt", padding=True)
    out = generate(
        models.base, enc["input_ids"], enc["attention_mask"], guides=guides, tokenizer=tok, weights=weights,
        beta=beta, gamma=gamma, max_new_tokens=max_new_tokens, do_sample=True, top_k=0, top_p=top_p,
        generator=torch.Generator().manual_seed(seed),
    )
    new = out[:, enc["input_ids"].shape[1]:]
    return tok.batch_decode(new, skip_special_tokens=True), int((new != tok.pad_token_id).sum())


def decode_demo(
    models: DemoModels,
    *,
    method: str = "proxy",
    weightings: Sequence[Sequence[float]] = WEIGHTINGS,
    prompts: Sequence[str] = demo_corpus.PROMPTS,
    samples: int = 4,
    beta: float = 1.0,
    gamma: float = 1.0,
    max_new_tokens: int = 24,
    seed: int = 0,
    top_p: Optional[float] = 0.95,
) -> DemoResult:
    """Decode ``prompts`` x ``samples`` at every weighting with ``method`` (:data:`METHODS`); score them.

    ``proxy`` and ``value`` decode every weighting in one batch with per-row
    weights; ``value-merged`` merges the two value models into one live model
    per weighting (``merge_into``) and decodes that weighting's rows with it.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    per = [p for p in prompts for _ in range(samples)]
    opts = dict(beta=beta, gamma=gamma, max_new_tokens=max_new_tokens, seed=seed, top_p=top_p)
    t0 = time.perf_counter()
    merge_seconds = 0.0
    if method != "value-merged":
        rows = [p for _ in weightings for p in per]
        weights = torch.tensor([w for w in weightings for _ in per], dtype=torch.float32)
        texts, tokens = _decode_rows(models, rows, _guides(models, method), weights, **opts)
    else:
        folders = [models.path / f"value_{name}" for name, _ in demo_corpus.OBJECTIVES]
        live = copy.deepcopy(models.values[demo_corpus.OBJECTIVES[0][0]])
        texts, tokens = [], 0
        for w in weightings:
            guides: list = []
            if any(w):
                m0 = time.perf_counter()
                merge_into(live, folders, list(w))
                merge_seconds += time.perf_counter() - m0
                guides = _guides(models, method, live)
            got, n = _decode_rows(models, per, guides, torch.ones(len(per), len(guides)), **opts)
            texts += got
            tokens += n
    seconds = time.perf_counter() - t0
    rewards, examples, grouped = [], [], []
    for k in range(len(weightings)):
        chunk = texts[k * len(per) : (k + 1) * len(per)]
        grouped.append(chunk)
        rewards.append([sum(fn(t) for t in chunk) / len(chunk) for _, fn in demo_corpus.OBJECTIVES])
        examples.append((per[0], chunk[0].strip()))
    return DemoResult([tuple(w) for w in weightings], rewards, examples, grouped, seconds, tokens, method,
                      merge_seconds)


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


def _report(result: DemoResult, rows: int, out: Callable[[str], None]) -> None:
    names = [n for n, _ in demo_corpus.OBJECTIVES]
    rate = result.tokens / max(result.seconds, MIN_SECONDS)
    merged = f"; merge_into {result.merge_seconds / max(1, sum(map(any, result.weightings))) * 1e3:.0f} ms per " \
             "weighting" if result.method == "value-merged" else ""
    out(f"decoded {result.tokens} tokens in {result.seconds:.1f}s ({rate:.0f} tokens/s for {rows} rows{merged})")
    first = {tuple(w): r for w, r in zip(result.weightings, result.rewards)}
    if (1.0, 0.0) in first and (0.0, 1.0) in first:
        a, b = first[(1.0, 0.0)], first[(0.0, 1.0)]
        out(f"trade-off: {names[0]} {b[0]:.3f} -> {a[0]:.3f} and {names[1]} {a[1]:.3f} -> {b[1]:.3f} between "
            f"weights (0, 1) and (1, 0): {'moves with the weights' if result.tradeoff_moves else 'DID NOT MOVE'}")


def run_demo(
    *,
    config: DemoConfig = DemoConfig(),
    root: Optional[Path] = None,
    rebuild: bool = False,
    seed: int = 0,
    samples: int = 4,
    beta: float = 1.0,
    gamma: float = DEMO_GAMMA,
    max_new_tokens: int = 24,
    methods: Sequence[str] = tuple(METHODS),
    stream: TextIO = sys.stdout,
) -> list[DemoResult]:
    """Build/load the demo models, decode at every weighting with every method, print the tables."""

    def out(line: str = "") -> None:
        print(line, file=stream, flush=True)

    models = load_demo_models(config, root, rebuild=rebuild, log=out)
    n_base = sum(p.numel() for p in models.base.parameters())
    n_guide = sum(p.numel() for p in models.reference.parameters())
    out(f"mogen demo: a {n_base / 1e6:.2f}M-parameter base (byte-level BPE, {len(models.base_tokenizer)} tokens) "
        f"steered by {n_guide / 1e6:.2f}M-parameter guides with their own tokenizer (metaspace BPE, "
        f"{len(models.guide_tokenizer)} tokens).")
    names = [n for n, _ in demo_corpus.OBJECTIVES]
    out(f"objective 1 = {names[0]}-word rate, objective 2 = {names[1]}-word rate; "
        f"{len(demo_corpus.PROMPTS)} neutral prompts x {samples} samples per weighting, top-p 0.95, "
        f"beta {beta}, gamma {gamma}.")
    meta = json.loads((models.path / "meta.json").read_text())
    for name, st in meta.get("value_models", {}).items():
        out(f"value_{name}: held-out Spearman {st['heldout_spearman']:.3f} between its final-token value and the "
            f"reward ({st['heldout_examples']} responses), trained in {st['seconds']:.1f}s")
    results = []
    rows = len(WEIGHTINGS) * len(demo_corpus.PROMPTS) * samples
    for method in methods:
        out()
        out(f"== {METHODS[method]}")
        result = decode_demo(models, method=method, samples=samples, beta=beta, gamma=gamma,
                             max_new_tokens=max_new_tokens, seed=seed)
        _table(result, out)
        _report(result, rows, out)
        results.append(result)
    p = models.path
    out()
    out("Try a weighting yourself (streams the text):")
    out(f"  mogen decode --base {p / 'base'} \\\n      --guide {p / 'expert_nature'}:{p / 'reference'} "
        f"--guide {p / 'expert_city'}:{p / 'reference'} \\\n      --weights 0.3,0.7 --sample "
        f"--prompt \"{demo_corpus.PROMPTS[0]}\"")
    return results
