"""The vocabulary map itself: exact matches of canonical bytes and special-token roles,
the optional fallback, and the per-tokenizer-pair cache (:func:`build_vocab_map`)."""

from __future__ import annotations

import weakref
from typing import Any, Literal

import torch

from .fallback import _first_subtokens
from .inspection import _SPECIAL_ROLES, TokenizerLike, _check_tokenizer, _inspect, _size, _VocabInfo

Fallback = Literal["none", "first_subtoken"]
_FALLBACKS: tuple[str, ...] = ("none", "first_subtoken")


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
