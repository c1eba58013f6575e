"""``mogen sweep``: methods over a grid of preferences, from a YAML config (mogen.evaluation)."""

from __future__ import annotations

import argparse


def _cmd_sweep(args: argparse.Namespace) -> int:
    from ..evaluation import run_sweep

    res = run_sweep(args.config, progress=not args.quiet)
    print(f"mogen sweep: {res.decoded} point(s) decoded, {res.skipped} already done; reports in {res.folder}")
    print((res.folder / "metrics.md").read_text())
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Registers ``sweep``."""
    p = sub.add_parser(
        "sweep", help="run methods over a grid of preferences; write texts, rewards, metrics and a Pareto plot",
        description="Runs (or resumes) the sweep of a YAML config (see mogen.evaluation.config): every method "
                    "at every preference point, scored by the reward functions. Writes samples.jsonl, means.csv, "
                    "metrics.md and pareto.png to the config's output folder; finished points are skipped.")
    p.add_argument("--config", required=True, help="the sweep config (YAML)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_sweep)
