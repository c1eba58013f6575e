"""A sweep's reports: samples.jsonl, means.csv, metrics.md and pareto.png."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from .. import metrics

__all__ = ["write_reports", "method_metrics"]


def method_metrics(prefs: np.ndarray, means: np.ndarray, ref: list, tokens: int, seconds: float) -> dict:
    """One method's row: HV (against ``ref``), IP, sparsity, spacing, front length, controllability, tokens/s."""
    above = np.all(means > np.asarray(ref), axis=1)
    return {
        "HV": metrics.hypervolume(means[above], ref) if above.any() else 0.0,
        "IP": metrics.inner_product(prefs, means),
        "sparsity": metrics.sparsity(means),
        "spacing": metrics.spacing(means),
        "front": metrics.front_length(means),
        "controllability": metrics.controllability(prefs, means),
        "tokens/s": tokens / max(seconds, 1e-9),
    }


def _plot(path: Path, names: list, prefs: np.ndarray, means: dict, reward_names: list) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 5))
    for name in names:
        m = means[name]
        ax.plot(m[:, 0], m[:, 1], marker="o", label=name)
        for mu, (x, y) in zip(prefs, m[:, :2]):
            ax.annotate(f"{mu[0]:.1f}", (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
    ax.set_xlabel(reward_names[0])
    ax.set_ylabel(reward_names[1])
    ax.set_title("mean rewards per preference (labels: weight of objective 1)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_reports(cfg: Any, folder: Path, points: list) -> list:
    """Writes the reports from the point files; returns the metrics rows ``[(name, dict)]``."""
    prefs = np.asarray(cfg.preferences, dtype=np.float64)
    reward_names = [spec.split(":")[-1] for spec, _ in cfg.rewards]
    means, rows = {}, []
    with open(folder / "samples.jsonl", "w") as samples_out, open(folder / "means.csv", "w", newline="") as csv_out:
        writer = csv.writer(csv_out)
        writer.writerow(["method", *[f"mu_{k + 1}" for k in range(prefs.shape[1])], *reward_names, "tokens", "seconds"])
        for name, files in points:
            data = [json.loads(Path(f).read_text()) for f in files]
            m = np.asarray([np.mean([s["rewards"] for s in d["samples"]], axis=0) for d in data])
            means[name] = m
            for d, mu, r in zip(data, prefs, m):
                writer.writerow([name, *mu.tolist(), *r.tolist(), d["tokens"], round(d["seconds"], 3)])
                for s in d["samples"]:
                    samples_out.write(json.dumps({"method": name, "preference": mu.tolist(), **s}) + "\n")
            rows.append((name, method_metrics(prefs, m, cfg.reference_point, sum(d["tokens"] for d in data),
                                              sum(d["seconds"] for d in data))))
    cols = list(rows[0][1])
    lines = [f"Reference point for HV: {cfg.reference_point}; {len(prefs)} preference points; "
             f"{len(cfg.prompts)} prompts x {cfg.samples} samples each.", "",
             "| method | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, r in rows:
        cells = [f"{r[c]:.4f}" if isinstance(r[c], float) and c != "tokens/s" else
                 (f"{r[c]:.0f}" if c == "tokens/s" else str(r[c])) for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    (folder / "metrics.md").write_text("\n".join(lines) + "\n")
    if prefs.shape[1] >= 2:
        _plot(folder / "pareto.png", [n for n, _ in rows], prefs, means, reward_names)
    return rows
