"""mogen.vocab: cross-tokenizer vocabulary maps, on tiny tokenizers from mogen.tiny.

The pairs cover the real situation (a byte-level Qwen/GPT-2 style base with a
metaspace Llama style guide, and back), a metaspace guide without byte
fallback, and identical tokenizers. Texts are compared through each
tokenizer's own decoder, never through mogen.vocab's canonical bytes, so the
tests check the map against what the tokenizers actually do.
"""

from __future__ import annotations

import pytest
import torch

from mogen import tiny
from mogen.vocab import build_vocab_map, clear_cache, coverage

REPLACEMENT = "\ufffd"


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return tiny.synthetic_corpus()


@pytest.fixture(scope="module")
def bl(corpus):
    return tiny.byte_level_bpe(corpus)


@pytest.fixture(scope="module")
def ms(corpus):
    return tiny.metaspace_bpe(corpus)


@pytest.fixture(scope="module")
def ms_nofb(corpus):
    return tiny.metaspace_bpe(corpus, byte_fallback=False)


# (base, guide) fixture names of every cross-scheme pair tested
PAIRS = [("bl", "ms"), ("ms", "bl"), ("bl", "ms_nofb"), ("ms_nofb", "bl")]


@pytest.fixture(params=PAIRS, ids=lambda p: f"{p[0]}->{p[1]}")
def pair(request):
    base, guide = request.param
    return request.getfixturevalue(base), request.getfixturevalue(guide)


def token_text(tok, i: int) -> str:
    """Text of token ``i`` as it reads mid-sentence, leading space included.

    A metaspace (Llama) decoder strips the leading space of the whole output,
    so decode after an anchor token "a" and cut the anchor off again.
    """
    anchor = tok.convert_tokens_to_ids("a")
    text = tok.decode([anchor, i], skip_special_tokens=False)
    assert text.startswith("a")
    return text[1:]


