"""``mogen sweep``: methods over a grid of preferences, from a YAML config (mogen.evaluation)."""

from __future__ import annotations

import argparse
import sys

# The command's subsystem (transformers and decoding, the merge engine, the sweep's plotting) is imported
# inside its command so that `mogen --help` and the other commands do not pay for it.


def _cmd_sweep(args: argparse.Namespace) -> int:
    from ..evaluation import run_sweep
    from ..evaluation.ray_sweep import PointsFailed  # needs no Ray: that is imported by a --ray run only

    try:
        res = run_sweep(args.config, progress=not args.quiet, seeds=args.seeds, seed_offset=args.seed_offset,
                        substitute=args.substitute, ray=args.ray, max_retries=args.max_retries)
    except PointsFailed as exc:
        print(f"mogen sweep: error: {exc}", file=sys.stderr)  # one line per failed point, as it is
        return 1
    print(f"mogen sweep: {res.decoded} point(s) decoded, {res.skipped} already done, {res.scored} text(s) scored "
          f"(each reward counted); reports in {res.folder}")
    print((res.folder / "metrics.md").read_text())
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Registers ``sweep``."""
    p = sub.add_parser(
        "sweep", help="run methods over a grid of preferences; write texts, rewards, metrics and a Pareto plot",
        description="Runs (or resumes) the sweep of a YAML config (see mogen.evaluation.config): every method "
                    "at every preference point and decoding seed, scored by the rewards (module:function "
                    "functions or sequence-classification reward models). Writes samples.jsonl, means.csv, "
                    "metrics.md (every metric with its 95% bootstrap interval), rewards.json, bootstrap.npz and "
                    "pareto.png to the config's output folder; finished points and cached scores are reused.")
    p.add_argument("--config", required=True, help="the sweep config (YAML)")
    p.add_argument("--substitute", default=None, metavar="FILE",
                   help="a substitute file (YAML): `paths` maps paths of the config to stand-ins (relative to FILE), "
                        "`output` moves the run folder, `override` replaces config values (e.g. preferences, "
                        "samples, decoding.max_new_tokens); see mogen.evaluation.substitute")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--seeds", type=int, default=None,
                   help="decoding seeds, each point decoded once per seed and the samples pooled (default: the "
                        "config's seeds, else 1)")
    p.add_argument("--seed-offset", type=int, default=0,
                   help="added to the config's decoding seed: the seeds are seed + offset, seed + offset + 1, ...")
    p.add_argument("--ray", nargs="?", const=True, default=None, metavar="ADDRESS",
                   help="decode the points as Ray tasks (pip install 'mogen[ray]'): an actor per method holds its "
                        "models, with the config's `resources`; ADDRESS is a Ray cluster's (`auto`: the one "
                        "started on this machine with `ray start`), none: ray.init()'s default, a new local "
                        "instance unless RAY_ADDRESS is set")
    p.add_argument("--max-retries", type=int, default=None, metavar="N",
                   help="with --ray: retries of a point that failed (an exception, a worker that died) before it "
                        "is reported (default: the config's max_retries, else 2)")
    p.set_defaults(func=_cmd_sweep)
