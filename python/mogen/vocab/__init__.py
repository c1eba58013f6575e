"""Cross-tokenizer vocabulary maps ``m : V_b -> V_i or -1`` (docs/design.md section 1).

A proxy or value guide with its own tokenizer scores the base model's candidate
token ``v`` through ``m(v)``, the guide token that stands for the same text.
:func:`build_vocab_map` builds that map as an int32 tensor ``[len(base)]``.

How tokens are compared
-----------------------
Every token is reduced to a canonical form, the raw bytes it stands for:

- byte-level vocabularies (GPT-2, Qwen): each character is one byte through
  the GPT-2 ``bytes_to_unicode`` table, so ``'Ġthe'`` is ``b" the"``, ``'Ċ'`` is
  ``b"\\n"`` and ``'Ã'`` is the raw byte ``0xC3``;
- metaspace vocabularies (Llama, sentencepiece): ``'▁'`` is a space (the
  decoder turns every ``'▁'`` into one, so ``'▁▁'`` is two spaces), and with byte
  fallback ``'<0x0A>'`` is the raw byte ``0x0A``;
- other vocabularies: the token's UTF-8 text as written;
- added (non-special) tokens: their content's UTF-8 bytes.

A base token maps to the guide token with the same canonical bytes: the one
with the very same string if there is one (so identical and same-scheme
tokenizers map token for token), else a regular token before a byte token
(``b" "`` goes to ``'▁'``, not ``'<0x20>'``, as the guide itself would
encode it), lowest id first. Special tokens never match by text: eos, bos,
pad and unk map to their counterparts where both tokenizers have them, other
special tokens to a guide special token with the same content.

Where the approximation lies
----------------------------
The map is exact (same text, one token each side) for every mapped entry of
``fallback="none"``. A base token with no single-token counterpart is ``-1``;
typical cases are words one vocabulary merged and the other did not, and
byte-level tokens holding part of a UTF-8 character (``'æĹ'``, two of the three
bytes of 日), which a metaspace vocabulary can only spell with byte tokens.

``fallback="first_subtoken"`` maps such a token to the first token of the
guide's own encoding of its text, so ``m(v)`` then scores only a prefix of
``v``'s text: the guide's probability of ``" hel"`` stands in for ``" hello"``.
That is the approximation; it tends to overrate rare long tokens whose
prefix is common. The encoding used is one that reproduces the text (a
metaspace guide would otherwise prepend ``'▁'`` to text that starts without a
space); text that is not valid UTF-8 uses its longest valid prefix, or the
guide's token for its first raw byte. Special tokens and tokens whose first
subtoken would be the guide's unk stay ``-1``.

Not handled: WordPiece ``'##'`` continuation marks (compared as literal text).

Modules: :mod:`~mogen.vocab.schemes` (byte-level, metaspace and byte-fallback
spellings; which one a tokenizer uses), :mod:`~mogen.vocab.inspection` (a
tokenizer's tokens as canonical bytes, its special tokens),
:mod:`~mogen.vocab.mapping` (the map, its cache, :func:`coverage`) and
:mod:`~mogen.vocab.fallback` (``fallback="first_subtoken"``).
"""

from __future__ import annotations

# _bytes_to_unicode and _detect_scheme were importable here when vocab was one
# module (tests use them); the imports keep them so.
from .mapping import Fallback, build_vocab_map, clear_cache, coverage
from .schemes import _bytes_to_unicode, _detect_scheme  # noqa: F401

__all__ = ["build_vocab_map", "coverage", "clear_cache", "Fallback"]
