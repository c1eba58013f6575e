"""A sweep's reports: samples.jsonl, means.csv, metrics.md, rewards.json, bootstrap.npz and pareto.png.

Every metric of :func:`method_metrics` is reported with its 95% bootstrap
interval (:mod:`mogen.evaluation.bootstrap`): ``value [low, high]`` in
``metrics.md``. ``bootstrap.npz`` keeps each method's replicates (key
``"<method>/<metric>"``, ``[B]``) and the replicate mean rewards (key
``"<method>/means"``, ``[B, P, n]``), so checks can judge any function of them
(a ratio or difference of two methods' metrics) on paired replicates.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .. import metrics
from ..numerics import MIN_SECONDS
from ..provenance import provenance_lines
from .bootstrap import TAILS, Interval, interval, replicate_metrics
from .plot import plot_front

__all__ = ["write_reports", "texts_and_figures", "method_metrics", "quality_metrics", "MethodRun", "load_method_run", "METRIC_COLUMNS"]

#: The columns of metrics.md that carry a bootstrap interval, in order; tokens/s follows them.
METRIC_COLUMNS = ("HV", "IP", "sparsity", "spacing", "front", "controllability")


def quality_metrics(prefs: np.ndarray, means: np.ndarray, ref: list) -> dict:
    """HV (against ``ref``; points not above it add nothing), IP, sparsity, spacing, front length and
    controllability of mean rewards ``means [P, n]`` at preferences ``prefs [P, n]``."""
    above = np.all(means > np.asarray(ref), axis=1)
    return {
        "HV": metrics.hypervolume(means[above], ref) if above.any() else 0.0,
        "IP": metrics.inner_product(prefs, means),
        "sparsity": metrics.sparsity(means),
        "spacing": metrics.spacing(means),
        "front": metrics.front_length(means),
        "controllability": metrics.controllability(prefs, means),
    }


def method_metrics(prefs: np.ndarray, means: np.ndarray, ref: list, tokens: int, seconds: float) -> dict:
    """One method's row: :func:`quality_metrics` and tokens/s."""
    return {**quality_metrics(prefs, means, ref), "tokens/s": tokens / max(seconds, MIN_SECONDS)}


@dataclass
class MethodRun:
    """One method's finished points: ``rewards [P, X, S, n]`` (P preferences, X prompts, S samples per
    prompt pooled over the seeds, n objectives) and per seed ``[K]`` the tokens and seconds."""

    name: str
    rewards: np.ndarray
    tokens: np.ndarray
    seconds: np.ndarray
    points: list  # [P][K] the point files' contents

    @property
    def means(self) -> np.ndarray:
        return self.rewards.mean(axis=(1, 2))

    @property
    def tokens_per_second(self) -> np.ndarray:
        """``[K]``: each seed's tokens over its seconds."""
        return self.tokens / np.maximum(self.seconds, MIN_SECONDS)


def load_method_run(name: str, files: list, prompts: int, samples: int) -> MethodRun:
    """The points ``files [P][K]`` of one method (``samples`` per prompt per seed, prompt-major)."""
    points = [[json.loads(Path(f).read_text()) for f in per_seed] for per_seed in files]
    n = len(points[0][0]["samples"][0]["rewards"])
    rewards = np.stack([np.concatenate([np.asarray([s["rewards"] for s in d["samples"]], dtype=np.float64)
                                        .reshape(prompts, samples, n) for d in per_seed], axis=1)
                        for per_seed in points])
    tokens = np.asarray([sum(p[k]["tokens"] for p in points) for k in range(len(points[0]))], dtype=np.float64)
    seconds = np.asarray([sum(p[k]["seconds"] for p in points) for k in range(len(points[0]))], dtype=np.float64)
    return MethodRun(name, rewards, tokens, seconds, points)


def _replicates(run: MethodRun, prefs: np.ndarray, ref: list, resamples: int, seed: int) -> dict:
    """Every metric ``[B]`` and the mean rewards ``[B, P, n]`` of each bootstrap replicate."""
    return replicate_metrics(run.rewards, lambda m: {**quality_metrics(prefs, m, ref), "means": m}, resamples, seed)


def _cell(column: str, iv: Interval) -> str:
    if column == "front":
        return f"{iv.value:.0f} [{iv.low:.0f}, {iv.high:.0f}]"
    return f"{iv.value:.4f} [{iv.low:.4f}, {iv.high:.4f}]"


