"""Tiny tokenizers trained in-process, for tests, examples and benchmarks.

Nothing is downloaded: a small deterministic corpus (:func:`synthetic_corpus`)
trains BPE tokenizers with the ``tokenizers`` library in well under a second,
in the two families that matter for cross-tokenizer guidance:

- :func:`byte_level_bpe` - GPT-2 / Qwen style. Every token is a byte string
  spelled with the GPT-2 ``bytes_to_unicode`` table (``'Ġ'`` is a space,
  ``'Ċ'`` a newline); any text is encodable without an unknown token.
- :func:`metaspace_bpe` - Llama / sentencepiece style. Spaces become ``'▁'``
  and a word-initial ``'▁'`` marks a leading space; characters outside the
  vocabulary fall back to the byte tokens ``<0x00>`` .. ``<0xFF>``.

Both come back as :class:`transformers.PreTrainedTokenizerFast` with ``<s>``,
``</s>``, ``<pad>`` and ``<unk>`` as bos / eos / pad / unk. Trained on the same
corpus, the two share most words but spell them differently, which is exactly
the situation :mod:`mogen.vocab` has to bridge.
"""

from __future__ import annotations

import json
import random
from typing import Optional, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

__all__ = [
    "SPECIAL_TOKENS",
    "COMMON_WORDS",
    "synthetic_corpus",
    "byte_level_bpe",
    "metaspace_bpe",
]

#: Special tokens of every tiny tokenizer, in id order (ids 0..3).
SPECIAL_TOKENS: tuple[str, ...] = ("<unk>", "<s>", "</s>", "<pad>")

#: Frequent words of :func:`synthetic_corpus`; with a leading space each one is
#: a single token of every tiny tokenizer at ``vocab_size >= 512``.
COMMON_WORDS: tuple[str, ...] = (
    "the", "and", "is", "of", "to", "in", "it", "that", "was", "for",
    "on", "with", "as", "at", "by", "this", "from", "are", "be", "not",
    "cat", "dog", "model", "text", "good", "new", "day", "one", "two", "all",
)

_NOUNS = (
    "cat", "dog", "model", "text", "day", "house", "river", "city", "song",
    "book", "garden", "window", "teacher", "robot", "question", "answer",
    "café", "piano", "tree", "road", "coffee", "number", "value", "token",
)
_VERBS = (
    "is", "was", "sees", "likes", "reads", "writes", "finds", "makes", "takes",
    "helps", "wants", "knows", "opens", "builds", "learns", "tells",
)
_ADJS = (
    "good", "new", "small", "big", "quiet", "bright", "naïve", "old", "quick",
    "happy", "strange", "simple", "long", "short", "warm", "cold",
)
_PREPS = ("of", "to", "in", "on", "with", "at", "by", "from", "for", "as")
_EXTRAS = (
    "日本", "東京", "über", "señor", "déjà vu", "naïve café", "🙂", "🚀", "Ω",
    "€5", "3.14", "100%", "2024-01-15", "e-mail", "don't", "it's", "(yes)",
    '"quoted"', "x = 1", "a+b", "self.value", "#tag", "@user",
)
_PUNCT = (".", ".", ".", "!", "?", ",", ";", ":", "...")


def synthetic_corpus(n_lines: int = 400, seed: int = 0) -> list[str]:
    """A deterministic English-ish corpus of ``n_lines`` lines.

    Lines mix frequent function words (:data:`COMMON_WORDS` appear hundreds of
    times), punctuation, digits, embedded newlines, doubled spaces, and
    multi-byte text ("café", "naïve", "日本", emoji), so trained tokenizers get
    ASCII words, whitespace tokens and partial-UTF-8 byte tokens alike.

    Args:
        n_lines: number of lines (strings) to return.
        seed: seed of the private RNG; the same seed gives the same corpus.

    Returns:
        ``n_lines`` strings; some contain ``"\\n"``.
    """
    if n_lines < 0:
        raise ValueError(f"n_lines must be >= 0, got {n_lines}")
    rng = random.Random(seed)
    lines: list[str] = []
    for i in range(n_lines):
        n_sent = rng.randint(1, 3)
        sents = []
        for _ in range(n_sent):
            words = [
                rng.choice(("The", "the", "A", "This", "One", "All")),
                rng.choice(_ADJS),
                rng.choice(_NOUNS),
                rng.choice(_VERBS),
                rng.choice(("the", "a", "that", "this", "one", "two", "all", "not")),
                rng.choice(_NOUNS),
                rng.choice(_PREPS),
                "the",
                rng.choice(_NOUNS),
            ]
            if rng.random() < 0.5:
                words += ["and", "it", rng.choice(_VERBS), rng.choice(_ADJS)]
            if rng.random() < 0.3:
                words.append(rng.choice(_EXTRAS))
            if rng.random() < 0.3:
                words.append(str(rng.randint(0, 9999)))
            if rng.random() < 0.2:
                words += ["are", "be", "for", "with", "the", "new", "day"]
            sents.append(" ".join(words) + rng.choice(_PUNCT))
        # Newlines and runs of spaces inside a line teach whitespace tokens.
        sep = "\n" if i % 4 == 0 else ("  " if i % 7 == 0 else " ")
        lines.append(sep.join(sents))
    return lines


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    unk, bos, eos, pad = SPECIAL_TOKENS
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad, unk_token=unk
    )


