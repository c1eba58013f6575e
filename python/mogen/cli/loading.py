"""Loading what ``mogen decode`` and ``mogen search`` decode with: the base, its guides and their weights."""

from __future__ import annotations

import argparse
from typing import Optional

import torch

# The command's subsystem (transformers and decoding, the merge engine, the sweep's plotting) is imported
# inside its command so that `mogen --help` and the other commands do not pay for it.


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
    from .. import decoding
    from ..decoding.loading import FolderCache, parse_dtype, parse_guide_spec
    from ..value import read_value_entry

    dtype = parse_dtype(args.dtype)
    specs = [parse_guide_spec(s) for s in args.guide]
    weights = _parse_weights(args.weights, len(specs) + len(args.value))
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: CUDA is not available in this torch build / machine")

    folders = FolderCache(dtype=dtype, device=args.device, device_map=args.device_map)
    base_tok = folders.tokenizer(args.base, "base")
    base = folders.model(args.base, "base")
    guides = []
    for i, (expert_dir, ref_dir, tok_dir) in enumerate(specs):
        what = f"guide {i} tokenizer"
        guide_tok = folders.tokenizer(tok_dir, what) if tok_dir else folders.own_tokenizer(expert_dir, what)
        guides.append(decoding.ProxyGuide(folders.model(expert_dir, f"guide {i} expert"),
                                          folders.model(ref_dir, f"guide {i} reference"), tokenizer=guide_tok,
                                          temperature=args.guide_temperature))
    for j, value_dir in enumerate(args.value):
        read_value_entry(value_dir)  # a clear error for a folder that is not a value model
        value_tok = folders.own_tokenizer(value_dir, f"value {j} tokenizer")
        guides.append(decoding.ValueGuide(folders.model(value_dir, f"value model {j}"), tokenizer=value_tok,
                                          top_k=args.value_top_k))
    return base, base_tok, guides, weights
