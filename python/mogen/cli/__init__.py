"""The ``mogen`` command line: ``mogen decode``, ``mogen search``, ``mogen demo``, ``mogen info``, ``mogen merge``,
``mogen sweep``.

Subcommands are small functions registered in ``build_parser``.
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


def _cmd_bench(args: argparse.Namespace) -> int:
    from .. import bench

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


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.fusion:
        from ..showcase import run_fusion_showcase

        run_fusion_showcase(seed=args.seed)
        return 0
    if args.sweep:
        from ..demo.sweep import run_demo_sweep

        run_demo_sweep(samples=args.samples or 4, objectives=args.objectives)
        return 0
    if args.objectives != 2:
        print("mogen demo: --objectives 3 is for the embedded comparison (--sweep)", file=sys.stderr)
        return 2
    if args.search:
        from ..demo import load_demo_models
        from ..demo.compare import compare_search, print_comparison

        models = load_demo_models(rebuild=args.rebuild, log=print)
        print(f"mogen demo --search: {len(models.base_tokenizer)}-token byte-level base, proxy guides with their own "
              f"metaspace tokenizer; search W=4, kappa=4, L=8 vs token-level generate, {args.samples or 4} samples per "
              "prompt, top-p 0.95, 24 new tokens")
        result = compare_search(models, samples=args.samples or 4, seed=args.seed, beta=args.beta)
        print_comparison(result, print)
        return 0 if result.search_wins else 1
    from ..demo import run_demo

    gamma = {} if args.gamma is None else {"gamma": args.gamma}
    results = run_demo(seed=args.seed, rebuild=args.rebuild, samples=args.samples or 4, beta=args.beta, **gamma)
    # A demo whose trade-off does not move with the weights is a failure, not a show.
    return 0 if all(r.tradeoff_moves for r in results) else 1


def _parse_weights(text: Optional[str], n: int) -> Optional[list[float]]:
    if text is None:
        return None
    try:
        weights = [float(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"--weights must be comma-separated numbers, got {text!r}") from None
    if len(weights) != n:
        raise ValueError(f"--weights has {len(weights)} values but {n} guides (--guide, then --value) were given")
    return weights


def _load_for_decoding(args: argparse.Namespace) -> tuple:
    """``(base, base tokenizer, guides, weights)`` from ``--base``, ``--guide``, ``--value``, ``--weights``."""
    import torch

    from .. import decoding
    from ..decoding.loading import (
        has_tokenizer,
        load_causal_lm,
        load_tokenizer,
        parse_dtype,
        parse_guide_spec,
        quiet_transformers,
    )

    quiet_transformers()
    dtype = parse_dtype(args.dtype)
    specs = [parse_guide_spec(s) for s in args.guide]
    weights = _parse_weights(args.weights, len(specs) + len(args.value))
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: CUDA is not available in this torch build / machine")

    loaded: dict[str, object] = {}  # one model object per folder (a shared reference runs as one model)

    def model(path: str, what: str):
        if path not in loaded:
            loaded[path] = load_causal_lm(path, dtype=dtype, device=args.device, device_map=args.device_map,
                                          what=what)
        return loaded[path]

    tokenizers: dict[str, object] = {}

    def tokenizer(path: str, what: str):
        if path not in tokenizers:
            tokenizers[path] = load_tokenizer(path, what)
        return tokenizers[path]

    base_tok = tokenizer(args.base, "base")
    base = model(args.base, "base")
    guides = []
    for i, (expert_dir, ref_dir, tok_dir) in enumerate(specs):
        tok_dir = tok_dir or (expert_dir if has_tokenizer(expert_dir) else None)
        guide_tok = tokenizer(tok_dir, f"guide {i} tokenizer") if tok_dir else None
        guides.append(decoding.ProxyGuide(model(expert_dir, f"guide {i} expert"),
                                          model(ref_dir, f"guide {i} reference"), tokenizer=guide_tok,
                                          temperature=args.guide_temperature))
    for j, value_dir in enumerate(args.value):
        from ..value import read_value_entry

        read_value_entry(value_dir)  # a clear error for a folder that is not a value model
        value_tok = tokenizer(value_dir, f"value {j} tokenizer") if has_tokenizer(value_dir) else None
        guides.append(decoding.ValueGuide(model(value_dir, f"value model {j}"), tokenizer=value_tok,
                                          top_k=args.value_top_k))
    return base, base_tok, guides, weights


def _cmd_decode(args: argparse.Namespace) -> int:
    import torch
    from transformers import TextStreamer

    from .. import decoding
    from ..decoding.models import output_device

    base, base_tok, guides, weights = _load_for_decoding(args)
    enc = base_tok([args.prompt], return_tensors="pt")
    generator = None
    if args.sample:
        generator = torch.Generator(device=output_device(base)).manual_seed(args.seed)
    # The streamer prints the prompt too, once generate has validated everything.
    streamer = TextStreamer(base_tok, skip_prompt=False, skip_special_tokens=True)
    decoding.generate(
        base, enc["input_ids"], enc["attention_mask"], guides=guides, tokenizer=base_tok, weights=weights,
        beta=args.beta, gamma=args.gamma, max_new_tokens=args.max_new_tokens, do_sample=args.sample, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, streamer=streamer, generator=generator,
    )
    return 0


class _BeamStreamer:
    """Prints the best beam's text after each chunk round (the new part, or all of it when the best changed)
    and a progress line on stderr."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.shown = ""

    def __call__(self, report) -> None:
        best = report.kept[0][0]
        text = self.tokenizer.decode(list(best.tokens), skip_special_tokens=True)
        if text.startswith(self.shown):
            print(text[len(self.shown):], end="", flush=True)
        else:
            print(f"\n[best beam changed]\n{text}", end="", flush=True)
        self.shown = text
        rate = report.tokens / max(report.seconds, 1e-9)
        print(f"\n[round {report.round + 1}: {report.new_tokens} tokens per beam, {report.live} live beam(s), "
              f"best score {best.score:.2f}, {rate:.0f} tokens/s]", file=sys.stderr, flush=True)


