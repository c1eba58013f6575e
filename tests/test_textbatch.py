"""mogen.decoding.textbatch.read_texts: many copies' text steps with one tokenizer call each way give exactly what
IncrementalDetokenizer.push and GuideTokenContext.edit give one copy at a time, on real tokenizer pairs and odd
base token streams (byte tokens, special and added tokens, partial characters)."""

from __future__ import annotations

import random

import pytest

from mogen.decoding import textbatch
from mogen.decoding.retokenize import NO_EDIT, GuideTokenContext, IncrementalDetokenizer
from real_pairs import PROMPTS, odd_ids, prompt_rows
from real_tokenizers import real_tokenizer

PAIRS = [("llama-spm", "qwen2"), ("phi-3", "gpt-2"), ("gpt-2", "phi-3"), ("starcoder", "falcon")]
K = 6  # copies per row, as a fork makes them


def _state(det: IncrementalDetokenizer, ctx: GuideTokenContext) -> tuple:
    return (list(det._ids), det._prefix, det._read, ctx.text, ctx.ids, list(ctx._starts), ctx.last_new,
            ctx.full_reencodes)


def _check_pair(base_name: str, guide_name: str, mode=None, steps: int = 12) -> int:
    """Rows follow random streams; each step every row forks ``K`` copies that read a candidate each, through
    read_texts and one by one; both must agree in result and state. Returns how many copies released text."""
    bt, gt = real_tokenizer(base_name), real_tokenizer(guide_name)
    rng = random.Random(3)
    odd = odd_ids(base_name)
    text_ids = [i for r in prompt_rows(bt, range(20)) for i in r]
    read = 0
    for prompt in prompt_rows(bt, PROMPTS):
        det = IncrementalDetokenizer(bt, prompt)
        ctx = GuideTokenContext(gt, det.prompt_text, mode=mode)
        for _ in range(steps):
            cands = [rng.choice([rng.randrange(len(bt)), rng.choice(odd), rng.choice(text_ids)]) for _ in range(K)]
            dets, ctxs = [det.clone() for _ in cands], [ctx.clone() for _ in cands]
            got = textbatch.read_texts(dets, ctxs, cands)
            for j, v in enumerate(cands):
                d, c = det.clone(), ctx.clone()
                edit = d.push(v)
                want = None if edit == NO_EDIT else c.edit(*edit)
                assert got[j] == want, (j, v)
                assert _state(dets[j], ctxs[j]) == _state(d, c)
                read += want is not None
            det, ctx = dets[0], ctxs[0]  # the row goes on with its first candidate
    return read


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{p[0]}->{p[1]}")
def test_read_texts_equals_one_copy_at_a_time(pair):
    assert _check_pair(*pair) > 100


def test_read_texts_slow_decode_and_full_mode(monkeypatch):
    """The per-run decode and the batched tokenizer call (no plain fast backend), with contexts that re-encode
    everything."""
    monkeypatch.setattr(textbatch, "_plain_fast_decode", lambda tokenizer: None)
    monkeypatch.setattr(textbatch, "_plain_fast_encode", lambda tokenizer: None)
    assert _check_pair("llama-spm", "gpt-2", mode="full", steps=6) > 50


def test_many_helpers_on_empty_input():
    tok = real_tokenizer("gpt-2")
    assert textbatch.decode_many(tok, []) == [] and textbatch.encode_many(tok, [], True) == []
    assert textbatch.read_texts([], [], []) == []
