"""The ``mogen`` command line: ``mogen decode``, ``mogen search``, ``mogen demo``, ``mogen info``, ``mogen merge``,
``mogen sweep``, ``mogen value sample|train``.

Subcommands are small functions, one module per command group (system: info and bench; demo; decode:
decode and search, with loading; merge; sweep; value), each registering its parsers in ``build_parser``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional, Sequence

from .._optional import MissingDependency
from . import decode, demo, merge, sweep, system, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mogen", description="Controllable multi-objective generation.")
    sub = parser.add_subparsers(dest="command", required=True)
    # The order of the help listing: info, bench, demo, decode, search, merge, sweep, value.
    for group in (system, demo, decode, merge, sweep, value):
        group.add_parsers(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (ValueError, FileNotFoundError, RuntimeError, MissingDependency) as exc:
        if args.command not in ("decode", "search", "sweep", "merge", "value") or getattr(args, "debug", False):
            raise
        print(f"mogen {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except (TypeError, FileExistsError, PermissionError) as exc:
        if args.command != "merge" or args.debug:
            raise
        print(f"mogen merge: error: {_one_line(exc)}", file=sys.stderr)
        return 2


def _one_line(exc: BaseException) -> str:
    """An error message on one line (YAML and JSON parsers report over several)."""
    return " ".join(str(exc).split())
