"""Cross-tokenizer vocabulary maps ``m : V_b -> V_i or -1`` (DESIGN.md section 1).

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
"""

from __future__ import annotations

import json
import re
import weakref
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterable, Literal, Optional, Sequence

import torch

__all__ = ["build_vocab_map", "coverage", "clear_cache", "Fallback"]

Fallback = Literal["none", "first_subtoken"]
_FALLBACKS: tuple[str, ...] = ("none", "first_subtoken")

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_METASPACE = "\u2581"  # '▁'
_SPECIAL_ROLES: tuple[str, ...] = ("eos", "bos", "pad", "unk")  # priority order

TokenizerLike = Any  # transformers.PreTrainedTokenizerBase | tokenizers.Tokenizer


@lru_cache(maxsize=None)
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (byte-level BPE alphabet)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@lru_cache(maxsize=None)
def _byte_level_translation() -> dict[int, str]:
    """``str.translate`` table: byte-level char -> chr(byte), anything else of
    the latin-1 range -> a char latin-1 cannot encode (so it is rejected)."""
    table: dict[int, str] = {ord(c): chr(b) for b, c in _bytes_to_unicode().items()}
    for cp in range(256):
        table.setdefault(cp, "\uffff")
    return table


# --------------------------------------------------------------------------- #
# Tokenizer inspection
# --------------------------------------------------------------------------- #


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
    from tokenizers import Tokenizer

    if isinstance(tok, Tokenizer):
        return tok
    return getattr(tok, "backend_tokenizer", None)


def _check_tokenizer(tok: Any, name: str) -> None:
    from tokenizers import Tokenizer

    try:
        from transformers import PreTrainedTokenizerBase
    except ImportError:  # pragma: no cover - transformers is a dependency
        PreTrainedTokenizerBase = ()  # type: ignore[assignment]
    if not isinstance(tok, (Tokenizer, PreTrainedTokenizerBase)):
        raise TypeError(
            f"{name} must be a transformers tokenizer (PreTrainedTokenizerBase) or a "
            f"tokenizers.Tokenizer, got {type(tok).__module__}.{type(tok).__qualname__}"
        )


def _walk(node: Any) -> Iterable[dict]:
    """Every JSON object inside a serialized tokenizer component."""
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def _detect_scheme(backend: Any, vocab: dict[str, int]) -> tuple[str, str]:
    """``(scheme, marker)`` from the pipeline components, else by probing the vocab."""
    if backend is not None:
        nodes: list[dict] = []
        for part in ("normalizer", "pre_tokenizer", "decoder"):
            comp = getattr(backend, part, None)
            if comp is not None:
                nodes.extend(_walk(json.loads(comp.__getstate__())))
        for n in nodes:
            if n.get("type") == "ByteLevel":
                return "byte_level", "Ġ"
        for n in nodes:
            if n.get("type") == "Metaspace":
                return "metaspace", n.get("replacement", _METASPACE)
            if n.get("type") == "Replace":
                # Llama's normalizer Replace(" ", "▁") or decoder Replace("▁", " ").
                pat, content = (n.get("pattern") or {}).get("String"), n.get("content")
                if pat == " " and content and content != " ":
                    return "metaspace", content
                if content == " " and pat and pat != " ":
                    return "metaspace", pat
    # Probe: which marker starts words? Only the token start counts, so a
    # marker inside a token (literal text) does not tip the balance.
    n_meta = sum(1 for t in vocab if t.startswith(_METASPACE))
    n_g = sum(1 for t in vocab if t.startswith("Ġ"))
    if n_meta > n_g:
        return "metaspace", _METASPACE
    table = set(_bytes_to_unicode().values())
    if n_g > 0 and sum(1 for t in vocab if len(t) == 1 and t in table) >= 200:
        return "byte_level", "Ġ"
    return "plain", ""


def _inspect(tok: TokenizerLike) -> _VocabInfo:
    from tokenizers import Tokenizer

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

    specials: dict[int, str] = {i: a.content for i, a in added.items() if a.special}
    roles: dict[str, int] = {}
    if hf is not None:
        for i in getattr(hf, "all_special_ids", []) or []:
            specials.setdefault(i, hf.convert_ids_to_tokens(i))
        for role in _SPECIAL_ROLES:
            i = getattr(hf, f"{role}_token_id", None)
            if isinstance(i, int) and 0 <= i < size:
                roles[role] = i
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


# --------------------------------------------------------------------------- #
# The map
# --------------------------------------------------------------------------- #


