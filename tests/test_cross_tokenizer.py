"""Guides with their own tokenizer: text tracking, cache bookkeeping, equivalences."""

from __future__ import annotations

import pytest
import torch

import mogen
import mogen.decoding.binding as binding_mod
import mogen.decoding.runners as runners_mod
from mogen import tiny
from mogen.decoding.generation import observe_steps
from mogen.decoding.retokenize import GuideTokenContext, IncrementalDetokenizer, special_prefix, window_mode

from tiny_models import (
    byte_level_tokenizer,
    char_tokenizer,
    left_pad,
    pad_rows,
    metaspace_tokenizer,
    proxy_guide,
    reference_greedy_cross,
    byte_token_ids,
    script_model,
    tiny_llama,
)

MULTIBYTE = "A naïve café in 日本 said 🙂 twice; über 3.14 and  two spaces\nnew line"


def expected_ids(tok, text):
    return special_prefix(tok) + tok(text, add_special_tokens=False)["input_ids"]


# --------------------------------------------------------------------------- #
# Text tracking units
# --------------------------------------------------------------------------- #


def test_detokenizer_holds_back_partial_characters():
    bl = byte_level_tokenizer()
    ids = bl("日本🙂", add_special_tokens=False)["input_ids"]
    assert len(ids) > 3  # split into partial-byte tokens
    det = IncrementalDetokenizer(bl, bl("x", add_special_tokens=False)["input_ids"])
    released, pending = [], []
    for t in ids:
        back, text = det.push(t)
        assert back == 0
        released.append(text)
        pending.append(det.pending)
    assert "".join(released) == "日本🙂"
    assert all(r == "" or "\ufffd" not in r for r in released)
    assert pending[-1] is False and any(pending)


def test_detokenizer_releases_invalid_bytes_as_replacement():
    bl = byte_level_tokenizer()
    lone = bl.convert_tokens_to_ids("Ģ")  # the byte 0x80 alone: never valid UTF-8
    det = IncrementalDetokenizer(bl, [bl.convert_tokens_to_ids("a")])
    assert det.push(lone) == (0, "") and det.pending
    assert det.push(bl.convert_tokens_to_ids("b")) == (0, "\ufffdb") and not det.pending


