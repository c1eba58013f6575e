"""Following the base model's text with another tokenizer.

A guide whose tokenizer differs from the base's cannot take the base's token
ids. After every base step the new *text* goes to the guide instead:

1. :class:`IncrementalDetokenizer` (:mod:`mogen.decoding.detokenize`) turns one row's new base tokens into text.
   It decodes only a short tail of ids and holds text back while it ends in an
   incomplete UTF-8 character (a byte-level token can carry one byte of "日"),
   so the guide never sees a replacement character that the next token fixes.
   The released text is always ``decode(ids)`` of the row's ids up to that point
   (``skip_special_tokens=True``, no clean-up). One decoder can change text it
   already gave: sentencepiece-style ``ByteFallback`` decodes a run of byte
   tokens (``'<0x0A>'``) as one UTF-8 string, and as ``U+FFFD`` once per byte
   when the run is not valid UTF-8, so ``<0x0A>`` reads ``"\\n"`` until an
   invalid byte token follows it and both read ``"\\ufffd\\ufffd"``. The
   detokenizer keeps such a run in view and then takes the old text back
   (:class:`TextEdit`).
2. :class:`GuideTokenContext` keeps the guide ids of one row equal to the guide
   tokenizer's encoding of the full text. New text can change the last guide
   tokens ("▁ca" + "t" is "▁cat"), so it re-encodes a short look-behind window
   that starts at the last word boundary, keeps the common prefix with what the
   guide already holds, and reports how many ids to retract and which to feed.

Where the look-behind is exact
------------------------------
The window starts at a guide token that begins with a single space after a
non-space character. Tokenizers whose pre-tokenizer always splits there (GPT-2
style byte-level BPE, Llama-3 style regexes, metaspace with ``split=True``), or
whose merges never join across one (Llama-2's ``Metaspace(split=False)``: no
token holds ``'▁'`` after another character), give the same ids for
``text[:p]`` and ``text[p:]`` as for ``text``, so the guide's ids equal its
encoding of the full text after every step. :func:`window_mode` checks this
once per tokenizer on probe strings; a tokenizer that fails falls back to
re-encoding the whole text each step (still exact, slower), and so does any
step whose last word boundary lies more than ``max_lookbehind`` tokens back.
Added tokens (``<|end|>``, ``</s>``, ...) split the text into pieces that are
normalized and pre-tokenized one by one, so the window never starts right
after one; and a tokenizer that prepends ``'▁'`` to every piece (``"drop"``, a
``Prepend`` normalizer as in Phi-3's tokenizer.json) re-encodes everything when
an added token starts right after the window's space, since that space is then
a piece of its own. tests/test_real_pairs.py checks all this on seven real
tokenizers.
What the guide sees is ``bos-like prefix + encode(text)``; end-of-sequence
tokens its tokenizer appends are not used.

Where the approximation lies
----------------------------
Not in the ids the guide reads but in what its scores mean for the base:
``m(v)`` scores a base token ``v`` by the guide token with the same text (see
:mod:`mogen.vocab`); base tokens that are not a single guide token get the
``unmapped`` value (0: no opinion). The guide's next-token distribution is
conditioned on the canonical guide encoding of the text, so when ``v`` would
extend the guide's last token (guide has "▁ca", ``v`` = "t") the guide scores "t"
as a separate token. And while a row's base text ends inside a multi-byte
character the guide has not seen that partial character: for that step the
row's guide term is 0. Special tokens the base emits (other than eos, which
ends the row) have no text, so the guide never sees them; the step after one
also gets no guide term. Hence the cross-tokenizer path reproduces the
shared-tokenizer path exactly only when every base id sequence is its text's
canonical encoding (e.g. one token per character); with BPE the base may spell
a word in pieces that the guide, reading text, sees merged.
"""

from __future__ import annotations

import weakref
from typing import Any, NamedTuple, Optional

from .detokenize import (NO_EDIT, IncrementalDetokenizer, TextEdit, compose,  # noqa: F401 - re-exported
                         token_kinds)

__all__ = ["IncrementalDetokenizer", "GuideTokenContext", "TextEdit", "compose", "window_mode", "special_prefix"]

# Probe strings for window_mode: words, punctuation, digits, newlines, runs of
# spaces and multi-byte characters, so every usual pre-tokenizer rule shows up.
_PROBES = (
    "The quick brown fox, it's said, jumps over 12 lazy dogs.",
    "naïve café owners in 日本 say \"déjà vu\" 🙂 twice; x = 1+2",
    "Line one ends here.\nLine two  has two  spaces and a tab\there.",
    "e-mail me@example.com at 3.14 pm (yes) or 2024-01-15 #tag",
)