def _guide_index(g: _VocabInfo) -> dict[bytes, int]:
    """canonical bytes -> guide id: regular tokens before byte / added tokens,
    lowest id first (what the guide itself would most plausibly emit)."""
    index: dict[bytes, int] = {}
    later: list[tuple[bytes, int]] = []
    for i, c in enumerate(g.canon):
        if c is None or not c:
            continue
        if g.is_byte_token[i]:
            later.append((c, i))
        else:
            index.setdefault(c, i)
    for c, i in later:
        index.setdefault(c, i)
    return index


def _map_specials(b: _VocabInfo, g: _VocabInfo, out: list[int]) -> None:
    for role in _SPECIAL_ROLES:
        bi, gi = b.roles.get(role), g.roles.get(role)
        if bi is not None and gi is not None and out[bi] == -1:
            out[bi] = gi
    by_content: dict[str, int] = {}
    for i, content in sorted(g.specials.items()):
        by_content.setdefault(content, i)
    for i, content in b.specials.items():
        if 0 <= i < b.size and out[i] == -1:
            out[i] = by_content.get(content, -1)


def _spell(g: _VocabInfo, text: str) -> str:
    """``text`` spelled in the guide's token alphabet (input of ``model.tokenize``)."""
    if g.scheme == "byte_level":
        table = _bytes_to_unicode()
        return "".join(table[b] for b in text.encode("utf-8"))
    if g.scheme == "metaspace":
        return text.replace(" ", g.marker)
    return text


def _fallback_text(data: bytes) -> Optional[str]:
    """The text a base token's bytes start with: all of it when valid UTF-8,
    else the longest valid prefix; ``None`` when even that is empty."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        return data[: e.start].decode("utf-8") if e.start > 0 else None


def _first_subtokens(
    b: _VocabInfo, g: _VocabInfo, g_index: dict[bytes, int], out: list[int]
) -> None:
    """Fill the ``-1`` entries of ``out`` (non-special, well-formed base tokens)
    with the first id of the guide's encoding of their text."""
    missing = [i for i, c in enumerate(b.canon) if c and out[i] == -1]
    if not missing:
        return
    todo: list[tuple[int, str]] = []
    for i in missing:
        text = _fallback_text(b.canon[i])  # type: ignore[arg-type]
        if text is None:
            # Starts inside a UTF-8 character: the guide (byte fallback or byte
            # level) spells it from its first raw byte.
            out[i] = g_index.get(b.canon[i][:1], -1)  # type: ignore[index]
        else:
            todo.append((i, text))
    if not todo:
        return
    texts = [t for _, t in todo]

    if g.backend is not None:
        encs = g.backend.encode_batch(texts, add_special_tokens=False)
        primary: list[list[int]] = [e.ids for e in encs]
    else:
        primary = [g.hf.encode(t, add_special_tokens=False) for t in texts]
    model = getattr(g.backend, "model", None)

    g_canon = g.canon

    def spelled(ids: Sequence[int]) -> Optional[bytes]:
        try:  # a special or unknown id (None) cannot spell text
            return b"".join([g_canon[j] for j in ids])  # type: ignore[misc]
        except (TypeError, IndexError):
            return None

    for (i, text), ids in zip(todo, primary):
        want = text.encode("utf-8")
        candidates = [ids]
        if spelled(ids) != want and model is not None:
            # A metaspace guide prepends '▁' to text that starts without a
            # space; its model alone, on the text already in its alphabet,
            # encodes the text as written.
            candidates.insert(0, [t.id for t in model.tokenize(_spell(g, text))])
        chosen = -1
        for cand in candidates:
            if cand and spelled(cand) == want:
                chosen = cand[0]
                break
        if chosen == -1:
            # Nothing reproduces the text (unknown characters): accept a first
            # token only if it is a prefix of the text, i.e. still "its" subtoken.
            for cand in candidates:
                first = g.canon[cand[0]] if cand and 0 <= cand[0] < g.size else None
                if first and want.startswith(first):
                    chosen = cand[0]
                    break
        # The guide's unk never qualifies: as a special token it spells no text.
        out[i] = chosen