def _cmd_search(args: argparse.Namespace) -> int:
    import torch

    from .. import decoding
    from ..decoding.models import output_device

    base, base_tok, guides, weights = _load_for_decoding(args)
    enc = base_tok([args.prompt], return_tensors="pt")
    generator = torch.Generator(device=output_device(base)).manual_seed(args.seed)
    print(args.prompt, end="", flush=True)
    decoding.search(
        base, enc["input_ids"], enc["attention_mask"], guides=guides, tokenizer=base_tok, weights=weights,
        beam_width=args.beam_width, expansion=args.expansion, chunk_length=args.chunk_length,
        max_new_tokens=args.max_new_tokens, proposal=args.proposal, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, beta=args.beta, gamma=args.gamma, generator=generator, on_round=_BeamStreamer(base_tok),
    )
    print()
    return 0


def _model_args(p: argparse.ArgumentParser) -> None:
    """Options shared by ``mogen decode`` and ``mogen search``: the models, weights and scales."""
    p.add_argument("--base", required=True, metavar="DIR", help="base model folder (with its tokenizer)")
    p.add_argument("--guide", action="append", default=[], metavar="EXPERT_DIR:REF_DIR[:TOKENIZER_DIR]",
                   help="a guide (repeat for several)")
    p.add_argument("--value", action="append", default=[], metavar="VALUE_DIR",
                   help="a value model folder (mogen value-model format; its tokenizer if the folder has one); "
                        "repeat for an ensemble")
    p.add_argument("--value-top-k", type=int, default=None, metavar="K",
                   help="value only the K best candidates (kernel K2) instead of the full value head")
    p.add_argument("--gamma", type=float, default=1.0, help="scale of the value models' values")
    p.add_argument("--weights", metavar="W1,W2,...",
                   help="one weight per guide, --guide ones first, then --value ones (default 1 each)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--beta", type=float, default=1.0, help="scale of the proxy guides' log-ratios")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--guide-temperature", type=float, default=1.0, help="temperature of every guide's models")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="fp32", help="fp32 or bf16 (fp16 also accepted)")
    p.add_argument("--device-map", default=None, metavar="MAP",
                   help="e.g. 'auto': spread each model over the visible GPUs (needs accelerate)")


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _param_value(text: str):
    import yaml

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


