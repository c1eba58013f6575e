"""The ``mogen`` command line: ``mogen demo``, ``mogen info``, ``mogen merge``.

Subcommands are small functions registered in ``_COMMANDS``; each later feature
(decode, merge, bench) adds its own parser here.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Optional, Sequence


def _cmd_info(args: argparse.Namespace) -> int:
    import mogen_ext

    print(json.dumps(mogen_ext.build_info(), indent=2, sort_keys=True))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .showcase import run_fusion_showcase

    run_fusion_showcase(seed=args.seed)
    return 0


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _param_value(text: str):
    import yaml

    return yaml.safe_load(text)


def _cmd_merge(args: argparse.Namespace) -> int:
    import os

    from .merging import merge
    from .merging.config import config_to_merge_args, load_config

    if args.config is not None:
        if args.source or args.weights:
            raise SystemExit("mogen merge: give either --config or --source/--weights, not both")
        kw = config_to_merge_args(load_config(args.config), root=os.path.dirname(os.path.abspath(args.config)))
        kw["sources"] = kw.pop("sources")
    else:
        if not args.source:
            raise SystemExit("mogen merge: give --source (twice or more) with --weights, or --config")
        kw = {"sources": args.source, "method": args.method or "linear", "base": args.base}
        if args.weights:
            rows = [_floats(w) for w in args.weights]
            kw["coefficients"] = rows[0] if len(rows) == 1 else rows
    if args.method is not None and args.config is not None:
        kw["method"] = args.method
    if args.base is not None:
        kw["base"] = args.base
    if args.dtype is not None:
        kw["dtype"] = args.dtype
    for item in args.param or []:
        if "=" not in item:
            raise SystemExit(f"mogen merge: --param takes NAME=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        kw[k.strip()] = _param_value(v)
    outs = args.out
    out = outs[0] if len(outs) == 1 else outs
    if args.device is not None and args.device != "cpu":
        raise SystemExit("mogen merge: --device applies to in-place merges (mogen.merge_into); "
                         "merging to disk runs on the CPU, streaming from the page cache")
    report = merge(kw.pop("sources"), kw.pop("coefficients", None), out, shard_size=args.shard_size,
                   progress=not args.quiet, overwrite=args.overwrite, fsync=not args.no_fsync, **kw)
    print(report)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mogen", description="Controllable multi-objective generation.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="show how the compiled extension was built")
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser("demo", help="run the embedded demo (no downloads)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo)
    p = sub.add_parser(
        "merge",
        help="merge checkpoints (linear, task_arithmetic, bone_soup, ties, dare_linear, dare_ties, slerp)",
        description="Streams every input once: --weights may be given K times for K outputs (one --out each).",
    )
    p.add_argument("--config", help="a mergekit-style YAML merge config")
    p.add_argument("--source", action="append", help="a checkpoint folder or .safetensors file (repeat)")
    p.add_argument("--weights", action="append",
                   help="comma-separated coefficients, one per source; repeat for K outputs")
    p.add_argument("--out", action="append", required=True, help="output folder (repeat for K outputs)")
    p.add_argument("--base", help="base checkpoint (task_arithmetic, ties, dare_*) and source of config files")
    p.add_argument("--method", help="merge method (default linear, or the config's merge_method)")
    p.add_argument("--dtype", help="output dtype: float32, bfloat16, float16")
    p.add_argument("--shard-size", default="5GB", help="largest output shard, e.g. 2GB (default 5GB)")
    p.add_argument("--param", action="append", metavar="NAME=VALUE",
                   help="method parameter, e.g. beta=0.8, density=0.5, t=0.3 (repeat)")
    p.add_argument("--device", help="cpu only for merges to disk (in-place GPU merges: mogen.merge_into)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output folders")
    p.add_argument("--no-fsync", action="store_true", help="skip flushing the output to disk before renaming")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_merge)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