def _compute_map(b: _VocabInfo, g: _VocabInfo, fallback: str) -> torch.Tensor:
    out = [-1] * b.size
    g_index = _guide_index(g)
    g_by_string: dict[str, int] = {}
    for j, s in enumerate(g.strings):
        if s is not None and g.canon[j] is not None:
            g_by_string.setdefault(s, j)
    g_canon = g.canon
    for i, c in enumerate(b.canon):
        if not c:
            continue
        j = g_by_string.get(b.strings[i])  # type: ignore[arg-type]
        if j is not None and g_canon[j] == c:
            out[i] = j
        else:
            out[i] = g_index.get(c, -1)
    _map_specials(b, g, out)
    if fallback == "first_subtoken":
        _first_subtokens(b, g, g_index, out)
    return torch.tensor(out, dtype=torch.int32)


# Cache: (id(base), id(guide), fallback) -> (weakref(base), weakref(guide),
# (len(base), len(guide)), map). Ids alone could be reused after garbage
# collection, so the weakrefs must still point at the same objects; the sizes
# catch tokens added since.
_CACHE: dict[tuple[int, int, str], tuple[Any, Any, tuple[int, int], torch.Tensor]] = {}


def clear_cache() -> None:
    """Forget every cached map (e.g. after editing a tokenizer's vocabulary in place)."""
    _CACHE.clear()


def _size(tok: TokenizerLike) -> int:
    from tokenizers import Tokenizer

    if isinstance(tok, Tokenizer):
        return tok.get_vocab_size(with_added_tokens=True)
    return len(tok)


def build_vocab_map(
    base_tokenizer: TokenizerLike,
    guide_tokenizer: TokenizerLike,
    *,
    fallback: Fallback = "none",
) -> torch.Tensor:
    """The vocabulary map from ``base_tokenizer`` ids to ``guide_tokenizer`` ids.

    Args:
        base_tokenizer: tokenizer of the base model (a transformers tokenizer
            or a ``tokenizers.Tokenizer``); its ids index the map, added
            tokens included (``len(base_tokenizer)`` entries).
        guide_tokenizer: tokenizer of the guide whose ids the map yields.
            A bare ``tokenizers.Tokenizer`` knows no bos/eos roles, so its
            special tokens match by name only.
        fallback: ``"none"``: a base token with no single guide token of the
            same text maps to ``-1``. ``"first_subtoken"``: it maps to the
            first token of the guide's encoding of its text (see the module
            docstring for what that approximates).

    Returns:
        int32 CPU tensor ``[len(base_tokenizer)]``; entry ``v`` is the guide id
        for base id ``v`` or ``-1``. Cached per tokenizer pair and fallback:
        a repeated call returns the same tensor object, so do not modify it in
        place (``.clone()`` first).

    Raises:
        ValueError: ``fallback`` is not one of ``"none"``, ``"first_subtoken"``.
        TypeError: either tokenizer is not a tokenizer.
    """
    if fallback not in _FALLBACKS:
        raise ValueError(f"fallback must be one of {_FALLBACKS}, got {fallback!r}")
    _check_tokenizer(base_tokenizer, "base_tokenizer")
    _check_tokenizer(guide_tokenizer, "guide_tokenizer")

    key = (id(base_tokenizer), id(guide_tokenizer), fallback)
    sizes = (_size(base_tokenizer), _size(guide_tokenizer))
    hit = _CACHE.get(key)
    if hit is not None:
        bref, gref, hit_sizes, vmap = hit
        if bref() is base_tokenizer and gref() is guide_tokenizer and hit_sizes == sizes:
            return vmap
    vmap = _compute_map(_inspect(base_tokenizer), _inspect(guide_tokenizer), fallback)
    try:
        # Drop the entry once either tokenizer is gone, so the cache keeps no
        # dead maps around and a reused id cannot hit.
        def drop(ref: "weakref.ref[Any]", key: tuple[int, int, str] = key) -> None:
            entry = _CACHE.get(key)
            if entry is not None and (entry[0] is ref or entry[1] is ref):
                del _CACHE[key]

        _CACHE[key] = (weakref.ref(base_tokenizer, drop), weakref.ref(guide_tokenizer, drop),
                       sizes, vmap)
    except TypeError:  # not weak-referenceable: compute every time
        pass
    return vmap


def coverage(vocab_map: torch.Tensor) -> float:
    """Fraction of mapped entries (``!= -1``) of a map ``[V_b]``; 1.0 when empty."""
    if not isinstance(vocab_map, torch.Tensor):
        raise TypeError(f"vocab_map must be a torch.Tensor, got {type(vocab_map).__name__}")
    if vocab_map.numel() == 0:
        return 1.0
    return float((vocab_map != -1).sum().item()) / vocab_map.numel()
