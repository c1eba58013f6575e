"""``mogen decode`` and ``mogen search``: token-level decoding and chunk-level beam search steered by guides."""

from __future__ import annotations

import argparse
import sys

import torch

from ..numerics import MIN_SECONDS
from .loading import load_for_decoding

# The command's subsystem (transformers and decoding, the merge engine, the sweep's plotting) is imported
# inside its command so that `mogen --help` and the other commands do not pay for it.


def _processor_kwargs(args: argparse.Namespace) -> dict:
    """``--repetition-penalty``, ``--min-new-tokens``, ``--stop`` as ``model.generate``'s arguments (only those
    given, so that without them nothing changes)."""
    kw: dict = {}
    if args.repetition_penalty is not None:
        kw["repetition_penalty"] = args.repetition_penalty
    if args.min_new_tokens is not None:
        kw["min_new_tokens"] = args.min_new_tokens
    if args.stop:
        kw["stop_strings"] = list(args.stop)
    return kw


def _cmd_decode(args: argparse.Namespace) -> int:
    from transformers import TextStreamer

    from .. import decoding
    from ..decoding.models import output_device

    repeat = args.num_return_sequences
    if repeat is not None and repeat > 1 and not args.sample:
        raise ValueError(f"--num-return-sequences {repeat} needs --sample: greedy decoding gives one sequence")
    base, base_tok, guides, weights = load_for_decoding(args)
    enc = base_tok([args.prompt], return_tensors="pt")
    generator = None
    if args.sample:
        generator = torch.Generator(device=output_device(base)).manual_seed(args.seed)
    extra = _processor_kwargs(args)
    if repeat is not None:
        extra["num_return_sequences"] = repeat
    # The streamer prints the prompt too, once generate has validated everything; it takes one row, so
    # several sequences are printed when they are done.
    several = repeat is not None and repeat > 1
    streamer = None if several else TextStreamer(base_tok, skip_prompt=False, skip_special_tokens=True)
    out = decoding.generate(
        base, enc["input_ids"], enc["attention_mask"], guides=guides, tokenizer=base_tok, weights=weights,
        beta=args.beta, gamma=args.gamma, max_new_tokens=args.max_new_tokens, do_sample=args.sample,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, streamer=streamer, generator=generator,
        **extra,
    )
    if several:
        length = enc["input_ids"].shape[1]
        for i, row in enumerate(out):
            text = base_tok.decode(row[length:], skip_special_tokens=True)
            print(f"[sequence {i + 1}/{len(out)}]\n{args.prompt}{text}", flush=True)
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
        rate = report.tokens / max(report.seconds, MIN_SECONDS)
        print(f"\n[round {report.round + 1}: {report.new_tokens} tokens per beam, {report.live} live beam(s), "
              f"best score {best.score:.2f}, {rate:.0f} tokens/s]", file=sys.stderr, flush=True)


def _cmd_search(args: argparse.Namespace) -> int:
    from .. import decoding
    from ..decoding.models import output_device

    if args.num_return_sequences is not None and args.num_return_sequences != 1:
        raise ValueError(f"--num-return-sequences {args.num_return_sequences}: mogen search prints its best beam; "
                         "for several samples use mogen decode --sample --num-return-sequences N, for every final "
                         "beam mogen.search(..., return_scores=True)")
    base, base_tok, guides, weights = load_for_decoding(args)
    enc = base_tok([args.prompt], return_tensors="pt")
    generator = torch.Generator(device=output_device(base)).manual_seed(args.seed)
    print(args.prompt, end="", flush=True)
    decoding.search(
        base, enc["input_ids"], enc["attention_mask"], guides=guides, tokenizer=base_tok, weights=weights,
        beam_width=args.beam_width, expansion=args.expansion, chunk_length=args.chunk_length,
        max_new_tokens=args.max_new_tokens, proposal=args.proposal, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, beta=args.beta, gamma=args.gamma, generator=generator, on_round=_BeamStreamer(base_tok),
        **_processor_kwargs(args),
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
    p.add_argument("--repetition-penalty", type=float, default=None, metavar="P",
                   help="transformers' repetition penalty on the base's logits (> 1 discourages repeats)")
    p.add_argument("--min-new-tokens", type=int, default=None, metavar="N",
                   help="no eos before N new tokens (transformers' min_new_tokens)")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop where the text ends with TEXT (in mogen search a beam ends there); repeat for "
                        "several stop strings")
    p.add_argument("--num-return-sequences", type=int, default=None, metavar="N",
                   help="mogen decode --sample: N sampled sequences, printed one after the other (mogen search "
                        "refuses it: it prints its best beam)")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Registers ``decode`` and ``search``."""
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
