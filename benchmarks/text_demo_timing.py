"""Time per token of the cross-family demo's MPAW token-level methods, ``cross_vocab`` map against text.

Run: ``PYTHONPATH=python:. python benchmarks/text_demo_timing.py [--seeds 2] [--greedy OUT.json] [--profile N]``

Decodes one preference point (mu = [0.5, 0.5]) of ``mogen demo --sweep
--cross-family``'s MPAW token-level (map) and (text) rows, exactly as the sweep
does (8 prompts x 8 samples = 64 rows, 24 new tokens, top-p 0.95), and prints
the tokens/s of each and the text/map ratio of time per token (median over
``--seeds`` seeds, after one warm-up point). ``--greedy OUT.json`` also writes
both methods' greedy texts (to compare two versions of the code);
``--no-timing`` writes them only; ``--profile N`` prints a cProfile of one text-mode point instead (the ``N``
top functions by own time and by total time). Prints only; records nothing.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
for extra in (ROOT / "python", ROOT):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from mogen.demo.sweep import CROSS_METHODS, demo_sweep_config  # noqa: E402
from mogen.demo.train import DemoConfig, build_demo_models, cache_root  # noqa: E402
from mogen.evaluation.config import load_sweep_config  # noqa: E402
from mogen.evaluation.methods import _Models, build_decoder  # noqa: E402
from mogen.evaluation.sweep import _decode_point, method_tokenizer  # noqa: E402

MU = (0.5, 0.5)
NAMES = ("MPAW token-level (map)", "MPAW token-level (text)")


def setup(greedy: bool) -> tuple[Any, _Models, dict]:
    """The cross-family demo's sweep config (``greedy``: no sampling), its models and the two methods by name."""
    path = build_demo_models(DemoConfig(guide_family="cross"), log=lambda _line: None)
    raw = demo_sweep_config(path, cache_root() / "text-timing", methods=[m for m in CROSS_METHODS
                                                                         if m["name"] in NAMES])
    if greedy:
        raw["decoding"] = {"max_new_tokens": raw["decoding"]["max_new_tokens"], "do_sample": False}
    cfg = load_sweep_config(raw)
    return cfg, _Models(cfg), {m.name: m for m in cfg.methods}


def decode(cfg: Any, models: _Models, method: Any, decoder: Any, seed: int) -> dict:
    """One point of ``method``: the sweep's point record (texts, tokens, seconds)."""
    return _decode_point(decoder, method_tokenizer(models, method), cfg, MU, seed, models.device)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--greedy", type=Path, default=None, help="write both methods' greedy texts here")
    ap.add_argument("--profile", type=int, default=0, help="cProfile one text-mode point: top N functions")
    ap.add_argument("--no-timing", action="store_true", help="only write --greedy's texts")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg, models, methods = setup(greedy=False)
    decoders = {name: build_decoder(methods[name], models) for name in NAMES}
    with torch.no_grad():
        if args.profile:
            name = NAMES[1]
            decode(cfg, models, methods[name], decoders[name], 0)
            prof = cProfile.Profile()
            prof.enable()
            decode(cfg, models, methods[name], decoders[name], 1)
            prof.disable()
            stats = pstats.Stats(prof).strip_dirs()
            stats.sort_stats("tottime").print_stats(args.profile)
            stats.sort_stats("cumulative").print_stats(args.profile)
            return 0
        per_token = {}
        for name in NAMES if not args.no_timing else ():
            decode(cfg, models, methods[name], decoders[name], 100)  # warm-up
            points = [decode(cfg, models, methods[name], decoders[name], s) for s in range(args.seeds)]
            per_token[name] = statistics.median(p["seconds"] / p["tokens"] for p in points)
            print(f"{name}: {1 / per_token[name]:.0f} tokens/s ({per_token[name] * 1e3:.3f} ms/token)", flush=True)
        if per_token:
            print(f"text/map time per token: {per_token[NAMES[1]] / per_token[NAMES[0]]:.2f}x")
        if args.greedy is not None:
            gcfg, gmodels, gmethods = setup(greedy=True)
            texts = {name: [s["response"] for s in decode(gcfg, gmodels, gmethods[name],
                                                         build_decoder(gmethods[name], gmodels), 0)["samples"]]
                     for name in NAMES}
            args.greedy.write_text(json.dumps(texts, indent=1))
            print("wrote", args.greedy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
