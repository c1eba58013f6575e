"""Many rows' text steps at once: one tokenizer call for the decodes, and one for the encodes, of a step.

A text-scoring fork (:mod:`mogen.decoding.textcandidates`) reads ``B * k``
candidates per step, each through its own copy of a row's
:class:`~mogen.decoding.retokenize.IncrementalDetokenizer` and
:class:`~mogen.decoding.retokenize.GuideTokenContext`. Calling the tokenizer
once per copy costs more in its Python wrapper than in the tokenizer itself,
so :func:`read_texts` splits each copy's step in two: every copy appends its id
and names the id runs it needs decoded, and plans its re-encoding, then one call
decodes all runs (the ``k`` copies of a row share the run before the candidate),
one call encodes all windows, and each copy finishes its step from the results.
The results are those of :meth:`IncrementalDetokenizer.push` and
:meth:`GuideTokenContext.edit` one copy at a time: the same tokenizer, the
same options, on the same ids and texts.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from .retokenize import NO_EDIT, EditPlan, GuideTokenContext, IncrementalDetokenizer, TextEdit

__all__ = ["decode_many", "encode_many", "read_texts"]


def _plain_fast_decode(tokenizer: Any) -> Any:
    """The backend whose ``decode_batch`` gives exactly what ``tokenizer.decode(ids, skip_special_tokens=True,
    clean_up_tokenization_spaces=False)`` gives, or None (a slow tokenizer, or one with its own ``_decode``)."""
    if not getattr(tokenizer, "is_fast", False):
        return None
    try:
        from transformers import PreTrainedTokenizerFast
    except ImportError:  # pragma: no cover - transformers is a dependency
        return None
    own = getattr(type(tokenizer), "_decode", None)
    if own is None or own is not getattr(PreTrainedTokenizerFast, "_decode", None):
        return None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend if hasattr(backend, "decode_batch") else None


def decode_many(tokenizer: Any, runs: Sequence[Sequence[int]]) -> list[str]:
    """``tokenizer.decode(run, skip_special_tokens=True, clean_up_tokenization_spaces=False)`` of each run, in one
    backend call where the tokenizer's decode is the plain fast one."""
    if not runs:
        return []
    backend = _plain_fast_decode(tokenizer)
    if backend is not None:
        return list(backend.decode_batch([list(r) for r in runs], skip_special_tokens=True))
    return [tokenizer.decode(list(r), skip_special_tokens=True, clean_up_tokenization_spaces=False) for r in runs]


def _plain_fast_encode(tokenizer: Any) -> Any:
    """The backend whose ``encode(text, add_special_tokens=False)`` gives exactly the ids and offsets of
    ``tokenizer(text, add_special_tokens=False)``, or None: a fast tokenizer whose backend neither truncates nor
    pads and splits special tokens as the tokenizer says (what the tokenizer's call sets before it encodes)."""
    if not getattr(tokenizer, "is_fast", False):
        return None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "encode"):
        return None
    split = bool(getattr(tokenizer, "split_special_tokens", False))
    if backend.truncation is not None or backend.padding is not None or backend.encode_special_tokens != split:
        return None
    return backend


def encode_many(tokenizer: Any, texts: Sequence[str], offsets: bool) -> list[tuple[list[int], list[int]]]:
    """Per text its ids without special tokens and (``offsets``) each id's start character, as
    :meth:`GuideTokenContext.encode_piece` gives them: the backend's own encoder one text at a time where it gives
    exactly that (no per-call wrapper; its parallel batch encode contends with torch's threads for the cores),
    else one batched tokenizer call."""
    if not texts:
        return []
    backend = _plain_fast_encode(tokenizer)
    if backend is not None:
        encs = [backend.encode(t, add_special_tokens=False) for t in texts]
        return [(list(e.ids), [int(s) for s, _ in e.offsets] if offsets else []) for e in encs]
    if not offsets:
        return [(list(ids), []) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    enc = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
    return [(list(ids), [int(s) for s, _ in offs]) for ids, offs in zip(enc["input_ids"], enc["offset_mapping"])]


def _edits(detoks: Sequence[IncrementalDetokenizer], tokens: Sequence[int]) -> list[TextEdit]:
    """``detoks[r].push(tokens[r])`` for every ``r``, with one decode of all distinct id runs."""
    if not detoks:
        return []
    runs = [d.append(t) for d, t in zip(detoks, tokens)]
    index: dict[tuple[int, ...], int] = {}
    for before, after in runs:
        index.setdefault(tuple(before), len(index))
        index.setdefault(tuple(after), len(index))
    texts = decode_many(detoks[0]._tok, list(index))
    return [d.release(texts[index[tuple(b)]], texts[index[tuple(a)]]) for d, (b, a) in zip(detoks, runs)]


def read_texts(detoks: Sequence[IncrementalDetokenizer], contexts: Sequence[GuideTokenContext],
               tokens: Sequence[int]) -> list[Optional[tuple[int, list[int]]]]:
    """Row ``r`` reads base token ``tokens[r]``: per row None (no text released: :data:`NO_EDIT`), else its
    ``(retract, feed)`` of :meth:`GuideTokenContext.edit`. Rows share one tokenizer per side (base, guide)."""
    edits = _edits(detoks, tokens)
    plans: list[Optional[EditPlan]] = [None if e == NO_EDIT else c.begin_edit(*e) for c, e in zip(contexts, edits)]
    todo = [r for r, p in enumerate(plans) if p is not None]
    out: list[Optional[tuple[int, list[int]]]] = [None if e == NO_EDIT else (0, []) for e in edits]
    for offsets in (True, False):  # the contexts of a group share a mode: one call
        rows = [r for r in todo if (contexts[r].mode != "full") == offsets]
        if rows:
            encoded = encode_many(contexts[rows[0]]._tok, [plans[r].piece for r in rows], offsets)
            for r, enc in zip(rows, encoded):
                out[r] = contexts[r].finish_edit(plans[r], enc)
    return out