@pytest.mark.parametrize("pair", ["bl->ms", "ms->bl", "bl->bl", "ms->ms"])
def test_context_equals_full_encoding_after_every_token(pair):
    toks = {"bl": byte_level_tokenizer(), "ms": metaspace_tokenizer()}
    base, guide = (toks[k] for k in pair.split("->"))
    lines = tiny.synthetic_corpus(40, seed=5) + [MULTIBYTE]
    steps = 0
    for line in lines:
        ids = base(line, add_special_tokens=False)["input_ids"]
        k = max(1, len(ids) // 5)
        det = IncrementalDetokenizer(base, ids[:k])
        ctx = GuideTokenContext(guide, det.prompt_text)  # a cut inside a character stays pending
        fed = list(ctx.ids)  # what a model fed by (retract, feed) would hold
        for t in ids[k:]:
            retract, feed = ctx.edit(*det.push(t))
            assert not retract or feed, "a retraction always comes with ids to feed"
            del fed[len(fed) - retract:]
            fed += feed
            assert ctx.ids == fed == expected_ids(guide, ctx.text)
            steps += 1
        assert ctx.text == base.decode(ids, skip_special_tokens=True)
    assert steps > 500


def test_window_modes_and_fallbacks():
    bl, ms = byte_level_tokenizer(), metaspace_tokenizer()
    assert window_mode(bl) == "keep" and window_mode(ms) == "keep"
    assert special_prefix(ms) == [ms.bos_token_id] and special_prefix(bl) == []
    # Forced full re-encoding is exact too; a long run without spaces falls back to it.
    for mode in ("full", "keep"):
        ctx = GuideTokenContext(ms, "start", mode=mode, max_lookbehind=3)
        for piece in ["x" * 5, "yz" * 6, " word", " a", "b" * 9, " end."]:
            ctx.extend(piece)
            assert ctx.ids == expected_ids(ms, ctx.text)
    assert ctx.full_reencodes > 0


def _follow(base, guide, prompt_ids, new_ids):
    """Push ``new_ids`` one by one through a detokenizer and a guide context, as a group does; after every
    step check the guide's ids (as a model fed by (retract, feed) would hold them) against encoding the
    complete text afresh, and that text against decoding every id so far. Returns the number of rewrites."""
    det = IncrementalDetokenizer(base, prompt_ids)
    ctx = GuideTokenContext(guide, det.prompt_text)
    fed, ids, rewrites = list(ctx.ids), list(prompt_ids), 0
    for t in new_ids:
        ids.append(t)
        back, text = det.push(t)
        rewrites += back > 0
        retract, feed = ctx.edit(back, text)
        assert not retract or feed
        del fed[len(fed) - retract:]
        fed += feed
        assert ctx.ids == fed == expected_ids(guide, ctx.text)
        if not det.pending:
            assert ctx.text == base.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return rewrites


def test_byte_fallback_run_that_turns_invalid_is_rewritten():
    """A ByteFallback decoder turns a whole run of byte tokens into U+FFFD, one per byte, as soon as any
    byte of it is invalid: text already released from the run (a newline, a complete character) changes.
    The detokenizer takes it back and the guide re-reads it, so the guide's text stays decode(ids)."""
    ms, bl = metaspace_tokenizer(), byte_level_tokenizer()
    b = {f"{x:02X}": ms.convert_tokens_to_ids(f"<0x{x:02X}>") for x in range(256)}
    the, prompt = ms.convert_tokens_to_ids("\u2581the"), ms("the", add_special_tokens=False)["input_ids"]
    cases = [
        [b["0A"], b["E1"], the],  # "\n", then a lone lead byte: the run reads "\ufffd\ufffd"
        [b["E6"], b["97"], b["A5"], b["80"], the],  # "日", then a stray continuation byte
        [b["0A"], ms.bos_token_id, b["E6"], b["97"], b["A5"], b["80"], ms.eos_token_id, the],  # specials inside
        [b["0A"], b["E6"], b["97"], b["A5"], the, b["0A"], b["80"]],  # a run released in two pieces
    ]
    assert ms.decode([the, b["0A"], b["E1"], the]) == "the\ufffd\ufffd the"  # the decoder's rule
    rewrites = 0
    for new in cases:
        for guide in (bl, ms):
            rewrites += _follow(ms, guide, prompt, new)
            rewrites += _follow(ms, guide, prompt + new[:1], new[1:])  # the run starts in the prompt
    assert rewrites >= 8


def _prepend_tokenizer():
    """A sentencepiece-legacy style tokenizer (Prepend('▁') normalizer, no pre-tokenizer, byte-level-free)."""
    from tokenizers import Tokenizer, models, normalizers, decoders
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "▁": 1}
    for ch in "abcdefghijklmnopqrstuvwxyz<>|":
        vocab[ch] = len(vocab)
        vocab["▁" + ch] = len(vocab)
    merges = [("▁", ch) for ch in "abcdefghijklmnopqrstuvwxyz<>|"]
    raw = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True))
    raw.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    raw.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>")


def test_window_mode_of_a_prepend_normalizer_tokenizer():
    """A sentencepiece-legacy style tokenizer (Prepend('▁') normalizer, no pre-tokenizer)."""
    tok = _prepend_tokenizer()
    assert window_mode(tok) == "drop"
    ctx = GuideTokenContext(tok, "hello")
    for piece in [" wor", "ld", " and", " more text", "!"]:
        ctx.extend(piece)
        assert ctx.ids == expected_ids(tok, ctx.text)


