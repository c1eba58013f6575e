"""Base ids to text, one token at a time: :class:`IncrementalDetokenizer` (step 1 of
:mod:`mogen.decoding.retokenize`, whose docstring describes both steps and what they guarantee)
and the :class:`TextEdit` each token makes to a row's text."""

from __future__ import annotations

import re
import weakref
from typing import Any, NamedTuple, Sequence

__all__ = ["IncrementalDetokenizer", "TextEdit", "NO_EDIT", "compose", "token_kinds"]

_REPLACEMENT = "\ufffd"


class TextEdit(NamedTuple):
    """What one base token did to a row's text: take back the last ``back`` characters, then append ``text``.

    ``back`` is 0 except where a ``ByteFallback`` decoder rewrites a run of byte tokens
    (:mod:`mogen.decoding.retokenize`'s docstring).
    """

    back: int
    text: str


NO_EDIT = TextEdit(0, "")


def compose(first: TextEdit, then: TextEdit) -> TextEdit:
    """One edit doing ``first`` and then ``then``."""
    if then.back <= len(first.text):
        return TextEdit(first.back, first.text[: len(first.text) - then.back] + then.text)
    return TextEdit(first.back + then.back - len(first.text), then.text)


_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


class _TokenKinds:
    """Per tokenizer: its byte tokens (``'<0xNN>'``, which a ``ByteFallback`` decoder joins into runs), the ids
    ``skip_special_tokens`` drops (no text: they do not break a run) and its added tokens (which split text
    into separately normalized pieces)."""

    def __init__(self, tokenizer: Any) -> None:
        added = dict(getattr(tokenizer, "added_tokens_decoder", {}) or {})
        self.added = frozenset(int(i) for i in added)
        self.textless = frozenset(int(i) for i in getattr(tokenizer, "all_special_ids", []) or []) | frozenset(
            int(i) for i, a in added.items() if getattr(a, "special", False))
        byte_ids: set[int] = set()
        try:
            vocab = tokenizer.get_vocab()
        except Exception:  # noqa: BLE001 - a tokenizer without a vocabulary has no byte tokens to join
            vocab = {}
        if all(f"<0x{b:02X}>" in vocab for b in range(256)):
            byte_ids = {int(i) for t, i in vocab.items() if len(t) == 6 and _BYTE_TOKEN.fullmatch(t)}
        self.byte = frozenset(byte_ids - self.added)


_KINDS_CACHE: "weakref.WeakKeyDictionary[Any, _TokenKinds]" = weakref.WeakKeyDictionary()


def token_kinds(tokenizer: Any) -> _TokenKinds:
    """The token kinds of ``tokenizer``, computed once per tokenizer (shared by every detokenizer and the text
    candidates, which must agree on what is special)."""
    try:
        return _KINDS_CACHE[tokenizer]
    except (KeyError, TypeError):
        pass
    kinds = _TokenKinds(tokenizer)
    try:
        _KINDS_CACHE[tokenizer] = kinds
    except TypeError:  # pragma: no cover - not weak-referenceable
        pass
    return kinds


def _run_anchor(ids: Sequence[int], pos: int, kinds: _TokenKinds) -> int:
    """The largest ``s <= pos`` such that decoding ``ids[s:]`` sees whole every byte-token run that reaches into
    ``ids[pos:]``: ``ids[s]`` has text and is not a byte token, or ``s`` is 0."""
    if not kinds.byte:
        return pos
    s = pos
    while s > 0 and (s >= len(ids) or ids[s] in kinds.byte or ids[s] in kinds.textless):
        s -= 1
    return s


class IncrementalDetokenizer:
    """The text of one row's new base tokens, released when it is complete.

    Decodes only ids from ``prefix`` on (a few tokens of left context, so
    tokenizers that drop a leading space at the start of a decode still get
    spaces right) and returns the part past what was already released. Text
    ending in U+FFFD is held back until the next token completes the
    character; an invalid byte sequence is released as U+FFFD once any
    following token decodes. A run of ``ByteFallback`` byte tokens stays in
    the decoded tail until a token with text ends it, so when a later byte
    makes the run invalid the text it already released is taken back
    (:class:`TextEdit`): the released text is always ``decode(ids)``.

    Args:
        tokenizer: the base model's tokenizer.
        prompt_ids: the row's prompt ids (without padding). A prompt whose
            last tokens end inside a character keeps them pending.
        context: ids of left context kept for decoding.

    Attributes:
        prompt_text: the prompt's complete text (what the guide starts from).
    """

    def __init__(self, tokenizer: Any, prompt_ids: Sequence[int], context: int = 4) -> None:
        self._tok = tokenizer
        self._kinds = token_kinds(tokenizer)
        ids = [int(i) for i in prompt_ids]
        # A UTF-8 character spans at most 4 byte tokens: look that far back for
        # the end of the last complete character.
        complete = len(ids)
        text = self._decode(ids)
        for cut in range(len(ids), max(len(ids) - 4, 0) - 1, -1):
            candidate = text if cut == len(ids) else self._decode(ids[:cut])
            if not candidate.endswith(_REPLACEMENT):
                complete, text = cut, candidate
                break
        self.prompt_text = text
        start = _run_anchor(ids, max(complete - max(context, 0), 0), self._kinds)
        self._ids = ids[start:]
        self._prefix = 0
        self._read = complete - start

    def clone(self) -> "IncrementalDetokenizer":
        """An independent copy (the tokenizer is shared)."""
        out = object.__new__(type(self))
        out.__dict__.update(self.__dict__)
        out._ids = list(self._ids)
        return out

    def _decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    @property
    def pending(self) -> bool:
        """Whether some pushed ids have not been released as text yet."""
        return self._read < len(self._ids)

    def push(self, token_id: int) -> TextEdit:
        """Append one base token; return what it does to the released text (:data:`NO_EDIT` while held back)."""
        before, after = self.append(token_id)
        return self.release(self._decode(before), self._decode(after))

    def append(self, token_id: int) -> tuple[list[int], list[int]]:
        """First half of :meth:`push`: append the id; returns the two id runs whose texts :meth:`release`
        takes (decoded with ``skip_special_tokens=True``, no clean-up), so that a caller may decode many at once."""
        self._ids.append(int(token_id))
        return self._ids[self._prefix : self._read], self._ids[self._prefix :]

    def release(self, before: str, after: str) -> TextEdit:
        """Second half of :meth:`push`, given the texts of :meth:`append`'s two id runs."""
        if after == before or after.endswith(_REPLACEMENT):
            return NO_EDIT
        # ``after`` extends ``before`` for every ordinary decoder; where it rewrites
        # part of it (a ByteFallback run turned invalid), the rest is taken back.
        common = len(before) if after.startswith(before) else 0
        limit = min(len(before), len(after))
        while common < limit and before[common] == after[common]:
            common += 1
        self._advance()
        return TextEdit(len(before) - common, after[common:])

    def _advance(self) -> None:
        # The next decode starts at the ids just released (context for the
        # decoder), or earlier where a byte-token run began.
        self._prefix = _run_anchor(self._ids, self._read, self._kinds)
        self._read = len(self._ids)
        # Keep the buffer short: nothing before the new prefix is decoded again.
        if self._prefix > 0:
            del self._ids[: self._prefix]
            self._read -= self._prefix
            self._prefix = 0
