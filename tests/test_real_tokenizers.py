"""Real tokenizers (tests/real_tokenizers.py): they load, have their real sizes, give llama.cpp's
reference ids for llama.cpp's tokenizer test strings, and decode what they encode.

The `.gguf.out` ids come from each model's own Hugging Face tokenizer (llama.cpp's
convert_hf_to_gguf_update.py writes them with ``encode(text, add_special_tokens=False)``), and
llama.cpp's own tokenizer reproduces them. transformers' conversion of the GGUF file does not
always: KNOWN_DIFFERENCES lists each case where it differs, and why, as strict xfails.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from real_tokenizers import NAMES, SCRIPT, real_tokenizer, vocab_tests

# len(tok) / tok.vocab_size with transformers 5.24.0. llama-bpe's extra token (id 128256,
# "<|endoftext|>") is not Llama-3's: GPT2Tokenizer, which the conversion goes through, adds its
# default unk token to a vocabulary that has none. The model's embedding has 128256 rows.
EXPECTED_SIZE = {
    "llama-spm": (32000, 32000),
    "llama-bpe": (128257, 128256),
    "qwen2": (151936, 151936),
    "gpt-2": (50257, 50257),
    "phi-3": (32064, 32064),
    "falcon": (65024, 65024),
    "starcoder": (49152, 49152),
}
N_CASES = 46  # texts in each .gguf.inp of llama-cpp-python 0.3.36

# Why transformers' conversion differs from llama.cpp's .out: short reasons for pytest's report.
#
# llama-spm: transformers builds Llama-2's sentencepiece tokenizer with a Metaspace pre-tokenizer
#   (prepend_scheme="first"), which adds no "▁" to a text that already starts with a space;
#   sentencepiece (and Llama-2's tokenizer.json, whose normalizer is Prepend("▁")) always adds
#   one: " Hello" is ["▁", "▁Hello"] there, ["▁Hello"] here, and decode drops the space.
# falcon: transformers gives it GPT-2's byte-level pre-tokenizer; Falcon's own (and llama.cpp's
#   "falcon" one) isolates punctuation and splits digit runs into threes: "3333" is "333" "3" there.
# starcoder: GPT-2's pre-tokenizer here too; StarCoder's own isolates every numeric character
#   (Digits(individual_digits=True)), "½" included, so " ½" is not one piece there.
# llama-bpe: Llama-3's BPE model has ignore_merges=True (a pre-token that is a whole vocabulary
#   entry, " Việt", is taken as is); the conversion leaves it False, and the merges never build it.
_SPM_PREFIX = "transformers' Llama-2 (Metaspace, prepend_scheme=first) adds no \u2581 before a leading space"
_FALCON = "transformers gives Falcon GPT-2's pre-tokenizer: no punctuation isolation, no 3-digit groups"
_STARCODER = "transformers gives StarCoder GPT-2's pre-tokenizer: no Digits(individual_digits) split of '\u00bd'"
_LLAMA3 = "transformers' Llama-3 BPE lacks ignore_merges=True: ' Vi\u1ec7t' comes out in 3 pieces"

# (tokenizer, index in the .inp, start of that text): why transformers' ids differ from llama.cpp's .out.
KNOWN_DIFFERENCES = {
    **{("llama-spm", i, t): _SPM_PREFIX for i, t in [
        (3, " "), (4, "  "), (5, "   "), (12, " Hello world"), (14, " Hello World"), (15, " Hello World!"),
        (17, " Hello, world!"), (18, " this is"), (24, " Hello"), (25, "  Hello"), (26, "   Hello"),
        (27, "    Hello"), (28, "    Hello\n    Hello"), (29, " ("), (44, " discards")]},
    **{("falcon", i, t): _FALCON for i, t in [
        (30, "\n ="), (32, "Hello, y'all! How are you"), (37, "3333"), (38, "33333"), (39, "333333"),
        (40, "3333333"), (41, "33333333"), (42, "333333333"), (45, "\n \n\n \n\n\n \t \t\t \t\n")]},
    ("starcoder", 0, "ied 4 \u00bd months"): _STARCODER,
    ("llama-bpe", 43, "C\u1eeda Vi\u1ec7t"): _LLAMA3,
}
# decode(encode(text)) != text: only llama-spm's texts that start with a space (same cause).
KNOWN_ROUND_TRIP = {(n, i, t): why for (n, i, t), why in KNOWN_DIFFERENCES.items() if n == "llama-spm"}


def _encode(tok, text):
    return tok.encode(text, add_special_tokens=False)


def _case(name, index, start):
    """The ``index``-th test text of ``name``; LookupError (not xfailed) if it is not the one we expect."""
    text, ids = vocab_tests(name)[index]
    if not text.startswith(start):
        raise LookupError(f"{name} test {index} is {text[:40]!r}, expected one starting with {start!r}")
    return text, ids


@pytest.mark.parametrize("name", NAMES)
def test_loads_with_real_size(name):
    tok = real_tokenizer(name)
    assert (len(tok), tok.vocab_size) == EXPECTED_SIZE[name]
    assert tok.padding_side == "left"
    assert len(vocab_tests(name)) == N_CASES
    if name == "llama-bpe":
        assert tok.convert_ids_to_tokens(128256) == "<|endoftext|>"


@pytest.mark.parametrize("name", NAMES)
def test_encode_matches_llama_cpp(name):
    tok = real_tokenizer(name)
    known = {i for n, i, _ in KNOWN_DIFFERENCES if n == name}
    bad = [(i, text[:40], ids, _encode(tok, text)) for i, (text, ids) in enumerate(vocab_tests(name))
           if i not in known and _encode(tok, text) != ids]
    assert not bad, "\n".join(f"{i} {t!r}: llama.cpp {e}, transformers {g}" for i, t, e, g in bad)


@pytest.mark.parametrize("name,index,start", [
    pytest.param(n, i, t, id=f"{n}-{i}", marks=pytest.mark.xfail(strict=True, raises=AssertionError, reason=why))
    for (n, i, t), why in KNOWN_DIFFERENCES.items()])
def test_encode_known_difference(name, index, start):
    text, ids = _case(name, index, start)
    assert _encode(real_tokenizer(name), text) == ids


@pytest.mark.parametrize("name", NAMES)
def test_round_trip(name):
    tok = real_tokenizer(name)
    known = {i for n, i, _ in KNOWN_ROUND_TRIP if n == name}
    bad = [(i, text, tok.decode(_encode(tok, text))) for i, (text, _) in enumerate(vocab_tests(name))
           if i not in known and tok.decode(_encode(tok, text)) != text]
    assert not bad, "\n".join(f"{i}: {t[:40]!r} -> {d[:40]!r}" for i, t, d in bad)


@pytest.mark.parametrize("name,index,start", [
    pytest.param(n, i, t, id=f"{n}-{i}", marks=pytest.mark.xfail(strict=True, raises=AssertionError, reason=why))
    for (n, i, t), why in KNOWN_ROUND_TRIP.items()])
def test_round_trip_known_difference(name, index, start):
    text, _ = _case(name, index, start)
    tok = real_tokenizer(name)
    assert tok.decode(_encode(tok, text)) == text


def test_fetch_says_when_the_index_cannot_be_reached(tmp_path):
    """Exit 3 (the tests' cue to skip) and nothing written when pip cannot reach the index; 0 with
    --allow-offline (what `make test` passes)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    # No pip config, an index on a closed local port (9, discard), never through a proxy.
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL="http://127.0.0.1:9/simple/",
               NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    dest = tmp_path / "tokenizers"
    for flags, rc in (([], 3), (["--allow-offline"], 0)):
        proc = subprocess.run([sys.executable, str(SCRIPT), "--dest", str(dest), *flags], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
        assert proc.returncode == rc, proc.stdout
        assert "cannot reach the package index" in proc.stdout, proc.stdout
    assert not dest.exists() and [p.name for p in tmp_path.iterdir()] == [".tokenizers.lock"]