def _write_samples(folder: Path, runs: list, prefs: np.ndarray, reward_names: list) -> None:
    with open(folder / "samples.jsonl", "w") as samples_out, open(folder / "means.csv", "w", newline="") as csv_out:
        writer = csv.writer(csv_out)
        writer.writerow(["method", *[f"mu_{k + 1}" for k in range(prefs.shape[1])], *reward_names, "tokens", "seconds"])
        for run in runs:
            for mu, r, per_seed in zip(prefs, run.means, run.points):
                writer.writerow([run.name, *mu.tolist(), *r.tolist(), sum(d["tokens"] for d in per_seed),
                                 round(sum(d["seconds"] for d in per_seed), 3)])
                for d in per_seed:
                    for s in d["samples"]:
                        samples_out.write(json.dumps({"method": run.name, "preference": mu.tolist(),
                                                      "seed": d.get("seed"), **s}) + "\n")


def _metrics_md(cfg: Any, rows: list, intervals: dict, command: Optional[str]) -> str:
    prefs = np.asarray(cfg.preferences)
    chat = " (decoded through the chat template)" if cfg.chat_template else ""
    lines = [*provenance_lines(command), "",
             f"Reference point for HV: {cfg.reference_point}; {len(prefs)} preference points; "
             f"{len(cfg.prompts)} prompts{chat} x {cfg.samples} samples each x {len(cfg.seeds)} seed(s) "
             f"{list(cfg.seeds)}.",
             "Rewards: " + "; ".join(r.text() for r in cfg.rewards) + ".",
             f"Each metric: value [95% bootstrap interval] over {cfg.resamples} resamples of prompts and of "
             f"samples within prompts (bootstrap seed {cfg.bootstrap_seed}); tokens/s: new tokens over decoding "
             "time, all seeds.", "",
             "| method | " + " | ".join(METRIC_COLUMNS) + " | tokens/s |",
             "|---|" + "---:|" * (len(METRIC_COLUMNS) + 1)]
    for name, row in rows:
        cells = [_cell(c, intervals[name][c]) for c in METRIC_COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {row['tokens/s']:.0f} |")
    return "\n".join(lines) + "\n"


def write_reports(cfg: Any, folder: Path, points: list, command: Optional[str] = None) -> list:
    """Writes the reports from the point files ``points = [(method, files [P][K])]``; returns the metrics
    rows ``[(name, dict)]`` (point estimates; the intervals are in metrics.md and bootstrap.npz)."""
    prefs = np.asarray(cfg.preferences, dtype=np.float64)
    reward_names = [r.name for r in cfg.rewards]
    (folder / "rewards.json").write_text(json.dumps([r.describe() for r in cfg.rewards], indent=2) + "\n")
    runs = [load_method_run(name, files, len(cfg.prompts), cfg.samples) for name, files in points]
    _write_samples(folder, runs, prefs, reward_names)
    rows, intervals, arrays, bars = [], {}, {}, {}
    for run in runs:
        row = method_metrics(prefs, run.means, cfg.reference_point, int(run.tokens.sum()), float(run.seconds.sum()))
        rep = _replicates(run, prefs, cfg.reference_point, cfg.resamples, cfg.bootstrap_seed)
        intervals[run.name] = {c: interval(row[c], rep[c]) for c in METRIC_COLUMNS}
        arrays.update({f"{run.name}/{k}": v for k, v in rep.items()})
        arrays[f"{run.name}/tokens_per_second"] = run.tokens_per_second
        bars[run.name] = np.percentile(rep["means"], TAILS, axis=0)  # [2, P, n]
        rows.append((run.name, row))
    np.savez_compressed(folder / "bootstrap.npz", **arrays)
    (folder / "metrics.md").write_text(_metrics_md(cfg, rows, intervals, command))
    plot_front(folder / "pareto.png", [r.name for r in runs], prefs, {r.name: r.means for r in runs}, bars,
               reward_names)
    return rows


def texts_and_figures(folder: Path) -> dict:
    """What two runs of one sweep with the same texts must share, whatever ran them (serial, on Ray, another
    command line): ``samples.jsonl``; ``means.csv`` without its last column (seconds); ``metrics.md`` from its
    reference-point line on (the provenance lines before it name the command, the commit and the date) with
    the tokens/s cells (decoding time) written ``-``."""
    folder = Path(folder)
    means = [line.rsplit(",", 1)[0] for line in (folder / "means.csv").read_text().splitlines()]
    md = (folder / "metrics.md").read_text()
    md = re.sub(r"\| [0-9]+ \|$", "| - |", md[md.index("Reference point for HV"):], flags=re.M)
    return {"samples.jsonl": (folder / "samples.jsonl").read_text(), "means.csv": "\n".join(means), "metrics.md": md}