def _cmd_sweep(args: argparse.Namespace) -> int:
    from ..evaluation import run_sweep

    res = run_sweep(args.config, progress=not args.quiet)
    print(f"mogen sweep: {res.decoded} point(s) decoded, {res.skipped} already done; reports in {res.folder}")
    print((res.folder / "metrics.md").read_text())
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    import os

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
        kw = config_to_merge_args(cfg, root=root)
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
                          progress=not args.quiet, overwrite=args.overwrite, fsync=not args.no_fsync)
    print(report)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mogen", description="Controllable multi-objective generation.")
    sub = parser.add_subparsers(dest="command", required=True)
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
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default=None,
                   help="input dtype (default: fp32 for fusion, bf16 for value)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_bench)

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
    p.add_argument("--samples", type=int, default=None,
                   help="samples per prompt and weighting (default 4)")
    p.add_argument("--beta", type=float, default=1.0, help="scale of the proxy guides' log-ratios")
    p.add_argument("--gamma", type=float, default=None,
                   help="scale of the value guides' values (default: mogen.demo.run.DEMO_GAMMA)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "decode", help="decode a prompt with a base model steered by weighted guides (streams the text)",
        description="Decode with a base model steered by weighted expert/reference guides and value models. "
                    "Loads local model folders (safetensors); a guide's tokenizer is TOKENIZER_DIR, else the "
                    "expert folder's, else the base's.")
    _model_args(p)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.set_defaults(func=_cmd_decode)

    p = sub.add_parser(
        "search", help="chunk-level beam search steered by weighted guides (streams the best beam per round)",
        description="Chunk-level beam search (MPAW Alg. 1; MAGE's b/c/l lookahead with --proposal guided): W beams, "
                    "each extended by KAPPA sampled chunks of L tokens per round, scored by the base's log-probability "
                    "plus the weighted guide terms, each model reading the text in its own tokenizer.")
    _model_args(p)
    p.add_argument("--beam-width", type=int, default=4, metavar="W")
    p.add_argument("--expansion", type=int, default=4, metavar="KAPPA")
    p.add_argument("--chunk-length", type=int, default=10, metavar="L")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--proposal", choices=["base", "guided"], default="base",
                   help="draw chunks from the base (MPAW) or from the fused token-level distribution (MAGE)")
    p.set_defaults(func=_cmd_search)

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
    p.add_argument("--debug", action="store_true", help="on an error, show the Python traceback too")
    p.add_argument("--clean", action="store_true",
                   help="only remove temporary folders left beside each --out by merges that died (a merge to "
                        "the same target does this too); never those of a merge still running")
    p.set_defaults(func=_cmd_merge)

    p = sub.add_parser(
        "sweep", help="run methods over a grid of preferences; write texts, rewards, metrics and a Pareto plot",
        description="Runs (or resumes) the sweep of a YAML config (see mogen.evaluation.config): every method "
                    "at every preference point, scored by the reward functions. Writes samples.jsonl, means.csv, "
                    "metrics.md and pareto.png to the config's output folder; finished points are skipped.")
    p.add_argument("--config", required=True, help="the sweep config (YAML)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_sweep)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        if args.command not in ("decode", "search", "sweep", "merge") or getattr(args, "debug", False):
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

