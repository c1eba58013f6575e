"""How a vocabulary spells bytes: the GPT-2 byte-level alphabet, metaspace markers,
byte-fallback tokens, and which of these a tokenizer uses (see :mod:`mogen.vocab`)."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any, Iterable

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_METASPACE = "\u2581"  # '▁'


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
