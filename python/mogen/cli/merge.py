"""``mogen merge``: checkpoint merges from flags or a mergekit-style config, and ``--clean``."""

from __future__ import annotations

import argparse
import os

import yaml

# The command's subsystem (transformers and decoding, the merge engine, the sweep's plotting) is imported
# inside its command so that `mogen --help` and the other commands do not pay for it.


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _param_value(text: str):
    return yaml.safe_load(text)


def _clean_leftovers(args: argparse.Namespace) -> int:
    """``mogen merge --clean --out X``: removes temporary folders left beside X by merges that died."""
    from ..merging.leftovers import remove_leftovers

    if args.config or args.source or args.weights:
        raise SystemExit("mogen merge --clean takes only --out (the targets whose leftovers to remove)")
    removed = [p for out in args.out for p in remove_leftovers(out)]
    for p in removed:
        print(f"removed {p}")
    print(f"mogen merge --clean: {len(removed)} leftover folder(s) removed")
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:

    from ..merging import merge
    from ..merging.config import config_to_merge_args, load_config
    from ..merging.layerwise import merge_config, needs_layerwise

    if args.clean:
        return _clean_leftovers(args)
    if args.config is not None:
        if args.source or args.weights:
            raise SystemExit("mogen merge: give either --config or --source/--weights, not both")
        cfg = load_config(args.config)
        root = os.path.dirname(os.path.abspath(args.config))
        if needs_layerwise(cfg):
            return _merge_layerwise(args, cfg, root, merge_config)
        kw = config_to_merge_args(cfg, root=root, file=args.config)
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


def _merge_layerwise(args: argparse.Namespace, cfg: dict, root: str, merge_config) -> int:
    """A config with slices or per-layer parameters: the config says everything but the output."""
    extra = [flag for flag, v in (("--method", args.method), ("--base", args.base), ("--param", args.param),
                                  ("--device", args.device)) if v]
    if extra:
        raise ValueError(f"{extra[0]} does not apply to a config with slices or per-layer parameters; "
                         "edit the config instead")
    if len(args.out) != 1:
        raise ValueError("--out: a config with slices or per-layer parameters makes one output folder")
    report = merge_config(cfg, args.out[0], root, dtype=args.dtype, shard_size=args.shard_size,
                          progress=not args.quiet, overwrite=args.overwrite, fsync=not args.no_fsync,
                          file=args.config)
    print(report)
    return 0


def _methods_epilog() -> str:
    """One line per registered merge method: its name, parameters and summary."""
    from ..merging.methods import METHODS, get_method

    lines = ["merge methods (--method; parameters by --param):"]
    for name in METHODS:
        m = get_method(name)
        params = f" [{', '.join(m.parameters)}]" if m.parameters else ""
        needs = " (needs --base)" if m.needs_base else ""
        lines.append(f"  {name}{params}: {m.summary}{needs}")
    return "\n".join(lines)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Registers ``merge``."""
    from ..merging.methods import METHODS

    p = sub.add_parser(
        "merge",
        help=f"merge checkpoints ({', '.join(METHODS)})",
        description="Streams every input once: --weights may be given K times for K outputs (one --out each).",
        epilog=_methods_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
    p.add_argument("--debug", action="store_true", help="on an error, show the Python traceback too")
    p.add_argument("--clean", action="store_true",
                   help="only remove temporary folders left beside each --out by merges that died (a merge to "
                        "the same target does this too); never those of a merge still running")
    p.set_defaults(func=_cmd_merge)
