#!/usr/bin/env python3
"""Fetch real tokenizers for the test suite, without a model hub (`make tokenizers`).

Why: every other test builds its tokenizers in-process (tests/tiny_models.py, mogen.tiny). Those
miss what real vocabularies do -- byte fallback, sentencepiece's prefix space, byte-level BPE
with hundreds of thousands of merges, hundreds of special tokens, vocabularies of 32k to 152k --
and the tests run where no model hub can be reached. llama.cpp keeps vocab-only GGUF files of real
tokenizers, together with its own tokenizer test inputs (`.gguf.inp`) and the ids the model's
reference tokenizer gives for them (`.gguf.out`), and the llama.cpp sources ship inside the
`llama-cpp-python` sdist on PyPI: an ordinary `pip download` from the package index gets them.

What: `pip download` the sdist (LLAMA_CPP_SDIST, sha256 pinned below) into a temporary folder,
read only the seven `ggml-vocab-<name>.gguf` files of NAMES and their `.inp` / `.out` out of the
tarball (no full extraction), convert each with transformers
(`AutoTokenizer.from_pretrained(folder, gguf_file=...)`, which needs the `gguf` package) and
`save_pretrained` it into the cache:

    <cache>/tokenizers/manifest.json       source sdist + sha256, versions, per tokenizer: the
                                           GGUF file's sha256, len(tok), vocab_size, class
    <cache>/tokenizers/<name>/             tokenizer.json, tokenizer_config.json (load with
                                           AutoTokenizer.from_pretrained(<name>/)), and the
                                           ggml-vocab-<name>.gguf, .gguf.inp, .gguf.out it came from

<cache> is $MOGEN_CACHE, else .mogen-cache/ in this checkout (git-ignored), as for the demo
models. Run again, it does nothing when the manifest matches (same sdist, same tokenizer names,
same transformers / tokenizers / gguf versions); when only the versions changed it converts the
cached GGUF files again without downloading. A build goes into a temporary folder next to the
cache and is renamed into place, under a lock, so an interrupted or concurrent run never leaves
a half-written cache.

Exit status: 0 done (or already cached), 1 any failure, 3 (EXIT_OFFLINE) the package index could
not be reached. tests/real_tokenizers.py runs this script when the cache is missing and skips
the real-tokenizer tests only on 3; `--allow-offline` (what `make test` passes) turns 3 into a
warning and 0.

mogen's package code (python/mogen) does not use this script or its cache.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional

ROOT = Path(__file__).resolve().parents[1]

LLAMA_CPP_SDIST = "llama-cpp-python==0.3.36"
SDIST_FILE = "llama_cpp_python-0.3.36.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
SDIST_MODELS = "llama_cpp_python-0.3.36/vendor/llama.cpp/models/"

# llama.cpp's names. Left out: deepseek-llm, whose conversion was reported broken in transformers
# (5.24.0 converts it to len 102403 / vocab_size 102400 and differs from its .out on 1 of 46 texts).
NAMES = ("llama-spm", "llama-bpe", "qwen2", "gpt-2", "phi-3", "falcon", "starcoder")

VOCAB_TEST_SEPARATOR = "\n__ggml_vocab_test__\n"  # what ends every text in a .gguf.inp
MANIFEST_FORMAT = 1
EXIT_OFFLINE = 3

# What pip's output says when the index cannot be reached (urllib3 / socket errors).
_NETWORK_MARKERS = (
    "NameResolutionError", "NewConnectionError", "Failed to establish a new connection",
    "Temporary failure in name resolution", "Name or service not known", "nodename nor servname",
    "Network is unreachable", "No route to host", "Connection refused", "ConnectTimeoutError",
    "ReadTimeoutError", "ProxyError", "Max retries exceeded", "RemoteDisconnected", "Connection reset by peer",
)


class Offline(RuntimeError):
    """The package index could not be reached."""


def cache_dir() -> Path:
    """Where the tokenizers live: ``$MOGEN_CACHE/tokenizers``, else ``.mogen-cache/tokenizers`` here."""
    env = os.environ.get("MOGEN_CACHE")
    return (Path(env) if env else ROOT / ".mogen-cache") / "tokenizers"


def gguf_name(name: str) -> str:
    return f"ggml-vocab-{name}.gguf"


def read_vocab_tests(folder: Path, name: str) -> list[tuple[str, list[int]]]:
    """llama.cpp's tokenizer test cases for ``name``: ``(text, ids)`` pairs.

    The ``.inp`` file is every text followed by ``\\n__ggml_vocab_test__\\n``; the ``.out`` file one
    line per text, the ids the reference tokenizer gives without special tokens (llama.cpp's
    convert_hf_to_gguf_update.py writes both with ``tokenizer.encode(text, add_special_tokens=False)``).
    Read as bytes: no newline translation.
    """
    base = Path(folder) / gguf_name(name)
    texts = (base.parent / (base.name + ".inp")).read_bytes().decode("utf-8").split(VOCAB_TEST_SEPARATOR)
    lines = (base.parent / (base.name + ".out")).read_bytes().decode("utf-8").split("\n")
    if texts[-1] != "" or lines[-1] != "" or len(texts) != len(lines):
        raise ValueError(f"{base.name}.inp / .out: {len(texts) - 1} texts but {len(lines) - 1} id lines")
    return [(t, [int(i) for i in line.split()]) for t, line in zip(texts[:-1], lines[:-1])]


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for dist in ("transformers", "tokenizers", "gguf"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = None
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(dest: Path) -> Optional[dict]:
    try:
        return json.loads((dest / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def status(dest: Path, names=NAMES) -> Optional[str]:
    """None when ``dest`` holds a complete cache this script would not rebuild, else why not."""
    m = read_manifest(dest)
    if m is None:
        return f"no manifest in {dest}"
    if m.get("format") != MANIFEST_FORMAT or m.get("source", {}).get("sha256") != SDIST_SHA256:
        return f"{dest}/manifest.json is from another source or format"
    if sorted(m.get("tokenizers", {})) != sorted(names):
        return f"{dest}/manifest.json lists other tokenizers"
    if m.get("versions") != _versions():
        return f"{dest} was converted with {m.get('versions')}, now {_versions()}"
    for name in names:
        for f in ("tokenizer.json", "tokenizer_config.json", gguf_name(name) + ".inp", gguf_name(name) + ".out"):
            if not (dest / name / f).is_file():
                return f"{dest / name / f} is missing"
    return None


@contextlib.contextmanager
def _locked(dest: Path) -> Iterator[None]:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / f".{dest.name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _say(msg: str) -> None:
    print(f"tokenizers: {msg}", flush=True)


def download_sdist(folder: Path) -> Path:
    """``pip download`` the llama-cpp-python sdist into ``folder``; checks its sha256.

    ``--no-binary llama-cpp-python`` makes it the sdist (and only it: ``:all:`` would also build
    the build backend's own dependencies from source). pip prepares the sdist's metadata, so it
    also installs its build backend, scikit-build-core, into a throwaway build env, with cmake
    and ninja wheels (30 MB more) where none is on PATH. ``--no-cache-dir``: nothing lands in
    ~/.cache/pip.
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-python",
           "--no-cache-dir", "--disable-pip-version-check", "--timeout", "30", "--retries", "2",
           "-d", str(folder), LLAMA_CPP_SDIST]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        lines = proc.stdout.splitlines()
        net = next(((ln, k) for ln in lines for k in _NETWORK_MARKERS if k in ln), None)
        tail = "\n".join(lines[-15:])
        if net is not None:
            host = re.search(r"host='([^']+)'", net[0])
            raise Offline(f"cannot reach the package index{f' ({host[1]})' if host else ''} to download "
                          f"{LLAMA_CPP_SDIST} (pip: {net[1]})")
        raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n{tail}")
    path = folder / SDIST_FILE
    if not path.is_file():
        raise RuntimeError(f"pip download gave {sorted(p.name for p in folder.iterdir())}, not {SDIST_FILE}")
    digest = _sha256(path)
    if digest != SDIST_SHA256:
        raise RuntimeError(f"{SDIST_FILE}: sha256 {digest}, expected {SDIST_SHA256}")
    return path


