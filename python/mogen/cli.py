"""The ``mogen`` command line: ``mogen demo``, ``mogen info``.

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mogen", description="Controllable multi-objective generation.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="show how the compiled extension was built")
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser("demo", help="run the embedded demo (no downloads)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
