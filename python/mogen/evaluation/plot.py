"""The sweep's Pareto plot, with the bootstrap interval of every mean reward as error bars."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

__all__ = ["plot_front"]


def plot_front(path: Path, names: list, prefs: np.ndarray, means: dict, bars: dict, reward_names: list) -> None:
    """Mean rewards per preference: the front for two objectives, every pairwise projection beyond.

    ``means[name]`` is ``[P, n]``; ``bars[name]`` is ``[2, P, n]``, the low and high ends of each mean's
    interval, drawn as error bars. Two objectives: one panel, points joined in preference order and
    labelled with ``mu_1``. ``n >= 3``: one panel per pair ``(k, l)`` of objectives (three for n = 3),
    markers only, since on the lattice preference order is a path, not a front.
    """
    # inside: matplotlib takes a second to import and only the plot needs it; the backend must be chosen
    # before pyplot is imported.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = prefs.shape[1]
    pairs = list(itertools.combinations(range(n), 2))
    fig, axes = plt.subplots(1, len(pairs), figsize=(6.5 if n == 2 else 4.6 * len(pairs), 5), squeeze=False)
    # tab10 repeats its colours after ten methods; tab20 keeps eleven or more apart.
    palette = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    for ax, (k, l) in zip(axes[0], pairs):
        for i, name in enumerate(names):
            m, (lo, hi) = means[name], bars[name]
            ax.errorbar(m[:, k], m[:, l], xerr=[m[:, k] - lo[:, k], hi[:, k] - m[:, k]],
                        yerr=[m[:, l] - lo[:, l], hi[:, l] - m[:, l]], marker="o", label=name, color=palette(i),
                        linestyle="-" if n == 2 else "none", markersize=5 if n == 2 else 4, elinewidth=0.6,
                        capsize=0, alpha=0.85)
            if n == 2:
                for mu, (x, y) in zip(prefs, m[:, :2]):
                    ax.annotate(f"{mu[0]:.1f}", (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
        ax.set_xlabel(reward_names[k])
        ax.set_ylabel(reward_names[l])
    if n == 2:
        axes[0, 0].set_title("mean rewards per preference, 95% bootstrap bars\n(labels: weight of objective 1)",
                             fontsize=9)
        axes[0, 0].legend(fontsize=7)
    else:
        fig.suptitle(f"mean rewards per preference ({len(prefs)} points on the simplex), pairwise projections, "
                     "95% bootstrap bars")
        axes[0, -1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