def test_prepend_normalizer_window_next_to_added_tokens():
    """The Prepend normalizer runs on each piece of text between added tokens: after "<|end|>" the text
    " b" reads "▁▁b", and a space right before one is a piece of its own ("a <|end|>": "▁a▁" then the
    added token), so neither the space after an added token nor one before it can start a "drop" window."""
    tok = _prepend_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|end|>"]})
    tok.add_tokens(["<plain>"])
    assert window_mode(tok) == "drop"
    for pieces in ([" x<|end|>", " b", "c", " d"], [" x", " <|end|>", " b"], [" x", " <|e", "nd|> b", " c"],
                   [" x<plain>", " b", " <plain>", " c"], ["<|end|>", " b", "<|end|> ", "c"]):
        ctx = GuideTokenContext(tok, "a")
        for piece in pieces:
            ctx.extend(piece)
            assert ctx.ids == expected_ids(tok, ctx.text), (pieces, ctx.text)


# --------------------------------------------------------------------------- #
# End to end
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def cross_models():
    bl, ms = byte_level_tokenizer(), metaspace_tokenizer()
    base = tiny_llama(len(bl), 0, hidden=48)
    guides = [proxy_guide(len(ms), 10, tokenizer=ms), proxy_guide(len(ms), 20, tokenizer=ms)]
    return base, guides, bl, ms


PROMPTS = ["The cat sees", "A naïve café in 日本", "One", "x = 1 and  two"]


def _record_fed_ids(runner, log):
    """Wrap a runner's forward to keep, per cache column, the id fed there."""
    inner = runner.forward

    def forward(ids, mask, positions, keep=1):
        log.append(ids.clone())
        return inner(ids, mask, positions, keep)

    runner.forward = forward


SCRIPTS = [" jumps over the lazy dog", "ïve 日本🙂 x", "rden. Then the café", "é 3.14 and, so-on"]


def test_guide_ids_equal_encoding_of_text_after_every_step(cross_models):
    """After every step: guide ids == encode(text so far), and the cache's live columns hold exactly them.

    The base is scripted to spell its text one byte per token, so the guide
    sees words grow letter by letter (its last tokens get re-merged and
    retracted) and multi-byte characters arrive in pieces.
    """
    base, guides, bl, ms = cross_models
    prompts = ["The cat", "A na", "the ga", "caf"]
    ids, mask = left_pad(bl, prompts)
    scripts = [byte_token_ids(bl, s) for s in SCRIPTS]
    steps = max(len(s) for s in scripts)
    seen = {"steps": 0, "stale": 0}
    fed_logs: dict[int, list] = {}

    def observer(decoding, step):
        seen["decoding"] = decoding
        if step == -1:  # after prefill: record what each guide feeds from now on
            for k, g in enumerate(decoding.cross):
                fed_logs[k] = []
                _record_fed_ids(g.runners[0], fed_logs[k])
            return
        seen["steps"] += 1
        seen["stale"] += sum(d.pending for g in decoding.cross for d in g.detoks)
        for k, g in enumerate(decoding.cross):
            fed = torch.cat(fed_logs[k], dim=1) if fed_logs[k] else torch.zeros(len(prompts), 0, dtype=torch.long)
            prefill_width = g._mask.shape[1] - fed.shape[1]
            for b, ctx in enumerate(g.contexts):
                assert ctx.ids == expected_ids(ms, ctx.text), (step, b)
                cols = g._cols[b]
                assert len(cols) == len(ctx.ids)
                assert (g._mask[b, cols] == 1).all() and int(g._mask[b].sum()) == len(cols)
                later = [c - prefill_width for c in cols if c >= prefill_width]
                assert fed[b, later].tolist() == ctx.ids[len(ctx.ids) - len(later):]

    hook = script_model(base, scripts)
    try:
        with observe_steps(observer):
            out = mogen.generate(base, ids, mask, guides=guides, tokenizer=bl, weights=[1.5, -0.5],
                                 max_new_tokens=steps)
    finally:
        hook.remove()
    assert seen["steps"] == steps - 1
    for b, (p, s) in enumerate(zip(prompts, SCRIPTS)):
        n = len(scripts[b])
        assert bl.decode(out[b, ids.shape[1]: ids.shape[1] + n]) == s
    # the run exercised retractions (masked cache columns) and partial characters
    assert sum(g.retracted for g in seen["decoding"].cross) > 10
    assert seen["stale"] > 0