def extract_vocabs(sdist: Path, out: Path, names=NAMES) -> list[str]:
    """Only the ``ggml-vocab-<name>.gguf`` / ``.inp`` / ``.out`` members of ``names``, flat into ``out``."""
    wanted = {SDIST_MODELS + gguf_name(n) + ext for n in names for ext in ("", ".inp", ".out")}
    got = []
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar:  # one pass over the gzip stream; only the wanted members are written
            if member.name in wanted and member.isfile():
                member = member.replace(name=Path(member.name).name)  # flat, and nothing outside `out`
                tar.extract(member, out, filter="data")
                got.append(member.name)
    missing = sorted(Path(w).name for w in wanted - {SDIST_MODELS + g for g in got})
    if missing:
        raise RuntimeError(f"{SDIST_FILE} has no {', '.join(missing)}")
    return got


def convert(src: Path, name: str, out: Path) -> dict:
    """Convert ``src/ggml-vocab-<name>.gguf`` with transformers and ``save_pretrained`` it into ``out``."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(src), gguf_file=gguf_name(name))
    tok.save_pretrained(str(out))
    for ext in ("", ".inp", ".out"):
        shutil.copy2(src / (gguf_name(name) + ext), out / (gguf_name(name) + ext))
    return {"gguf": gguf_name(name), "gguf_sha256": _sha256(src / gguf_name(name)), "len": len(tok),
            "vocab_size": tok.vocab_size, "class": type(tok).__name__}


def _reusable_sources(dest: Path, names) -> bool:
    """True when ``dest`` (an older cache) holds the GGUF files of ``names`` from the same sdist."""
    m = read_manifest(dest)
    if not m or m.get("source", {}).get("sha256") != SDIST_SHA256:
        return False
    for name in names:
        entry = m.get("tokenizers", {}).get(name)
        files = [dest / name / (gguf_name(name) + ext) for ext in ("", ".inp", ".out")]
        if not entry or not all(f.is_file() for f in files) or _sha256(files[0]) != entry.get("gguf_sha256"):
            return False
    return True


def build(dest: Path, names=NAMES) -> dict:
    """Build the cache into a temporary folder next to ``dest``, then rename it into place."""
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        raise RuntimeError("transformers needs the `gguf` package to read GGUF files: "
                           "pip install -r requirements-dev.txt (or `make install`)")
    for stale in dest.parent.glob(f".{dest.name}-*"):  # left by a killed run; we hold the lock
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-new-", dir=dest.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would become the cache's mode
    t_all = time.perf_counter()
    try:
        src = tmp / "_src"
        src.mkdir()
        source = {"sdist": SDIST_FILE, "requirement": LLAMA_CPP_SDIST, "sha256": SDIST_SHA256,
                  "members": SDIST_MODELS + "ggml-vocab-<name>.gguf{,.inp,.out}"}
        if _reusable_sources(dest, names):
            for name in names:
                for ext in ("", ".inp", ".out"):
                    shutil.copy2(dest / name / (gguf_name(name) + ext), src / (gguf_name(name) + ext))
            _say(f"reusing the GGUF files cached in {dest} (versions changed)")
            source.update(read_manifest(dest)["source"])
        else:
            with tempfile.TemporaryDirectory(prefix="mogen-llama-cpp-sdist-") as dl:
                _say(f"downloading {LLAMA_CPP_SDIST} (sdist, ~77 MB) from the package index ...")
                t = time.perf_counter()
                sdist = download_sdist(Path(dl))
                size = sdist.stat().st_size
                _say(f"downloaded {SDIST_FILE}: {size / 1e6:.1f} MB in {time.perf_counter() - t:.1f} s, sha256 ok")
                t = time.perf_counter()
                got = extract_vocabs(sdist, src, names)
                _say(f"extracted {len(got)} files ({sum((src / g).stat().st_size for g in got) / 1e6:.1f} MB) "
                     f"in {time.perf_counter() - t:.1f} s")
                source["bytes"] = size
        manifest = {"format": MANIFEST_FORMAT, "source": source, "versions": _versions(), "tokenizers": {}}
        t = time.perf_counter()
        from transformers import AutoTokenizer  # noqa: F401  (its import time is not one tokenizer's)
        _say(f"transformers {manifest['versions']['transformers']} imported in {time.perf_counter() - t:.1f} s")
        for i, name in enumerate(names, 1):
            t = time.perf_counter()
            try:
                entry = convert(src, name, tmp / name)
            except Exception as exc:
                raise RuntimeError(f"converting {gguf_name(name)} with transformers failed: {exc!r}") from exc
            entry["convert_s"] = round(time.perf_counter() - t, 2)
            manifest["tokenizers"][name] = entry
            _say(f"[{i}/{len(names)}] {name}: len {entry['len']} (vocab_size {entry['vocab_size']}, "
                 f"{entry['class']}) in {entry['convert_s']:.1f} s")
        shutil.rmtree(src)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}-old-", dir=dest.parent))
            os.rename(dest, old / dest.name)
            os.rename(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, dest)
        _say(f"{len(names)} tokenizers in {dest} ({time.perf_counter() - t_all:.1f} s)")
        return manifest
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def ensure(dest: Optional[Path] = None, force: bool = False) -> dict:
    """The cache's manifest, building the cache first when it is missing or stale."""
    dest = Path(dest or cache_dir())
    if not force and status(dest) is None:
        return read_manifest(dest)
    with _locked(dest):
        why = status(dest)  # another process may have built it while we waited
        if not force and why is None:
            return read_manifest(dest)
        _say(f"building ({'--force' if force else why})")
        return build(dest)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dest", type=Path, default=None, help=f"cache folder (default: {cache_dir()})")
    ap.add_argument("--force", action="store_true", help="rebuild even when the manifest matches")
    ap.add_argument("--check", action="store_true", help="only say whether the cache is complete (exit 0) or not (1)")
    ap.add_argument("--allow-offline", action="store_true",
                    help="when the package index cannot be reached, warn and exit 0 (the tests then skip)")
    args = ap.parse_args(argv)
    dest = Path(args.dest or cache_dir())
    if args.check:
        why = status(dest)
        _say(f"cached in {dest}" if why is None else f"not ready: {why}")
        return 0 if why is None else 1
    try:
        m = ensure(dest, force=args.force)
    except Offline as exc:
        _say(f"{exc}; run `make tokenizers` with network access (or a reachable PIP_INDEX_URL)")
        if args.allow_offline:
            _say("continuing without them: the real-tokenizer tests will skip")
            return 0
        return EXIT_OFFLINE
    except Exception as exc:
        _say(f"FAILED: {exc}")
        return 1
    v = m["versions"]
    _say(f"{len(m['tokenizers'])} cached in {dest} ({m['source']['sdist']}, transformers {v['transformers']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