def encode(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def decodes_to(tok, ids: list[int]) -> str:
    anchor = tok.convert_tokens_to_ids("a")
    return tok.decode([anchor, *ids])[1:]


def encode_as_written(tok, text: str) -> list[int]:
    """``tok``'s encoding of ``text`` as a piece of running text.

    A metaspace (Llama) tokenizer prepends '▁' to text that starts without a
    space; after a newline (a piece of its own there) it does not. Text the
    tokenizer cannot spell comes back with its unk id in it.
    """
    ids = encode(tok, text)
    if decodes_to(tok, ids) == text:
        return ids
    nl = encode(tok, "\n")
    ids = encode(tok, "\n" + text)
    assert ids[: len(nl)] == nl
    return ids[len(nl):]


def special_ids(tok) -> set[int]:
    return set(tok.all_special_ids)


# --------------------------------------------------------------------------- #


def test_tiny_tokenizers_are_deterministic_and_round_trip(corpus, bl, ms, ms_nofb):
    assert tiny.synthetic_corpus() == corpus
    assert tiny.byte_level_bpe(corpus).get_vocab() == bl.get_vocab()
    assert tiny.metaspace_bpe(corpus).get_vocab() == ms.get_vocab()
    text = "The naïve café is 日本 🙂 good.\nthe  dog 123"
    for tok in (bl, ms, ms_nofb):
        assert tok.decode(encode(tok, text)) == text
        assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == (
            "<s>", "</s>", "<pad>", "<unk>")
    assert bl.convert_tokens_to_ids("Ġthe") != bl.unk_token_id
    assert "Ċ" in bl.get_vocab() and "▁the" in ms.get_vocab()
    assert all(f"<0x{b:02X}>" in ms.get_vocab() for b in range(256))
    assert "<0x0A>" not in ms_nofb.get_vocab()
    # Llama style: <s> on encode by default, never without special tokens.
    assert ms.encode("the")[0] == ms.bos_token_id
    assert ms.bos_token_id not in encode(ms, "the")


def test_shape_dtype_and_range(pair):
    base, guide = pair
    vmap = build_vocab_map(base, guide)
    assert vmap.dtype == torch.int32
    assert vmap.shape == (len(base),)
    assert vmap.device.type == "cpu"
    assert int(vmap.min()) >= -1 and int(vmap.max()) < len(guide)


def test_common_words_are_all_mapped(pair):
    base, guide = pair
    vmap = build_vocab_map(base, guide)
    checked = 0
    for word in tiny.COMMON_WORDS:
        for text in (" " + word, word):
            ids = encode_as_written(base, text)
            g_ids = encode_as_written(guide, text)
            if len(ids) != 1 or len(g_ids) != 1:
                assert text != " " + word, f"{text!r} should be one token of each tokenizer"
                continue
            checked += 1
            assert vmap[ids[0]] == g_ids[0], f"{text!r}"
    assert checked >= len(tiny.COMMON_WORDS)


def test_mapped_pairs_decode_to_the_same_text(pair):
    base, guide = pair
    vmap = build_vocab_map(base, guide)
    specials = special_ids(base)
    n_checked = 0
    for i, j in enumerate(vmap.tolist()):
        if j == -1 or i in specials:
            continue
        assert token_text(base, i) == token_text(guide, j), (
            base.convert_ids_to_tokens(i), guide.convert_ids_to_tokens(j))
        n_checked += 1
    assert n_checked > 0.5 * len(base)


def test_unmapped_entries_have_no_single_token_counterpart(pair):
    base, guide = pair
    vmap = build_vocab_map(base, guide, fallback="none")
    specials = special_ids(base)
    unmapped = [i for i, j in enumerate(vmap.tolist()) if j == -1 and i not in specials]
    for i in unmapped:
        text = token_text(base, i)
        if REPLACEMENT in text:  # part of a UTF-8 character: no text to encode
            continue
        ids = encode_as_written(guide, text)
        assert len(ids) != 1 or ids[0] == guide.unk_token_id, f"{base.convert_ids_to_tokens(i)!r} is guide token {ids}"


def test_byte_level_base_has_unmapped_partial_characters(bl, ms_nofb):
    vmap = build_vocab_map(bl, ms_nofb)
    # 'Ã' is the raw byte 0xC3, which a vocabulary without byte fallback lacks.
    assert vmap[bl.convert_tokens_to_ids("Ã")] == -1
    assert coverage(vmap) < 1.0


def test_newline_and_raw_bytes(bl, ms, ms_nofb):
    nl_bl = bl.convert_tokens_to_ids("Ċ")
    assert encode(bl, "\n") == [nl_bl]
    nl_ms = ms.convert_tokens_to_ids("<0x0A>")
    assert encode(ms, "\n")[-1] == nl_ms
    assert build_vocab_map(bl, ms)[nl_bl] == nl_ms
    assert build_vocab_map(ms, bl)[nl_ms] == nl_bl
    assert build_vocab_map(bl, ms_nofb)[nl_bl] == ms_nofb.convert_tokens_to_ids("\n")

    # 0xC3 (first byte of "é", "ï", ...) is one byte-level token.
    c3_bl = bl.convert_tokens_to_ids("Ã")
    c3_ms = ms.convert_tokens_to_ids("<0xC3>")
    assert c3_bl != bl.unk_token_id
    assert build_vocab_map(bl, ms)[c3_bl] == c3_ms
    assert build_vocab_map(ms, bl)[c3_ms] == c3_bl

    # A space: the regular '▁' token, which the guide itself emits, not <0x20>.
    sp_bl = bl.convert_tokens_to_ids("Ġ")
    assert build_vocab_map(bl, ms)[sp_bl] == ms.convert_tokens_to_ids("▁")
    assert build_vocab_map(ms, bl)[ms.convert_tokens_to_ids("<0x20>")] == sp_bl


def test_every_byte_maps_between_byte_level_and_byte_fallback(bl, ms):
    fwd, back = build_vocab_map(bl, ms), build_vocab_map(ms, bl)
    for b in range(256):
        ms_id = ms.convert_tokens_to_ids(f"<0x{b:02X}>")
        bl_id = int(back[ms_id])
        assert bl_id != -1, hex(b)
        if b < 0x80:  # ASCII: the guide's own token for that character
            assert encode(bl, chr(b)) == [bl_id], hex(b)
            assert token_text(ms, int(fwd[bl_id])) == chr(b)
        else:  # no text of its own: the round trip comes back to the byte token
            assert int(fwd[bl_id]) == ms_id, hex(b)


def test_special_tokens_map_to_counterparts(pair):
    base, guide = pair
    vmap = build_vocab_map(base, guide)
    for role in ("bos", "eos", "pad", "unk"):
        b_id = getattr(base, f"{role}_token_id")
        assert vmap[b_id] == getattr(guide, f"{role}_token_id"), role


def test_special_roles_map_across_different_names(corpus, ms):
    # Qwen style: eos is "<|endoftext|>", a name the Llama-style guide lacks.
    base = tiny.byte_level_bpe(corpus)
    base.add_special_tokens({"eos_token": "<|endoftext|>"})
    assert base.eos_token == "<|endoftext|>" and "<|endoftext|>" not in ms.get_vocab()
    vmap = build_vocab_map(base, ms)
    assert vmap[base.eos_token_id] == ms.eos_token_id
    assert vmap[base.convert_tokens_to_ids("</s>")] == ms.eos_token_id  # same name


def test_unencodable_text_stays_unmapped(bl, ms_nofb):
    # '$' is not in the corpus: the guide without byte fallback can only say <unk>.
    assert encode(ms_nofb, "$")[-1] == ms_nofb.unk_token_id
    vmap = build_vocab_map(bl, ms_nofb, fallback="first_subtoken")
    assert vmap[bl.convert_tokens_to_ids("$")] == -1


def test_added_special_tokens_by_content_and_length(corpus):
    base = tiny.byte_level_bpe(corpus)
    guide = tiny.metaspace_bpe(corpus)
    before = build_vocab_map(base, guide)
    base.add_tokens(["<tool>"], special_tokens=True)
    base.add_tokens(["zzqx"])
    guide.add_tokens(["<tool>"], special_tokens=True)
    vmap = build_vocab_map(base, guide)
    assert vmap.shape == (len(base),) == (before.shape[0] + 2,)
    assert vmap[base.convert_tokens_to_ids("<tool>")] == guide.convert_tokens_to_ids("<tool>")
    assert vmap[base.convert_tokens_to_ids("zzqx")] == -1
    assert torch.equal(vmap[: before.shape[0]], before)


@pytest.mark.parametrize("name", ["bl", "ms", "ms_nofb"])
def test_identical_tokenizers_give_identity(request, corpus, name):
    tok = request.getfixturevalue(name)
    ident = torch.arange(len(tok), dtype=torch.int32)
    assert torch.equal(build_vocab_map(tok, tok), ident)
    # A separately built twin (another object, same vocabulary) too.
    twin = {"bl": tiny.byte_level_bpe, "ms": tiny.metaspace_bpe,
            "ms_nofb": lambda c: tiny.metaspace_bpe(c, byte_fallback=False)}[name](corpus)
    assert twin is not tok
    assert torch.equal(build_vocab_map(tok, twin), ident)


def test_first_subtoken_only_adds_mappings(pair):
    base, guide = pair
    none = build_vocab_map(base, guide, fallback="none")
    first = build_vocab_map(base, guide, fallback="first_subtoken")
    kept = none != -1
    assert torch.equal(first[kept], none[kept])
    assert coverage(first) >= coverage(none)


def test_first_subtoken_raises_coverage_where_words_differ(bl, ms):
    none = build_vocab_map(ms, bl, fallback="none")
    first = build_vocab_map(ms, bl, fallback="first_subtoken")
    assert coverage(first) > coverage(none)


@pytest.mark.parametrize("base_name,guide_name", [("bl", "ms"), ("ms", "bl")])
def test_first_subtoken_covers_everything_with_a_byte_complete_guide(
    request, base_name, guide_name
):
    # Both guides spell any byte string, so every base token has a first subtoken.
    base, guide = request.getfixturevalue(base_name), request.getfixturevalue(guide_name)
    assert coverage(build_vocab_map(base, guide, fallback="first_subtoken")) == 1.0


def test_first_subtoken_is_first_id_of_guide_encoding(pair):
    base, guide = pair
    none = build_vocab_map(base, guide, fallback="none")
    first = build_vocab_map(base, guide, fallback="first_subtoken")
    added = ((none == -1) & (first != -1)).nonzero().flatten().tolist()
    assert added
    n_text = 0
    for i in added:
        text = token_text(base, i)
        j = int(first[i])
        g_text = token_text(guide, j)
        if REPLACEMENT in text:
            # Partial UTF-8: the valid prefix's first subtoken or the first raw byte.
            prefix = text.split(REPLACEMENT, 1)[0]
            assert (prefix and prefix.startswith(g_text)) or g_text == REPLACEMENT
            continue
        n_text += 1
        ids = encode_as_written(guide, text)
        assert j == ids[0], (base.convert_ids_to_tokens(i), guide.convert_ids_to_tokens(ids))
        if REPLACEMENT not in g_text:  # else a raw byte: no text to compare
            assert g_text and text.startswith(g_text)
    assert n_text > 0


def test_cache_returns_same_object(bl, ms):
    a = build_vocab_map(bl, ms)
    assert build_vocab_map(bl, ms) is a
    f = build_vocab_map(bl, ms, fallback="first_subtoken")
    assert f is not a and build_vocab_map(bl, ms, fallback="first_subtoken") is f
    assert build_vocab_map(ms, bl) is not a
    clear_cache()
    b = build_vocab_map(bl, ms)
    assert b is not a and torch.equal(a, b)


def test_raw_tokenizers_objects_are_accepted(bl, ms):
    raw = build_vocab_map(bl.backend_tokenizer, ms.backend_tokenizer)
    assert torch.equal(raw, build_vocab_map(bl, ms))


def test_bad_fallback_raises(bl, ms):
    with pytest.raises(ValueError, match="fallback"):
        build_vocab_map(bl, ms, fallback="nearest")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["gpt2", None, {"the": 0}])
