"""``mogen demo``: the embedded demo, the fusion showcase, the search comparison and the embedded sweep."""

from __future__ import annotations

import argparse
import sys

# The command's subsystem (transformers and decoding, the merge engine, the sweep's plotting) is imported
# inside its command so that `mogen --help` and the other commands do not pay for it.


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.fusion:
        from ..showcase import run_fusion_showcase

        run_fusion_showcase(seed=args.seed)
        return 0
    if args.sweep:
        from ..demo.sweep import run_demo_sweep

        if args.cross_family and args.objectives != 2:
            print("mogen demo: --cross-family is a two-objective comparison", file=sys.stderr)
            return 2
        run_demo_sweep(**({"samples": args.samples} if args.samples else {}), objectives=args.objectives,
                       **({"seeds": args.seeds} if args.seeds else {}), seed_offset=args.seed_offset,
                       guide_family="cross" if args.cross_family else "metaspace", ray=args.ray)
        return 0
    for flag, given in (("--objectives 3", args.objectives != 2), ("--cross-family", args.cross_family),
                        ("--ray", args.ray is not None)):
        if given:
            print(f"mogen demo: {flag} is for the embedded comparison (--sweep)", file=sys.stderr)
            return 2
    if args.search:
        from ..demo import load_demo_models
        from ..demo.compare import compare_search, print_comparison, record_comparison

        models = load_demo_models(rebuild=args.rebuild, log=print)
        printed: list = []

        def out(line: str) -> None:
            print(line, flush=True)
            printed.append(line)

        out(f"mogen demo --search: {len(models.base_tokenizer)}-token byte-level base, proxy guides with their own "
            f"metaspace tokenizer; search W=4, kappa=4, L=8 vs token-level generate, {args.samples or 4} samples per "
            "prompt, top-p 0.95, 24 new tokens")
        result = compare_search(models, samples=args.samples or 4, seed=args.seed, beta=args.beta)
        print_comparison(result, out)
        path = record_comparison(printed, args.seed)
        if path is not None:
            print(f"recorded {path}")
        return 0 if result.search_wins else 1
    from ..demo import run_demo

    gamma = {} if args.gamma is None else {"gamma": args.gamma}
    results = run_demo(seed=args.seed, rebuild=args.rebuild, samples=args.samples or 4, beta=args.beta, **gamma)
    # A demo whose trade-off does not move with the weights is a failure, not a show.
    return 0 if all(r.tradeoff_moves for r in results) else 1


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Registers ``demo``."""
    p = sub.add_parser("demo", help="run the embedded demo (no downloads)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fusion", action="store_true", help="run the fusion-kernel showcase instead")
    p.add_argument("--search", action="store_true",
                   help="compare chunk-level beam search (mogen.search) with token-level generate instead")
    p.add_argument("--rebuild", action="store_true", help="rebuild the cached demo models")
    p.add_argument("--sweep", action="store_true",
                   help="run the embedded comparison of every method over 11 preferences (make sweep)")
    p.add_argument("--objectives", type=int, choices=(2, 3), default=2,
                   help="with --sweep: 3 runs the three-objective variant (nature, city, ocean) over 15 preferences")
    p.add_argument("--cross-family", action="store_true",
                   help="with --sweep: the cross-family comparison (guides whose tokenizer covers ~29%% of the base's "
                        "vocabulary; MPAW token-level and MAGE-I with cross_vocab map and text)")
    p.add_argument("--samples", type=int, default=None,
                   help="samples per prompt and weighting (default 4; --sweep: mogen.demo.sweep.DEMO_SAMPLES per seed)")
    p.add_argument("--seeds", type=int, default=None,
                   help="with --sweep: decoding seeds, samples pooled over them (default mogen.demo.sweep.DEMO_SEEDS)")
    p.add_argument("--seed-offset", type=int, default=0,
                   help="with --sweep: the first decoding seed (seeds are offset, offset + 1, ...)")
    p.add_argument("--ray", nargs="?", const=True, default=None, metavar="ADDRESS",
                   help="with --sweep: decode the points on Ray, a new local instance or the cluster at ADDRESS "
                        "(as mogen sweep --ray; pip install 'mogen[ray]')")
    p.add_argument("--beta", type=float, default=1.0, help="scale of the proxy guides' log-ratios")
    p.add_argument("--gamma", type=float, default=None,
                   help="scale of the value guides' values (default: mogen.demo.run.DEMO_GAMMA)")
    p.set_defaults(func=_cmd_demo)
