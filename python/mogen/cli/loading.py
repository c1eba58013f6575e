"""Loading what ``mogen decode`` and ``mogen search`` decode with: the base, its guides and their weights."""

from __future__ import annotations

import argparse
from typing import Optional


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


def load_for_decoding(args: argparse.Namespace) -> tuple:
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
