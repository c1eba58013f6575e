"""Cross-tokenizer decoding on real tokenizer pairs (tests/real_pairs.py): the vocabulary map, the text a guide
follows, and mogen.generate / mogen.search with guides that have their own tokenizer, against uncached
references that re-encode the whole text every step.

The models are tiny random Llamas sized to each vocabulary (hidden 16, one layer) whose LM heads are
stretched on odd tokens (byte pieces, special and added tokens, runs of spaces, CJK and emoji), so the
base writes what a text reader finds hardest. The heaviest variants are marked ``slow``
(``-m "not slow"`` skips them).
"""

from __future__ import annotations

import random

import pytest
import torch

import mogen
from mogen.decoding.generation import observe_steps
from mogen.decoding.retokenize import GuideTokenContext, IncrementalDetokenizer, window_mode
from real_pairs import (
    ALL_PAIRS,
    MODEL,
    MORE_PROMPTS,
    PAIRS,
    PROMPTS,
    REPLACEMENT,
    SCHEME,
    decode,
    generate_vs_reference,
    guide_ids,
    odd_ids,
    prompt_rows,
    search_vs_reference,
    token_bytes,
    vocab_report,
)
from real_tokenizers import NAMES, real_tokenizer
from search_reference import reference_beam
from tiny_models import nudge_model, pad_rows, proxy_guide, script_model, tiny_llama

SEARCH_PAIRS = [("gpt-2", "llama-spm"), ("phi-3", "gpt-2"), ("gpt-2", "phi-3"), ("phi-3", "llama-spm")]
SLOW_SEARCH_PAIRS = [("llama-spm", "llama-bpe"), ("starcoder", "falcon")]
SLOW_GENERATE_PAIRS = [("llama-spm", "llama-bpe"), ("phi-3", "gpt-2"), ("starcoder", "falcon"), ("qwen2", "phi-3")]


def _id(pair):
    return f"{pair[0]}->{pair[1]}"


