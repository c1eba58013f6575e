"""What a vocabulary map needs to know about one tokenizer: every token's string and
canonical bytes, its scheme and its special tokens (:func:`_inspect`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerBase

from .schemes import _BYTE_TOKEN, _byte_level_translation, _detect_scheme

_SPECIAL_ROLES: tuple[str, ...] = ("eos", "bos", "pad", "unk")  # priority order

TokenizerLike = Any  # transformers.PreTrainedTokenizerBase | tokenizers.Tokenizer


@dataclass
class _VocabInfo:
    """What the map needs to know about one tokenizer.

    ``strings[i]`` / ``canon[i]`` are the token string and canonical bytes of
    id ``i`` (``None`` for holes, special tokens, and tokens that are not
    well-formed in their scheme), for ``i < size``.
    """

    size: int
    scheme: str  # "byte_level" | "metaspace" | "plain"
    marker: str
    strings: list[Optional[str]]
    canon: list[Optional[bytes]]
    roles: dict[str, int]
    specials: dict[int, str]
    unk_id: Optional[int]
    is_byte_token: list[bool] = field(default_factory=list)
    backend: Any = None  # tokenizers.Tokenizer, when there is one
    hf: Any = None  # the transformers tokenizer, when there is one


def _backend_of(tok: TokenizerLike) -> Any:
    if isinstance(tok, Tokenizer):
        return tok
    return getattr(tok, "backend_tokenizer", None)


def _check_tokenizer(tok: Any, name: str) -> None:
    if not isinstance(tok, (Tokenizer, PreTrainedTokenizerBase)):
        raise TypeError(
            f"{name} must be a transformers tokenizer (PreTrainedTokenizerBase) or a "
            f"tokenizers.Tokenizer, got {type(tok).__module__}.{type(tok).__qualname__}"
        )


def _special_tokens(hf: Any, added: dict, size: int) -> tuple[dict[int, str], dict[str, int]]:
    """``(specials, roles)``: special id -> its content, and role (eos, bos, pad, unk) -> id; a bare
    ``tokenizers.Tokenizer`` (``hf`` None) knows its special added tokens but no roles."""
    specials: dict[int, str] = {i: a.content for i, a in added.items() if a.special}
    roles: dict[str, int] = {}
    if hf is not None:
        for i in getattr(hf, "all_special_ids", []) or []:
            specials.setdefault(i, hf.convert_ids_to_tokens(i))
        for role in _SPECIAL_ROLES:
            i = getattr(hf, f"{role}_token_id", None)
            if isinstance(i, int) and 0 <= i < size:
                roles[role] = i
    return specials, roles


def _canonical_forms(strings: list[Optional[str]], scheme: str, marker: str,
                     byte_fallback: bool) -> tuple[list[Optional[bytes]], list[bool]]:
    """``(canon, is_byte)`` per id: the raw bytes each token string stands for in ``scheme``
    (``None`` for holes and strings not well-formed in it), and whether it is a byte-fallback
    token ``'<0xNN>'``."""
    size = len(strings)
    canon: list[Optional[bytes]] = [None] * size
    is_byte: list[bool] = [False] * size
    if scheme == "byte_level":
        trans = _byte_level_translation()
        for i, t in enumerate(strings):
            if t is None:
                continue
            try:
                canon[i] = t.translate(trans).encode("latin-1")
            except UnicodeEncodeError:  # not spelled in the byte alphabet
                pass
    else:
        for i, t in enumerate(strings):
            if t is None:
                continue
            if byte_fallback and len(t) == 6:
                m = _BYTE_TOKEN.fullmatch(t)
                if m is not None:
                    canon[i] = bytes((int(m.group(1), 16),))
                    is_byte[i] = True
                    continue
            text = t.replace(marker, " ") if marker else t
            canon[i] = text.encode("utf-8", errors="surrogatepass")
    return canon, is_byte


def _inspect(tok: TokenizerLike) -> _VocabInfo:
    """The :class:`_VocabInfo` of ``tok`` (a transformers tokenizer or a ``tokenizers.Tokenizer``)."""
    backend = _backend_of(tok)
    hf = None if isinstance(tok, Tokenizer) else tok
    if hf is not None:
        size = len(hf)
        vocab = hf.get_vocab()
        added = dict(getattr(hf, "added_tokens_decoder", {}) or {})
    else:
        size = backend.get_vocab_size(with_added_tokens=True)
        vocab = backend.get_vocab(with_added_tokens=True)
        added = backend.get_added_tokens_decoder()

    specials, roles = _special_tokens(hf, added, size)
    non_special_added = {i: a.content for i, a in added.items() if not a.special}

    scheme, marker = _detect_scheme(backend, vocab)
    model = getattr(backend, "model", None)
    byte_fallback = bool(getattr(model, "byte_fallback", False)) or all(
        f"<0x{b:02X}>" in vocab for b in range(256)
    )

    strings: list[Optional[str]] = [None] * size
    for t, i in vocab.items():
        if 0 <= i < size:
            strings[i] = t

    canon, is_byte = _canonical_forms(strings, scheme, marker, byte_fallback)
    for i, content in non_special_added.items():
        if 0 <= i < size:
            canon[i] = content.encode("utf-8", errors="surrogatepass")
            is_byte[i] = False
    for i in specials:
        if 0 <= i < size:
            canon[i] = None

    unk = roles.get("unk")
    if unk is None and model is not None:
        unk_tok = getattr(model, "unk_token", None)
        if unk_tok is not None:
            unk = vocab.get(unk_tok)
    return _VocabInfo(
        size=size, scheme=scheme, marker=marker, strings=strings, canon=canon,
        roles=roles, specials=specials, unk_id=unk, is_byte_token=is_byte,
        backend=backend, hf=hf,
    )


def _size(tok: TokenizerLike) -> int:
    if isinstance(tok, Tokenizer):
        return tok.get_vocab_size(with_added_tokens=True)
    return len(tok)
