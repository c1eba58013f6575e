"""The ``fallback="first_subtoken"`` approximation: a base token with no single guide
token of the same text maps to the first token of the guide's encoding of its text."""

from __future__ import annotations

from typing import Optional, Sequence

from .inspection import _VocabInfo
from .schemes import _bytes_to_unicode


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
    model = getattr(g.backend, "model", None)
    for (i, text), ids in zip(todo, _encode(g, [t for _, t in todo])):
        want = text.encode("utf-8")
        candidates = [ids]
        if _spelled(g, ids) != want and model is not None:
            # A metaspace guide prepends '▁' to text that starts without a
            # space; its model alone, on the text already in its alphabet,
            # encodes the text as written.
            candidates.insert(0, [t.id for t in model.tokenize(_spell(g, text))])
        out[i] = _first_of(candidates, want, g)


def _encode(g: _VocabInfo, texts: list[str]) -> list[list[int]]:
    """The guide's own encodings of ``texts`` (no special tokens added)."""
    if g.backend is not None:
        return [e.ids for e in g.backend.encode_batch(texts, add_special_tokens=False)]
    return [g.hf.encode(t, add_special_tokens=False) for t in texts]


def _spelled(g: _VocabInfo, ids: Sequence[int]) -> Optional[bytes]:
    """The bytes guide ids ``ids`` spell together, or None."""
    g_canon = g.canon
    try:  # a special or unknown id (None) cannot spell text
        return b"".join([g_canon[j] for j in ids])  # type: ignore[misc]
    except (TypeError, IndexError):
        return None


def _first_of(candidates: list[list[int]], want: bytes, g: _VocabInfo) -> int:
    """The first id of the first candidate encoding that spells ``want`` exactly, else of the first
    whose first token is a prefix of ``want``, else ``-1``."""
    for cand in candidates:
        if cand and _spelled(g, cand) == want:
            return cand[0]
    # Nothing reproduces the text (unknown characters): accept a first
    # token only if it is a prefix of the text, i.e. still "its" subtoken.
    for cand in candidates:
        first = g.canon[cand[0]] if cand and 0 <= cand[0] < g.size else None
        if first and want.startswith(first):
            return cand[0]
    # The guide's unk never qualifies: as a special token it spells no text.
    return -1