# --------------------------------------------------------------------------- #
# Token bytes and the vocabulary map
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("name", NAMES)
def test_token_bytes_agree_with_the_tokenizers_decoder(name):
    """tests/real_pairs.token_bytes (the reference for the map checks) reads every token as the tokenizer's own
    decoder does: all tokens whose bytes are valid UTF-8, decoded after an anchor token."""
    tok, tb = real_tokenizer(name), token_bytes(name)
    anchor = tok.convert_tokens_to_ids("a")
    ids, want = [], []
    for i, b in enumerate(tb.data):
        try:
            if b is not None:
                want.append("a" + b.decode("utf-8"))
                ids.append(i)
        except UnicodeDecodeError:  # part of a character: no text of its own
            pass
    got = tok.batch_decode([[anchor, i] for i in ids], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    bad = [(i, tok.convert_ids_to_tokens(i), g, w) for i, g, w in zip(ids, got, want) if g != w]
    assert not bad, bad[:5]
    assert len(ids) > 0.97 * len(tok)
    assert sum(k == "byte" for k in tb.kind) == (256 if SCHEME[name] == "metaspace" else 0)


@pytest.mark.parametrize("pair", PAIRS, ids=_id)
def test_vocab_map_joins_only_tokens_with_the_same_bytes(pair):
    """No entry of build_vocab_map joins tokens with different bytes (special tokens only join special tokens),
    and every base token that has a guide token with its bytes is mapped."""
    cov = vocab_report(*pair)
    assert cov.exact_mapped == cov.exact, [real_tokenizer(pair[0]).convert_ids_to_tokens(i)
                                          for i in cov.unmapped_exact[:10]]
    assert cov.mapped == cov.exact_mapped + cov.specials_mapped
    assert cov.mapped > 0.15 * cov.size


@pytest.mark.slow
@pytest.mark.parametrize("pair", [p for p in ALL_PAIRS if p not in PAIRS], ids=_id)
def test_vocab_map_joins_only_tokens_with_the_same_bytes_every_pair(pair):
    test_vocab_map_joins_only_tokens_with_the_same_bytes(pair)


# --------------------------------------------------------------------------- #
# Following the text: detokenizer and look-behind window
# --------------------------------------------------------------------------- #


# What each tokenizer's window may do (mogen.decoding.retokenize.window_mode): "keep" re-encodes from a boundary
# space, "drop" leaves the space out because a Prepend('▁') normalizer adds it back (Phi-3's tokenizer.json).
WINDOW_MODES = {"llama-spm": "keep", "llama-bpe": "keep", "qwen2": "keep", "gpt-2": "keep", "phi-3": "drop",
                "falcon": "keep", "starcoder": "keep"}


def _added_contents():
    return sorted({a.content for n in NAMES for a in real_tokenizer(n).added_tokens_decoder.values()
                   if not a.content.startswith(("<|reserved_special_token_", "[PAD"))}) + [
        "<|reserved_special_token_3|>", "[PAD151646]"]


PIECES = ["a", " ", "  ", "\n", "\t", "\r\n", "\u2581", "\u0120", "<0x0A>", " the", "日", "🙂", "é", "e", "\u0301", "3",
          "333", "'s", " '", "\u200d", "½", ".", "!!", "x"]


@pytest.mark.parametrize("name", NAMES)
def test_window_equals_full_encoding_on_odd_texts(name):
    """The guide's ids after each appended piece equal encoding the whole text, on random texts of spaces,
    newlines, metaspace and byte-level characters written as text, combining marks, digits, and every real
    tokenizer's added-token contents ("<|end|>", "</s>", "[PAD151646]", ...)."""
    tok = real_tokenizer(name)
    assert window_mode(tok) == WINDOW_MODES[name]
    rng = random.Random(0)
    contents = _added_contents()
    steps = 0
    for _ in range(150):
        pool = PIECES + contents if rng.random() < 0.5 else PIECES
        text = "".join(rng.choice(pool) for _ in range(rng.randint(3, 14)))
        cuts = [0]
        while cuts[-1] < len(text):
            cuts.append(min(len(text), cuts[-1] + rng.randint(1, 4)))
        ctx = GuideTokenContext(tok, text[: cuts[1]])
        fed = list(ctx.ids)
        for a, b in zip(cuts[1:], cuts[2:]):
            retract, feed = ctx.extend(text[a:b])
            del fed[len(fed) - retract:]
            fed += feed
            assert ctx.ids == fed == guide_ids(tok, ctx.text), (name, ctx.text)
            steps += 1
    assert steps > 1000


def test_phi3_window_next_to_added_tokens():
    """Phi-3's Prepend('▁') normalizer runs on each piece between added tokens: "<|end|> b" reads '▁', '▁b'
    and "a <|end|>" reads '▁a', '▁', '<|end|>'. A window that starts at either space used to lose a '▁'."""
    tok = real_tokenizer("phi-3")
    assert tok.convert_ids_to_tokens(tok("x<|end|> b", add_special_tokens=False)["input_ids"]) == [
        "\u2581x", "<|end|>", "\u2581", "\u2581b"]
    for pieces in ([" x<|end|>", " b", "c", " d"], [" x", " <|user|>", " b"], [" x", " <|e", "nd|> b", " c"],
                   [" x</s>", " b", " </s>", " c"], ["<|end|>", " b", "<|end|> ", "c"]):
        ctx = GuideTokenContext(tok, "a")
        for piece in pieces:
            ctx.extend(piece)
            assert ctx.ids == guide_ids(tok, ctx.text), (pieces, ctx.text)


@pytest.mark.parametrize("pair", PAIRS, ids=_id)
def test_followed_text_is_decode_of_the_ids_on_odd_streams(pair):
    """Random base token streams (uniform ids, odd ids, ids of real text): after every token the released text
    is decode(ids) and the guide's ids are its encoding of that text."""
    base_name, guide_name = pair
    bt, gt = real_tokenizer(base_name), real_tokenizer(guide_name)
    rng = random.Random(1)
    odd = odd_ids(base_name)
    text_ids = [i for r in prompt_rows(bt, range(46)) for i in r]
    released = 0
    for k, prompt in enumerate(prompt_rows(bt, PROMPTS * 3)):
        det = IncrementalDetokenizer(bt, prompt)
        ctx = GuideTokenContext(gt, det.prompt_text)
        fed, ids = list(ctx.ids), list(prompt)
        for _ in range(40):
            t = rng.choice([rng.randrange(len(bt)), rng.choice(odd), rng.choice(odd), rng.choice(text_ids)])
            ids.append(t)
            retract, feed = ctx.edit(*det.push(t))
            del fed[len(fed) - retract:]
            fed += feed
            assert ctx.ids == fed == guide_ids(gt, ctx.text)
            if not det.pending:
                released += 1
                assert ctx.text == decode(bt, ids), (k, bt.convert_ids_to_tokens(ids[-5:]))
    assert released > 300


@pytest.mark.parametrize("base_name", ["llama-spm", "phi-3"])
def test_byte_fallback_base_rewrites_text_the_guide_read(base_name):
    """A run of byte tokens reads as UTF-8 while it is valid and as U+FFFD per byte once it is not: "\\n" from
    <0x0A> becomes "\\ufffd\\ufffd" when <0xE1> follows, "日" from three byte tokens becomes four U+FFFD after a
    stray <0x80>, also across special tokens (the decoder skips them before joining the run)."""
    tok, guide = real_tokenizer(base_name), real_tokenizer("gpt-2")
    byte = lambda x: tok.convert_tokens_to_ids(f"<0x{x:02X}>")  # noqa: E731
    word = tok.convert_tokens_to_ids("\u2581the")
    assert decode(tok, [word, byte(0x0A), byte(0xE1), word]) == f"the{REPLACEMENT * 2} the"
    runs = [[byte(0x0A), byte(0xE1), word], [byte(0xE6), byte(0x97), byte(0xA5), byte(0x80), word],
            [byte(0x0A), tok.bos_token_id, byte(0xE6), byte(0x97), byte(0xA5), byte(0x80), tok.eos_token_id, word],
            [byte(0x0A), byte(0xE6), byte(0x97), byte(0xA5), word, byte(0x0A), byte(0x80), word]]
    prompt = tok("The cat", add_special_tokens=False)["input_ids"]
    rewrites = 0
    for run in runs:
        for split in (0, 1):  # the run starts after the prompt / inside it
            det = IncrementalDetokenizer(tok, prompt + run[:split])
            ctx = GuideTokenContext(guide, det.prompt_text)
            ids = prompt + run[:split]
            for t in run[split:]:
                ids.append(t)
                back, text = det.push(t)
                rewrites += back > 0
                ctx.edit(back, text)
                if not det.pending:
                    assert ctx.text == decode(tok, ids)
                    assert ctx.ids == guide_ids(guide, ctx.text)
    assert rewrites == 8


# --------------------------------------------------------------------------- #
# End to end: mogen.generate and mogen.search against uncached references
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("pair", PAIRS, ids=_id)
def test_generate_equals_uncached_reference(pair):
    """Greedy mogen.generate, a left-padded batch of llama.cpp's test texts with per-row weights, equals the
    reference that re-encodes each row's whole text for the guides every step (tests/real_pairs.py); the run
    meets the documented approximations (partial characters, unmapped tokens, re-tokenized tokens)."""
    ev = generate_vs_reference(pair, PROMPTS, 12)
    assert ev.partial + ev.textless + ev.unmapped + ev.merged > 0


@pytest.mark.slow
@pytest.mark.parametrize("pair", SLOW_GENERATE_PAIRS, ids=_id)
def test_generate_equals_uncached_reference_longer(pair):
    generate_vs_reference(pair, MORE_PROMPTS, 24, factor=4.0)


def _scripted_follow(base_name, guide_name, prompt, script):
    """mogen.generate with a base scripted to emit ``script`` after ``prompt`` (one row): after every step the
    guide's text is decode(base ids) (unless a character is pending) and its ids are its encoding of that text.
    Returns the texts the guide read."""
    bt, gt = real_tokenizer(base_name), real_tokenizer(guide_name)
    base = tiny_llama(len(bt), 0, **MODEL)
    guides = [proxy_guide(len(gt), 10, tokenizer=gt, **MODEL)]
    seen = []

    def observe(decoding, step):
        if step >= 0:
            group = decoding.cross[0]
            seen.append((group.contexts[0].text, list(group.contexts[0].ids), group.detoks[0].pending))

    hook = script_model(base, [script])
    try:
        with observe_steps(observe):
            out = mogen.generate(base, torch.tensor([prompt]), guides=guides, tokenizer=bt, weights=[1.0],
                                 max_new_tokens=len(script) + 1, pad_token_id=0)
    finally:
        hook.remove()
    assert out[0, len(prompt): len(prompt) + len(script)].tolist() == script
    texts = []
    for step, (text, ids, pending) in enumerate(seen[: len(script)]):
        if not pending:
            assert text == decode(bt, out[0, : len(prompt) + step + 1].tolist()), step
            texts.append(text)
        assert ids == guide_ids(gt, text), text
    return texts


@pytest.mark.parametrize("pair", [("llama-spm", "qwen2"), ("phi-3", "gpt-2")], ids=_id)
def test_generate_byte_fallback_base_whose_byte_run_turns_invalid(pair):
    """End to end: the guide re-reads text a byte run already gave when a later byte makes the run invalid."""
    tok = real_tokenizer(pair[0])
    byte = lambda x: tok.convert_tokens_to_ids(f"<0x{x:02X}>")  # noqa: E731
    word = lambda w: tok.convert_tokens_to_ids("\u2581" + w)  # noqa: E731
    script = [byte(0x0A), byte(0xE1), word("the"), byte(0xE6), byte(0x97), byte(0xA5), byte(0x80), word("cat"),
              byte(0x0A), word("the")]
    texts = _scripted_follow(*pair, tok("The cat", add_special_tokens=True)["input_ids"], script)
    assert texts[0].endswith("\n") and "\n" not in texts[1]  # "\n" read, then taken back
    assert "日" in texts[2] and "日" not in texts[-1]


@pytest.mark.parametrize("proposal", ["base", "guided"])  # text read per chunk / per token
def test_search_byte_fallback_base_whose_byte_run_turns_invalid(proposal):
    """mogen.search with a Phi-3 base nudged to write byte runs that turn invalid, across chunk boundaries: the
    guides' terms of every final beam equal re-encoding its whole decoded text (tests/search_reference.py)."""
    bt, gt = real_tokenizer("phi-3"), real_tokenizer("gpt-2")
    byte = lambda x: bt.convert_tokens_to_ids(f"<0x{x:02X}>")  # noqa: E731
    word = lambda w: bt.convert_tokens_to_ids("\u2581" + w)  # noqa: E731
    script = [word("the"), byte(0x0A), byte(0xE1), word("cat"), byte(0xE6), byte(0x97), byte(0xA5), byte(0x80),
              word("the"), byte(0x0A)]
    base = tiny_llama(len(bt), 0, **MODEL)
    guides = [proxy_guide(len(gt), 10, tokenizer=gt, **MODEL), proxy_guide(len(gt), 20, tokenizer=gt, **MODEL)]
    rows = prompt_rows(bt, [11, 32])
    ids, mask = pad_rows(rows, 0)
    handle = nudge_model(base, script, 20.0)  # forward k of the search draws token k, likely, not certain
    try:
        out = mogen.search(base, ids, mask, guides=guides, tokenizer=bt, weights=[1.0, -0.5], beam_width=2,
                           expansion=3, chunk_length=3, max_new_tokens=len(script), temperature=1.5,
                           proposal=proposal, pad_token_id=0, generator=torch.Generator().manual_seed(0),
                           return_scores=True)
    finally:
        handle.remove()
    rewritten = 0
    for b, beams in enumerate(out.beams):
        for beam in beams:
            rewritten += REPLACEMENT * 4 in decode(bt, beam.tokens)  # "日" read, then four U+FFFD
            _, _, terms = reference_beam(base, guides, rows[b], beam.tokens, [1.0, -0.5], base_tokenizer=bt)
            assert beam.terms == pytest.approx(terms, abs=1e-4), (b, bt.convert_ids_to_tokens(beam.tokens))
    assert rewritten > 0


def test_generate_guide_reads_added_token_text():
    """A byte-level base that spells "<|end|>", "<|user|>" and "</s>" as plain text: a Phi-3 guide reads them as
    its added tokens, with the '▁' its normalizer prepends to the text after each."""
    bt, gt = real_tokenizer("gpt-2"), real_tokenizer("phi-3")
    script = bt(" x<|end|> b c <|user|> d</s> e", add_special_tokens=False)["input_ids"]
    texts = _scripted_follow("gpt-2", "phi-3", bt("Hello", add_special_tokens=False)["input_ids"], script)
    assert gt.convert_tokens_to_ids("<|end|>") in guide_ids(gt, texts[-1])


@pytest.mark.parametrize("pair", SEARCH_PAIRS, ids=_id)
def test_search_scores_equal_uncached_rescoring(pair):
    """mogen.search (base and guided proposals): every final beam's score, base log-probability and guide terms
    equal tests/search_reference.py, which re-encodes each beam's whole text for the guides."""
    checked, _ = search_vs_reference(pair)
    assert checked >= 12


@pytest.mark.slow
@pytest.mark.parametrize("pair", SLOW_SEARCH_PAIRS, ids=_id)
def test_search_scores_equal_uncached_rescoring_large_vocabularies(pair):
    search_vs_reference(pair)
