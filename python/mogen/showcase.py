"""A self-contained showcase of K1 on a real tokenizer pair (``mogen demo --fusion``).

A byte-level BPE base and a metaspace (sentencepiece-style) guide tokenizer are
trained on the same synthetic corpus. Unigram "models" stand in for LMs: the
base is the corpus unigram under the base tokenizer; each guide is an expert
(the unigram of the lines about one topic) over a reference (the whole-corpus
unigram), under the guide tokenizer. Fusing them through the vocabulary map
moves the base's next-token distribution toward the topics by the weights.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Callable, Sequence

import torch

from . import bench, ops, tiny, vocab


def _unigram_logits(tokenizer, lines: Sequence[str], size: int) -> torch.Tensor:
    """log of add-one-smoothed token frequencies, ``[size]``."""
    counts = Counter(i for line in lines for i in tokenizer(line, add_special_tokens=False)["input_ids"])
    freq = torch.ones(size)
    for i, c in counts.items():
        freq[i] += c
    return freq.log()


def _show(tokenizer, token_id: int) -> str:
    """A token as text, or as its byte-level spelling when it is part of a multi-byte character."""
    text = tokenizer.decode([token_id])
    return repr(text) if "\ufffd" not in text else f"<{tokenizer.convert_ids_to_tokens(token_id)}>"


def run_fusion_showcase(seed: int = 0, out: Callable[[str], None] = print) -> None:
    torch.manual_seed(seed)
    corpus = tiny.synthetic_corpus(seed=seed)
    base_tok = tiny.byte_level_bpe(corpus)
    guide_tok = tiny.metaspace_bpe(corpus)
    # Exact matches only: a base token the guide lacks (partial UTF-8 bytes, mostly)
    # gets a log-ratio of 0 rather than that of the guide's first sub-token.
    vmap = vocab.build_vocab_map(base_tok, guide_tok)
    full = vocab.build_vocab_map(base_tok, guide_tok, fallback="first_subtoken")
    out(f"base tokenizer: byte-level BPE, {len(base_tok)} tokens; guide tokenizer: metaspace BPE "
        f"with byte fallback, {len(guide_tok)} tokens")
    out(f"vocabulary map base -> guide: exact coverage {vocab.coverage(vmap):.1%}, "
        f"{vocab.coverage(full):.1%} with fallback='first_subtoken'")

    topics = ("cat", "dog")
    base = _unigram_logits(base_tok, corpus, len(base_tok)).unsqueeze(0)
    ref = _unigram_logits(guide_tok, corpus, len(guide_tok)).unsqueeze(0)
    experts = [
        _unigram_logits(guide_tok, [ln for ln in corpus if t in ln.split()], len(guide_tok)).unsqueeze(0)
        for t in topics
    ]
    ids = {t: base_tok(" " + t, add_special_tokens=False)["input_ids"][0] for t in topics}

    out("\nnext-token distribution of the fused model, P(' cat') / P(' dog') and the top 5:")
    out(f"{'weights (cat, dog)':>20} | {'P(cat)':>7} | {'P(dog)':>7} | top 5")
    for w in ((0.0, 0.0), (1.0, 0.0), (0.5, 0.5), (0.0, 1.0)):
        scores = ops.fused_log_ratio(base, experts, [ref, ref], list(w), vocab_maps=[vmap, vmap], beta=2.0)
        probs = torch.softmax(scores, dim=-1)[0]
        _, top = ops.fused_log_ratio_topk(base, experts, [ref, ref], list(w), 5, vocab_maps=[vmap, vmap], beta=2.0)
        words = " ".join(_show(base_tok, i) for i in top[0].tolist())
        out(f"{str(w):>20} | {probs[ids['cat']]:7.2%} | {probs[ids['dog']]:7.2%} | {words}")
    assert math.isfinite(float(scores.sum()))
    setting = dict(batch=8, vocab=151936, guides=2, guide_vocab=128256, dtype="fp32", device="cpu")
    out("\n" + bench.describe(bench.time_fusion(**setting), **setting))
