"""``mogen info`` and ``mogen bench``: how the extension was built, and its kernels timed on this machine."""

from __future__ import annotations

import argparse
import json

from .. import bench
from ..dtypes import SHORT_FLOAT_NAMES


def _cmd_info(args: argparse.Namespace) -> int:
    import mogen_ext  # the compiled extension: optional, mogen runs on its fallbacks without it

    print(json.dumps(mogen_ext.build_info(), indent=2, sort_keys=True))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.op == "value":
        setting = dict(batch=args.batch, hidden_size=args.hidden, vocab=args.vocab, k=args.k,
                       dtype=args.dtype or "bf16", device=args.device)
        print(bench.describe_value(bench.time_value(**setting), **setting))
        return 0
    guide_vocab = None if args.guide_vocab == 0 else args.guide_vocab
    setting = dict(batch=args.batch, vocab=args.vocab, guides=args.guides, guide_vocab=guide_vocab,
                   dtype=args.dtype or "fp32", device=args.device)
    print(bench.describe(bench.time_fusion(**setting), **setting))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Registers ``info`` and ``bench``."""
    p = sub.add_parser("info", help="show how the compiled extension was built")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("bench", help="time a kernel against its eager composite on this machine",
                       description="Times mogen.ops.fused_log_ratio (K1, --op fusion) against its eager PyTorch "
                                   "composite on random logits, or mogen.ops.topk_value_scores (K2, --op value) "
                                   "against the full value head (the full matrices: make bench).")
    p.add_argument("--op", choices=["fusion", "value"], default="fusion")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--vocab", type=int, default=151936, help="base vocabulary V_b (fusion) or value-head rows (value)")
    p.add_argument("--guides", type=int, default=2)
    p.add_argument("--guide-vocab", type=int, default=128256,
                   help="vocabulary of the last guide, reached through a map (0: all share the base's)")
    p.add_argument("--hidden", type=int, default=4096, help="value: hidden size H")
    p.add_argument("--k", type=int, default=50, help="value: candidates per row")
    p.add_argument("--dtype", choices=list(SHORT_FLOAT_NAMES), default=None,
                   help="input dtype (default: fp32 for fusion, bf16 for value)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_bench)