def test_guide_reads_decode_of_base_ids_when_a_byte_run_turns_invalid():
    """End to end, a byte-fallback base: after every step each row's guide holds prefix + encode(text) for
    text = decode(the row's ids so far) (up to a held-back partial character), also where a later byte
    token turns earlier text of its run into U+FFFD (module docstring of mogen.decoding.retokenize)."""
    ms, bl = metaspace_tokenizer(), byte_level_tokenizer()
    byte = lambda x: ms.convert_tokens_to_ids(f"<0x{x:02X}>")  # noqa: E731
    word = lambda w: ms.convert_tokens_to_ids("\u2581" + w)  # noqa: E731
    scripts = [[byte(0x0A), byte(0xE1), word("the"), word("cat")],
               [byte(0xE6), byte(0x97), byte(0xA5), byte(0x80), word("the"), byte(0x0A)],
               [word("the"), byte(0x0A), byte(0x0A), byte(0x9F), word("cat"), word("the")]]
    prompts = [ms(p, add_special_tokens=False)["input_ids"] for p in ["The cat", "A na", "x"]]
    ids, mask = pad_rows(prompts, 0)
    base = tiny_llama(len(ms), 0, hidden=16, layers=1)
    guides = [proxy_guide(len(bl), 10, tokenizer=bl, hidden=16, layers=1)]
    seen = []
    hook = script_model(base, scripts)
    try:
        with observe_steps(lambda d, s: s >= 0 and seen.append(
                [(c.text, c.ids, det.pending) for c, det in zip(d.cross[0].contexts, d.cross[0].detoks)])):
            out = mogen.generate(base, ids, mask, guides=guides, tokenizer=ms, weights=[1.0], max_new_tokens=6)
    finally:
        hook.remove()
    width = ids.shape[1]
    assert [out[b, width: width + len(s)].tolist() for b, s in enumerate(scripts)] == [s[:6] for s in scripts]
    checked = 0
    for step, rows in enumerate(seen):
        for b, (text, guide_ids, pending) in enumerate(rows):
            if pending:
                continue
            row = [i for i, m in zip(out[b, : width + step + 1].tolist(), mask[b].tolist() + [1] * 9) if m]
            assert text == ms.decode(row, skip_special_tokens=True, clean_up_tokenization_spaces=False), (step, b)
            assert guide_ids == expected_ids(bl, text)
            checked += 1
    assert checked >= 8


def test_cross_tokenizer_matches_stepwise_reference(cross_models):
    base, guides, bl, ms = cross_models
    rows = [bl(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    ids, mask = left_pad(bl, PROMPTS)
    weights = [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [2.0, -1.0]]
    steps = 10
    out = mogen.generate(base, ids, mask, guides=guides, tokenizer=bl, weights=weights, beta=2.0,
                         max_new_tokens=steps)
    ref = reference_greedy_cross(base, bl, guides, rows, weights, steps, beta=2.0)
    assert out[:, ids.shape[1]:].tolist() == [r[-steps:] for r in ref]


def test_cross_tokenizer_rows_alone_equal_batch(cross_models):
    base, guides, bl, ms = cross_models
    ids, mask = left_pad(bl, PROMPTS)
    weights = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [1.0, 1.0]])
    batched = mogen.generate(base, ids, mask, guides=guides, tokenizer=bl, weights=weights, beta=2.0,
                             max_new_tokens=12)[:, ids.shape[1]:]
    for b, p in enumerate(PROMPTS):
        alone_ids = bl([p], return_tensors="pt", add_special_tokens=False)["input_ids"]
        alone = mogen.generate(base, alone_ids, guides=guides, tokenizer=bl, weights=weights[b], beta=2.0,
                               max_new_tokens=12)[:, alone_ids.shape[1]:]
        assert batched[b].tolist() == alone[0].tolist(), b