def _is_boundary(text: str, p: int) -> bool:
    """A space after a non-space character: where the window may start."""
    return 0 < p < len(text) and text[p] == " " and not text[p - 1].isspace()


def _encode(tok: Any, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


class EditPlan(NamedTuple):
    """What :meth:`GuideTokenContext.begin_edit` leaves to encode: ``piece``, the text from character ``start``
    on, re-encoded from token ``window`` on (None: the whole text, ``start`` 0)."""

    window: Optional[int]
    start: int
    piece: str


def _encode_offsets(tok: Any, text: str) -> tuple[list[int], list[int]]:
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [int(s) for s, _ in enc["offset_mapping"]]


def _window_ok(tok: Any, text: str, mode: str) -> bool:
    full = _encode(tok, text)
    for p in range(len(text)):
        if not _is_boundary(text, p):
            continue
        tail = text[p:] if mode == "keep" else text[p + 1 :]
        if _encode(tok, text[:p]) + _encode(tok, tail) != full:
            return False
    return True


_MODE_CACHE: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()


def window_mode(tokenizer: Any) -> str:
    """How :class:`GuideTokenContext` may re-encode a window of ``tokenizer``'s text.

    ``"keep"``: a window starting at a boundary space is encoded as is (byte-level
    BPE, metaspace with ``split=True``). ``"drop"``: the boundary space is left out
    because the tokenizer adds it back (sentencepiece-style ``Prepend('▁')``
    normalizers). ``"full"``: neither reproduces the full encoding on the probes
    (or the tokenizer gives no offsets), so the whole text is re-encoded.
    Cached per tokenizer object.
    """
    try:
        return _MODE_CACHE[tokenizer]
    except (KeyError, TypeError):
        pass
    mode = "full"
    if getattr(tokenizer, "is_fast", False):
        for candidate in ("keep", "drop"):
            if all(_window_ok(tokenizer, probe, candidate) for probe in _PROBES):
                mode = candidate
                break
    try:
        _MODE_CACHE[tokenizer] = mode
    except TypeError:  # pragma: no cover - not weak-referenceable
        pass
    return mode


def special_prefix(tokenizer: Any) -> list[int]:
    """The special ids ``tokenizer`` puts before the text (e.g. ``[bos]``), possibly empty."""
    probe = "a"
    with_sp = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    without = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    n = len(without)
    for k in range(len(with_sp) - n + 1):
        if with_sp[k : k + n] == without:
            return with_sp[:k]
    return []


class GuideTokenContext:
    """A guide's token ids for one row's text, updated as text is appended.

    ``ids`` always equals ``prefix + encode(text)`` for the guide tokenizer
    (module docstring: when that is exact). :meth:`extend` says which trailing
    ids became stale and which ids are new, so the guide's KV cache can be
    updated by masking the stale positions and feeding only the new ones.

    Args:
        tokenizer: the guide's tokenizer (fast tokenizers get the look-behind
            window; others are re-encoded in full).
        text: the row's text so far (the decoded prompt).
        max_lookbehind: at most this many guide tokens are re-encoded per
            step; when the last word boundary lies further back the whole text
            is re-encoded instead.
        mode: override :func:`window_mode` (tests).
    """

    def __init__(self, tokenizer: Any, text: str, *, max_lookbehind: int = 32, mode: Optional[str] = None) -> None:
        self._tok = tokenizer
        self.mode = window_mode(tokenizer) if mode is None else mode
        if self.mode not in ("keep", "drop", "full"):
            raise ValueError(f"mode must be 'keep', 'drop' or 'full', got {mode!r}")
        self.max_lookbehind = int(max_lookbehind)
        self._kinds = token_kinds(tokenizer)
        self.prefix: list[int] = special_prefix(tokenizer)
        self.text = text
        if self.mode == "full":
            self._toks, self._starts = _encode(tokenizer, text), []
        else:
            self._toks, self._starts = _encode_offsets(tokenizer, text)
        self.full_reencodes = 0  # steps that fell back to re-encoding everything
        self.last_new = 0  # ids the last edit added or changed: the trailing ids that differ from before it

    def clone(self) -> "GuideTokenContext":
        """An independent copy (the tokenizer is shared; the id lists too: an edit replaces them, never changes
        them in place)."""
        out = object.__new__(type(self))
        out.__dict__.update(self.__dict__)
        return out

    @property
    def ids(self) -> list[int]:
        """``prefix + encode(text)``: what the guide has been fed (minus retracted ids)."""
        return self.prefix + self._toks

    def __len__(self) -> int:
        return len(self.prefix) + len(self._toks)

    def _window_start(self, limit: int) -> Optional[int]:
        """Index of the first token to re-encode, or None for "re-encode everything".

        The window starts at a token that begins at a boundary space at or before character ``limit`` (the
        text before it is unchanged) and does not directly follow an added token.
        """
        if self.mode == "full" or not self._toks:
            return None
        n = len(self._toks)
        lowest = max(1, n - self.max_lookbehind)
        added = self._kinds.added
        for j in range(n - 1, lowest - 1, -1):
            p = self._starts[j]
            if (p <= limit and self._starts[j - 1] < p and _is_boundary(self.text, p)
                    and self._toks[j - 1] not in added):
                return j
        return None

    def extend(self, delta: str) -> tuple[int, list[int]]:
        """Append ``delta`` to the text; same as ``edit(0, delta)``."""
        return self.edit(0, delta)

    def edit(self, back: int, delta: str) -> tuple[int, list[int]]:
        """Take the last ``back`` characters off the text, then append ``delta`` (a :class:`TextEdit`).

        Returns ``(retract, feed)``: drop the last ``retract`` ids (they no
        longer match the text's encoding), then feed ``feed``. ``feed`` is
        non-empty whenever ``retract`` is, so the caller always has fresh
        logits for the last id.
        """
        plan = self.begin_edit(back, delta)
        if plan is None:
            return 0, []
        return self.finish_edit(plan, self.encode_piece(plan.piece))

    def encode_piece(self, piece: str) -> tuple[list[int], list[int]]:
        """The ids of ``piece`` and their start offsets (none in ``"full"`` mode), as :meth:`finish_edit` takes."""
        if self.mode == "full":
            return _encode(self._tok, piece), []
        return _encode_offsets(self._tok, piece)

    def begin_edit(self, back: int, delta: str) -> Optional["EditPlan"]:
        """First half of :meth:`edit`: change the text and say which piece of it to encode (None: no change).

        A caller may encode the pieces of many contexts at once (one tokenizer call) and pass each its
        ``(ids, offsets)`` (:meth:`encode_piece`) to :meth:`finish_edit`.
        """
        if back < 0 or back > len(self.text):
            raise ValueError(f"cannot take back {back} characters of a {len(self.text)}-character text")
        self.last_new = 0
        if not back and not delta:
            return None
        unchanged = len(self.text) - back
        self.text = self.text[:unchanged] + delta
        j = self._window_start(unchanged)
        if j is None:
            return EditPlan(None, 0, self.text)
        p = self._starts[j]
        if self.mode == "keep":
            return EditPlan(j, p, self.text[p:])
        return EditPlan(j, p + 1, self.text[p + 1 :])  # "drop": the tokenizer re-adds the boundary space itself

    def finish_edit(self, plan: "EditPlan", encoded: tuple[list[int], list[int]]) -> tuple[int, list[int]]:
        """Second half of :meth:`edit`: ``encoded`` is ``(ids, offsets)`` of ``plan.piece``; returns
        ``(retract, feed)``."""
        j, new_toks = plan.window, list(encoded[0])
        new_starts = [plan.start + s for s in encoded[1]]
        if j is not None and self.mode == "drop":
            if new_toks and new_toks[0] in self._kinds.added:
                j = None  # the space before an added token is a piece of its own: not re-added
            elif new_starts:
                new_starts[0] = plan.start - 1
        if j is None:
            self.full_reencodes += int(self.mode != "full")
            if plan.window is not None:  # the window turned out not to do: encode everything after all
                new_toks, new_starts = self.encode_piece(self.text)
            j = 0
        old = self._toks[j:]
        common = 0
        limit = min(len(old), len(new_toks))
        while common < limit and old[common] == new_toks[common]:
            common += 1
        keep = j + common
        if keep == len(self._toks) and common == len(new_toks):
            return 0, []
        merged = self._toks[:keep] + new_toks[common:]
        self.last_new = len(merged) - keep
        if self.mode != "full":
            self._starts = self._starts[:keep] + new_starts[common:]
        feed_from = keep
        if feed_from == len(merged):
            # Only retractions: re-feed the last kept id so there are logits after it.
            if feed_from == 0:
                raise RuntimeError(f"the guide tokenizer encodes {self.text!r} to no tokens at all")
            feed_from -= 1
        retract = len(self._toks) - feed_from
        self._toks = merged
        return retract, merged[feed_from:]
