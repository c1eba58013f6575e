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
    """Mean rewards per preference: the front for two objectives, every pairwise projection beyond.

    ``means[name]`` is ``[P, n]``. Two objectives: one panel, points joined in preference order and
    labelled with ``mu_1``. ``n >= 3``: one panel per pair ``(k, l)`` of objectives (three for n = 3),
    markers only, since on the lattice preference order is a path, not a front.
    """
    import itertools

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = prefs.shape[1]
    pairs = list(itertools.combinations(range(n), 2))
    fig, axes = plt.subplots(1, len(pairs), figsize=(6.5 if n == 2 else 4.6 * len(pairs), 5), squeeze=False)
    for ax, (k, l) in zip(axes[0], pairs):
        for name in names:
            m = means[name]
            ax.plot(m[:, k], m[:, l], marker="o", label=name, linestyle="-" if n == 2 else "none",
                    markersize=6 if n == 2 else 4)
            if n == 2:
                for mu, (x, y) in zip(prefs, m[:, :2]):
                    ax.annotate(f"{mu[0]:.1f}", (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
        ax.set_xlabel(reward_names[k])
        ax.set_ylabel(reward_names[l])
    if n == 2:
        axes[0, 0].set_title("mean rewards per preference (labels: weight of objective 1)")
        axes[0, 0].legend(fontsize=7)
    else:
        fig.suptitle(f"mean rewards per preference ({len(prefs)} points on the simplex), pairwise projections")
        axes[0, -1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
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