def test_same_vocabulary_cross_path_equals_shared_path(monkeypatch):
    """Char-level tokenizers (every id sequence is its text's only encoding, multi-byte chars included)."""
    tok = char_tokenizer()
    twin = char_tokenizer()  # same vocabulary, another object
    base = tiny_llama(len(tok), 0, hidden=48)
    guides = [proxy_guide(len(tok), 10), proxy_guide(len(tok), 20)]
    prompts = ["héllo wörld", "日本語 and ß", "a"]
    ids, mask = pad_rows([tok(p)["input_ids"] for p in prompts])
    weights = [[1.0, 0.5], [-0.5, 1.5], [2.0, 0.0]]
    shared = mogen.generate(base, ids, mask, guides=guides, tokenizer=tok, weights=weights, max_new_tokens=20)

    cross_guides = [mogen.ProxyGuide(g.expert, g.reference, tokenizer=twin) for g in guides]
    assert mogen.decoding.shares_tokenizer(tok, twin)  # identical pipelines would take the fast path...
    same_object = lambda a, b: b is None or a is b  # noqa: E731 - ...so force re-tokenization
    for module in (binding_mod, runners_mod):
        monkeypatch.setattr(module, "shares_tokenizer", same_object)
    seen = []
    with observe_steps(lambda d, s: seen.append([len(g.runners) for g in d.cross])):
        out = mogen.generate(base, ids, mask, guides=cross_guides, tokenizer=tok, weights=weights, max_new_tokens=20)
    assert seen and all(n == [4] for n in seen)  # one re-tokenizing group (one tokenizer), 4 models
    assert torch.equal(out, shared)
    text = [tok.decode(r, skip_special_tokens=True) for r in out]
    assert any(any(ord(c) > 127 for c in t[len(p):]) for t, p in zip(text, prompts)), "multi-byte chars generated"


def test_cross_guides_mixed_with_shared_guides(cross_models):
    base, guides, bl, ms = cross_models
    shared = proxy_guide(len(bl), 30)
    rows = [bl(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    ids, mask = left_pad(bl, PROMPTS)
    mixed = [guides[0], shared, guides[1]]
    weights = [0.7, 1.0, -0.4]
    out = mogen.generate(base, ids, mask, guides=mixed, tokenizer=bl, weights=weights, max_new_tokens=8)
    ref = reference_greedy_cross(base, bl, mixed, rows, weights, 8)
    assert out[:, ids.shape[1]:].tolist() == [r[-8:] for r in ref]


def test_identical_guide_tokenizers_share_one_group_and_a_shared_reference_runs_once(cross_models):
    base, guides, bl, ms = cross_models
    from mogen import tiny

    ms_again = tiny.metaspace_bpe()  # same pipeline, another object (as when loaded from two folders)
    ref = guides[0].reference
    pair = [mogen.ProxyGuide(guides[0].expert, ref, tokenizer=ms),
            mogen.ProxyGuide(guides[1].expert, ref, tokenizer=ms_again)]
    shape = []
    ids, mask = left_pad(bl, PROMPTS)
    with observe_steps(lambda d, s: shape.append([len(g.runners) for g in d.cross])):
        out = mogen.generate(base, ids, mask, guides=pair, tokenizer=bl, weights=[0.6, 0.4], max_new_tokens=6)
    assert shape[0] == [3]  # one group: two experts and the shared reference
    rows = [bl(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    ref_rows = reference_greedy_cross(base, bl, pair, rows, [0.6, 0.4], 6)
    assert out[:, ids.shape[1]:].tolist() == [r[-6:] for r in ref_rows]