def _trainer(vocab_size: int, initial_alphabet: Sequence[str]) -> trainers.BpeTrainer:
    return trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=list(initial_alphabet),
        show_progress=False,
    )


def byte_level_bpe(
    corpus: Optional[Sequence[str]] = None, vocab_size: int = 512
) -> PreTrainedTokenizerFast:
    """A GPT-2 / Qwen style byte-level BPE tokenizer trained on ``corpus``.

    ByteLevel pre-tokenizer (no prefix space, GPT-2 regex) and decoder; the
    vocabulary holds all 256 byte characters, so nothing is ever unknown.
    Ids 0..3 are :data:`SPECIAL_TOKENS`; no special token is added on encode.

    Args:
        corpus: training lines; defaults to :func:`synthetic_corpus`.
        vocab_size: target vocabulary size (at least 260 = 4 specials + 256 bytes);
            fewer when the corpus runs out of pairs seen twice.

    Returns:
        A tokenizer with ``len(tok) <= vocab_size``.
    """
    if vocab_size < 260:
        raise ValueError(f"vocab_size must be >= 260 (specials + 256 bytes), got {vocab_size}")
    corpus = synthetic_corpus() if corpus is None else corpus
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, _trainer(vocab_size, pre_tokenizers.ByteLevel.alphabet()))
    return _wrap(tok)


def metaspace_bpe(
    corpus: Optional[Sequence[str]] = None,
    vocab_size: int = 512,
    byte_fallback: bool = True,
    add_bos: bool = True,
) -> PreTrainedTokenizerFast:
    """A Llama / sentencepiece style BPE tokenizer trained on ``corpus``.

    Metaspace pre-tokenizer (``'▁'`` for spaces, prepended to the first word;
    digits, punctuation and newlines split off) and the Llama decoder ``Replace('▁', ' ') -> ByteFallback -> Fuse ->
    Strip(1 leading space)``. Ids 0..3 are :data:`SPECIAL_TOKENS`.

    Args:
        corpus: training lines; defaults to :func:`synthetic_corpus`.
        vocab_size: target size of the trained part (byte tokens come on top);
            fewer when the corpus runs out of pairs seen twice.
        byte_fallback: add ``<0x00>`` .. ``<0xFF>`` as ids 4..259 and encode
            unknown characters as their UTF-8 bytes, as Llama does; without it
            unknown characters become ``<unk>``.
        add_bos: prepend ``<s>`` when encoding with ``add_special_tokens=True``
            (Llama's default); ``add_special_tokens=False`` never adds it.

    Returns:
        A tokenizer of at most ``vocab_size`` (+ 256 with byte fallback) tokens.
    """
    corpus = synthetic_corpus() if corpus is None else corpus
    # Like sentencepiece/Llama: words keep their '▁', digits stand alone, and a
    # newline is a piece of its own (so no token ever glues "\n" to a word).
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True),
        pre_tokenizers.Split("\n", "isolated"),
        pre_tokenizers.Punctuation("isolated"),
        pre_tokenizers.Digits(individual_digits=True),
    ])
    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS[0]))
    tok.pre_tokenizer = pre
    tok.train_from_iterator(corpus, _trainer(vocab_size, ()))
    if byte_fallback:
        # The trainer knows nothing of byte fallback: rebuild the model with the
        # byte tokens right after the specials (Llama's layout) and the trained
        # tokens shifted behind them, keeping the learned merges. Llama has no
        # "\n" token (a newline is <0x0A>); drop it to match. It never merges
        # (a newline is always a piece of its own), so no merge refers to it.
        trained = sorted(tok.get_vocab(with_added_tokens=False).items(), key=lambda kv: kv[1])
        trained = [(t, i) for t, i in trained if t != "\n"]
        vocab: dict[str, int] = {}
        for t in SPECIAL_TOKENS:
            vocab[t] = len(vocab)
        for b in range(256):
            vocab[f"<0x{b:02X}>"] = len(vocab)
        for t, _ in trained:
            vocab.setdefault(t, len(vocab))
        merges = _merges_of(tok)
        tok = Tokenizer(
            models.BPE(vocab=vocab, merges=merges, unk_token=SPECIAL_TOKENS[0],
                       byte_fallback=True, fuse_unk=True)
        )
        tok.add_special_tokens(list(SPECIAL_TOKENS))
        tok.pre_tokenizer = pre
    steps = [decoders.Replace("▁", " ")]
    if byte_fallback:
        steps.append(decoders.ByteFallback())
    steps += [decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    tok.decoder = decoders.Sequence(steps)
    if add_bos:
        bos = SPECIAL_TOKENS[1]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, 1)]
        )
    return _wrap(tok)


def _merges_of(tok: Tokenizer) -> list[tuple[str, str]]:
    """The merges of a trained BPE model, in rank order."""
    merges = json.loads(tok.to_str())["model"]["merges"]
    # tokenizers >= 0.20 stores pairs as lists, older versions as "a b" strings.
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in merges]
