"""Real tokenizers for the tests: llama.cpp's vocab-only GGUF files, converted by transformers.

tools/fetch_tokenizers.py (``make tokenizers``) puts them in ``.mogen-cache/tokenizers`` (or
``$MOGEN_CACHE/tokenizers``). When that cache is missing, the first call here runs the script
once per session; the caller skips (``pytest.skip``) only when the script says the package index
could not be reached, and any other failure is an error.

    tok = real_tokenizer("llama-bpe")          # padding_side="left"
    for text, ids in vocab_tests("llama-bpe"):  # llama.cpp's test strings and the reference ids
        ...
"""

from __future__ import annotations

import functools
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "fetch_tokenizers.py"


def _load_fetch():
    spec = importlib.util.spec_from_file_location("fetch_tokenizers", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


fetch = _load_fetch()
NAMES = fetch.NAMES


@functools.lru_cache(maxsize=None)
def _cache() -> tuple[str, str]:
    """``("ok", folder)``, ``("skip", why)`` or ``("error", why)``, decided once per session."""
    dest = fetch.cache_dir()
    if fetch.status(dest) is None:
        return "ok", str(dest)
    proc = subprocess.run([sys.executable, str(SCRIPT)], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    if proc.returncode == 0 and fetch.status(dest) is None:
        return "ok", str(dest)
    out = proc.stdout.strip()
    if proc.returncode == fetch.EXIT_OFFLINE:
        return "skip", f"real tokenizers not cached and {out.splitlines()[-1].removeprefix('tokenizers: ')}"
    return "error", f"tools/fetch_tokenizers.py failed (exit {proc.returncode}):\n{out}"


def tokenizer_dir(name: str) -> Path:
    """The cached tokenizer's folder (fetched first if need be); skips when it cannot be fetched offline."""
    if name not in NAMES:
        raise ValueError(f"unknown tokenizer {name!r}; cached ones: {', '.join(NAMES)}")
    state, detail = _cache()
    if state == "skip":
        pytest.skip(detail)
    if state == "error":
        pytest.fail(detail, pytrace=False)
    return Path(detail) / name


@functools.lru_cache(maxsize=None)
def _load(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir(name)), padding_side="left")


def real_tokenizer(name: str):
    """The cached tokenizer ``name`` (one of NAMES), with ``padding_side="left"``; shared, do not mutate."""
    tokenizer_dir(name)  # skips / fails before the lru_cache can remember anything
    return _load(name)


def vocab_tests(name: str) -> list[tuple[str, list[int]]]:
    """llama.cpp's test texts for ``name`` with the ids its reference tokenizer gives them
    (``encode(text, add_special_tokens=False)``)."""
    return fetch.read_vocab_tests(tokenizer_dir(name), name)
