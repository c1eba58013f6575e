"""The demo's tokenizers: the base's byte-level BPE and the guides' metaspace BPE, by guide family.

The guides' family (``DemoConfig.guide_family``) decides how much of the base's
vocabulary a guide with its own tokenizer can score through the vocabulary map
(``cross_vocab="map"``: a base token with a same-bytes guide token, else no
opinion). The default guides (``"metaspace"``, byte fallback, 400 trained tokens
on the same corpus) cover 95% of the base's 640 tokens. The cross-family guides
(``"cross"``) cover about 29%, as low as real cross-family pairs (benchmarks/results/vocab_coverage.md:
Qwen2 -> Llama-2 17.3%, GPT-2 -> Phi-3 36.2%, Falcon -> StarCoder 36.9%):
no byte fallback, so only the base's byte tokens of characters the corpus has
map, and a vocabulary small enough that most words, every topic word the
rewards count among them, are split into pieces the base does not have.
:func:`guide_coverage` measures it in under a second, without training a model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from .. import tiny
from . import corpus as demo_corpus

if TYPE_CHECKING:
    from .train import DemoConfig

__all__ = ["GUIDE_FAMILIES", "CROSS_GUIDE_VOCAB", "demo_tokenizers", "guide_coverage"]

#: The guides' tokenizer families (``DemoConfig.guide_family``): ``"metaspace"``, a Llama-style metaspace BPE
#: with byte fallback (``guide_vocab`` trained tokens + 256 byte tokens); ``"cross"``, the cross-family variant
#: (the module docstring): a metaspace BPE without byte fallback, :data:`CROSS_GUIDE_VOCAB` tokens.
GUIDE_FAMILIES: tuple[str, ...] = ("metaspace", "cross")

#: The cross-family guides' vocabulary size. Chosen so that the share of base tokens with a same-bytes guide
#: token (~29%) lies among the real cross-family pairs' (Qwen2 -> Llama-2 17.3%, GPT-2 -> Phi-3 36.2%): the
#: guide's merges stop before most words, the topic words among them, are single tokens.
CROSS_GUIDE_VOCAB = 200


def _tokenizers(cfg: "DemoConfig", lines: Sequence[str]) -> tuple[Any, Any]:
    """``(base, guide)`` tokenizers of ``cfg`` trained on ``lines``, left-padding."""
    # inside: only a build (or a coverage measurement) needs the tokenizers library's processors.
    from tokenizers import processors

    base_tok = tiny.byte_level_bpe(lines, vocab_size=cfg.base_vocab)
    if cfg.guide_family == "cross":
        guide_tok = tiny.metaspace_bpe(lines, vocab_size=CROSS_GUIDE_VOCAB, byte_fallback=False)
    else:
        guide_tok = tiny.metaspace_bpe(lines, vocab_size=cfg.guide_vocab)
    # The base starts every text with <s> as it was trained, for `mogen decode` too.
    base_tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", base_tok.bos_token_id)]
    )
    for tok in (base_tok, guide_tok):
        tok.padding_side = "left"
    return base_tok, guide_tok


def _training_lines(cfg: "DemoConfig") -> tuple[list, dict]:
    """The demo's corpus lines and its topic sentences (topic -> lines), the tokenizers' training text."""
    lines = demo_corpus.corpus(cfg.corpus_size, seed=cfg.seed, topics=cfg.topics)
    topics = {name: demo_corpus.topic_sentences(name, cfg.topic_size, seed=cfg.seed) for name in cfg.topics}
    return lines, topics


def demo_tokenizers(config: "DemoConfig") -> tuple[Any, Any]:
    """``(base, guide)`` tokenizers exactly as a build of ``config`` trains them (under a second, no model)."""
    lines, topics = _training_lines(config)
    return _tokenizers(config, lines + [s for v in topics.values() for s in v])


def guide_coverage(config: "DemoConfig") -> dict:
    """How much of the base's vocabulary the guides of ``config`` can score through the vocabulary map
    (``cross_vocab="map"``): ``vocab``, the share of base tokens with a same-bytes guide token (what
    benchmarks/results/vocab_coverage.md gives for real pairs); ``text``, that share over the base tokens of the corpus, counted with
    repetition; ``topic_words``, the share of the rewards' words that are one mapped base token (with their
    leading space, as inside a sentence)."""
    from ..vocab import build_vocab_map, coverage

    base_tok, guide_tok = demo_tokenizers(config)
    vmap = build_vocab_map(base_tok, guide_tok)
    lines, _ = _training_lines(config)
    ids = [i for line in lines for i in base_tok(line, add_special_tokens=False)["input_ids"]]
    words = sorted(set().union(*(demo_corpus._LEXICON[name] for name in config.topics)))  # the rewards' words
    single = [base_tok(" " + w, add_special_tokens=False)["input_ids"] for w in words]
    return {"vocab": coverage(vmap), "text": float((vmap[ids] != -1).float().mean()),
            "topic_words": sum(len(t) == 1 and int(vmap[t[0]]) != -1 for t in single) / len(words)}