def test_non_tokenizer_raises_type_error(bl, bad):
    with pytest.raises(TypeError, match="base_tokenizer"):
        build_vocab_map(bad, bl)
    with pytest.raises(TypeError, match="guide_tokenizer"):
        build_vocab_map(bl, bad)


def test_coverage():
    assert coverage(torch.tensor([0, -1, 5, -1], dtype=torch.int32)) == 0.5
    assert coverage(torch.tensor([3, 1], dtype=torch.int32)) == 1.0
    assert coverage(torch.empty(0, dtype=torch.int32)) == 1.0
    with pytest.raises(TypeError):
        coverage([0, 1])  # type: ignore[arg-type]


def test_scheme_probe_without_pipeline_agrees(bl, ms, ms_nofb):
    # Slow (Python) tokenizers have no tokenizers pipeline to read the scheme
    # from; probing word-initial markers of the vocab must agree with it.
    from mogen.vocab import _detect_scheme

    assert _detect_scheme(bl.backend_tokenizer, {}) == ("byte_level", "Ġ")
    assert _detect_scheme(ms.backend_tokenizer, {}) == ("metaspace", "▁")
    assert _detect_scheme(None, bl.get_vocab()) == ("byte_level", "Ġ")
    for tok in (ms, ms_nofb):
        assert _detect_scheme(None, tok.get_vocab()) == ("metaspace", "▁")
    assert _detect_scheme(None, {"hello": 0, "world": 1}) == ("plain", "")
