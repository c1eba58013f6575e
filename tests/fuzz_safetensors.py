"""Seeded mutations of valid safetensors files, and a worker that reads them with mogen's C++ reader and
with the ``safetensors`` package (the reference). Used by test_safetensors_fuzz.py, which runs the worker
in child processes so that a crash is caught and attributed to the variant that caused it."""

from __future__ import annotations

import json
import random
import struct
import sys
from typing import Callable

import torch
from safetensors.torch import save

# ---------------------------------------------------------------- valid seeds


def seed_files() -> list[bytes]:
    """A few valid files: every dtype both readers know, 0-dim and empty tensors, metadata."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    a = {"f32": r(3, 5), "f64": r(4).double(), "f16": r(2, 3).half(), "bf16": r(7).bfloat16(),
         "i64": torch.arange(-3, 3), "i32": torch.arange(5, dtype=torch.int32), "i16": torch.arange(4).short(),
         "i8": torch.arange(-4, 4, dtype=torch.int8), "u8": torch.arange(6, dtype=torch.uint8),
         "bool": torch.tensor([True, False, True]), "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 4),
         "u16": torch.arange(3).to(torch.uint16), "u32": torch.arange(3).to(torch.uint32),
         "u64": torch.arange(3).to(torch.uint64), "e4m3": r(4).to(torch.float8_e4m3fn),
         "e5m2": r(4).to(torch.float8_e5m2)}
    b = {"model.layers.0.w": r(16, 8), "model.layers.0.b": r(8).bfloat16(), "x\u00e9\u4e2d": r(2).half()}
    c = {"only": torch.tensor(1.0)}
    return [save(a, metadata={"format": "pt", "note": "caf\u00e9 \U0001f600"}), save(b), save(c, metadata={})]


def split(blob: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", blob[:8])[0]
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def join(header, data: bytes, text: bytes = None) -> bytes:
    h = text if text is not None else json.dumps(header, ensure_ascii=False).encode()
    return struct.pack("<Q", len(h)) + h + data


# ---------------------------------------------------------------- mutations

Mutation = Callable[[random.Random, bytes], bytes]


def _tensor_names(h: dict) -> list[str]:
    return [k for k in h if k != "__metadata__"]


def _edit_entry(rng, blob, edit) -> bytes:
    h, data = split(blob)
    names = _tensor_names(h)
    if names:
        edit(rng, h, h[rng.choice(names)])
    return join(h, data)


def m_flip_length(rng, blob):
    b = bytearray(blob)
    b[rng.randrange(8)] ^= 1 << rng.randrange(8)
    return bytes(b)


def m_flip_header(rng, blob):
    n = struct.unpack("<Q", blob[:8])[0]
    b = bytearray(blob)
    for _ in range(rng.choice([1, 1, 2, 4])):
        b[8 + rng.randrange(n)] ^= 1 << rng.randrange(8)
    return bytes(b)


def m_overwrite_header(rng, blob):
    n = struct.unpack("<Q", blob[:8])[0]
    b = bytearray(blob)
    pos = 8 + rng.randrange(n)
    junk = rng.choice([b"\0", b"\xff", b'"', b"}", b"{", b",", b":", b"[", b"]", b"-", b"9", b" ", b"\\",
                       b"\xc3", b"\x80", b"\xed\xa0\x80", bytes([rng.randrange(256)])])
    b[pos:pos + len(junk)] = junk
    return bytes(b[:len(blob)])


def m_length_value(rng, blob):
    n = struct.unpack("<Q", blob[:8])[0]
    v = rng.choice([0, 1, n - 1, n + 1, n + 8, len(blob), len(blob) - 7, 2**63 - 1, 2**64 - 1, 100_000_001,
                    rng.randrange(2**64)])
    return struct.pack("<Q", max(0, v)) + blob[8:]


def m_truncate(rng, blob):
    return blob[:rng.randrange(len(blob))]


def m_trailing(rng, blob):
    return blob + bytes(rng.randrange(256) for _ in range(rng.choice([1, 3, 8, 100])))


def m_wrong_type(rng, blob):
    h, data = split(blob)
    junk = rng.choice(["x", 3, -1, 1.5, None, True, [], {}, [1, 2], {"a": 1}, [[1]], ["1", "2"]])
    key = rng.choice(_tensor_names(h) + ["__metadata__"])
    if key == "__metadata__":
        if "__metadata__" in h and rng.random() < 0.5 and h["__metadata__"]:
            h["__metadata__"][rng.choice(list(h["__metadata__"]))] = junk
        else:
            h["__metadata__"] = junk
    elif rng.random() < 0.2:
        h[key] = junk
    else:
        h[key][rng.choice(["dtype", "shape", "data_offsets"])] = junk
    return join(h, data)


def m_shape(rng, blob):
    def edit(rng, h, e):
        v = rng.choice([-1, -2**63, 2**63 - 1, 2**63, 2**64, 2**40, 2**31, 0, 1, 10**30])
        if e["shape"] and rng.random() < 0.7:
            e["shape"][rng.randrange(len(e["shape"]))] = v
        else:
            e["shape"] = e["shape"] + [v] if rng.random() < 0.5 else [v, v]
    return _edit_entry(rng, blob, edit)


def m_offsets(rng, blob):
    def edit(rng, h, e):
        b, en = e["data_offsets"]
        kind = rng.randrange(7)
        if kind == 0:
            e["data_offsets"] = [en, b]  # reversed
        elif kind == 1:
            e["data_offsets"] = [b - rng.choice([1, 2, 4]), en - rng.choice([0, 1, 2, 4])]  # overlap
        elif kind == 2:
            e["data_offsets"] = [b + rng.choice([1, 2, 4]), en + rng.choice([0, 1, 2, 4])]  # gap
        elif kind == 3:
            e["data_offsets"] = [b, en + rng.choice([1, 10**6, 2**62, 2**64])]  # out of range
        elif kind == 4:
            e["data_offsets"] = [b, en, en]
        elif kind == 5:
            e["data_offsets"] = [-b - 1, en]
        else:
            other = h[rng.choice(_tensor_names(h))]["data_offsets"]
            e["data_offsets"] = list(other)  # the same range as another tensor
    return _edit_entry(rng, blob, edit)


def m_dtype(rng, blob):
    def edit(rng, h, e):
        e["dtype"] = rng.choice(["F33", "f32", "", "F32 ", "FLOAT", "F8_E4M3FN", "F4", "I128", "BF16\u00e9",
                                 "F32\0", "BOOL", "U8", "F64", "I16", "C64", "F8_E8M0"])
    return _edit_entry(rng, blob, edit)


def m_duplicate_key(rng, blob):
    h, data = split(blob)
    names = _tensor_names(h)
    text = json.dumps(h, ensure_ascii=False)
    name = rng.choice(names)
    entry = json.dumps({name: h[name]}, ensure_ascii=False)[1:-1]
    where = rng.choice(["start", "end", "inner"])
    if where == "start":
        text = "{" + entry + "," + text[1:]
    elif where == "end":
        text = text[:-1] + "," + entry + "}"
    else:
        inner = json.dumps(h[name]["dtype"])
        text = text.replace(f'"dtype": {inner}', f'"dtype": {inner}, "dtype": "F64"', 1)
    return join(None, data, text.encode())


def m_invalid_utf8(rng, blob):
    n = struct.unpack("<Q", blob[:8])[0]
    header = blob[8:8 + n]
    quotes = [i for i, c in enumerate(header) if c == ord('"')]
    pos = rng.choice(quotes) + 1
    bad = rng.choice([b"\x80", b"\xc3", b"\xc0\xaf", b"\xe0\x80\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
                      b"\xff", b"\xfe", b"\xf8\x88\x80\x80\x80"])
    h = header[:pos] + bad + header[pos:]
    return struct.pack("<Q", len(h)) + h + blob[8 + n:]


def m_metadata(rng, blob):
    h, data = split(blob)
    h["__metadata__"] = rng.choice([{"k": 1}, {"k": ["a"]}, {"k": None}, "s", [], {"k": {"a": "b"}},
                                    {"k": "v", "\u00e9": "\U0001f600"}, {}])
    return join(h, data)


def m_benign(rng, blob):
    """The same file written differently: entry order, \\u escapes, whitespace, header padding."""
    h, data = split(blob)
    items = list(h.items())
    rng.shuffle(items)
    text = json.dumps(dict(items), ensure_ascii=rng.random() < 0.5, indent=rng.choice([None, 0, 2]))
    return join(None, data, (text + " " * rng.randrange(9)).encode())


MUTATIONS: list[Mutation] = [m_benign, m_benign, m_flip_length, m_flip_header, m_flip_header, m_overwrite_header, m_length_value,
                             m_truncate, m_trailing, m_wrong_type, m_shape, m_offsets, m_offsets, m_dtype,
                             m_duplicate_key, m_invalid_utf8, m_metadata]


def variant(i: int, seeds: list[bytes]) -> bytes:
    """Variant i: one to three seeded mutations of one of the seed files."""
    rng = random.Random(i)
    blob = seeds[i % len(seeds)]
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        try:
            blob = rng.choice(MUTATIONS)(rng, blob)
        except (ValueError, KeyError, IndexError, TypeError, struct.error, AttributeError):
            pass  # a later mutation may not apply to what an earlier one made: keep the bytes so far
    return blob


# ---------------------------------------------------------------- reading


def read_reference(path: str, blob: bytes):
    """(tensors {name: (dtype, shape, bytes)}, metadata) as the safetensors package reads them, or None."""
    from safetensors import _safetensors_rust as st

    try:
        tensors = {n: (v["dtype"], list(v["shape"]), bytes(v["data"])) for n, v in st.deserialize(blob)}
        with st.safe_open(path, "numpy") as f:
            meta = f.metadata() or {}
    except Exception:  # noqa: BLE001 - any refusal counts
        return None
    return tensors, meta


def read_mogen(C, path: str):
    r = C.SafetensorsReader(path)
    try:
        tensors = {n: (d, list(s), bytes(r.read(b, e, False).numpy().tobytes())) for n, d, s, b, e in r.tensors()}
        return tensors, dict(r.metadata)
    finally:
        r.close()


def judge(C, path: str, blob: bytes) -> str:
    """'rejected', 'rejected-stricter' (where the reference reads the file), 'accepted', or a failure:
    'unnamed-error ...', 'invalid-accepted', 'mismatch'."""
    with open(path, "wb") as f:
        f.write(blob)
    ref = read_reference(path, blob)
    try:
        mine = read_mogen(C, path)
    except Exception as exc:  # noqa: BLE001
        if isinstance(exc, C.SafetensorsError) and not isinstance(exc, UnicodeError) and path in str(exc):
            return "rejected" if ref is None else "rejected-stricter"  # the second: the reference reads it
        return f"unnamed-error {type(exc).__name__}: {str(exc)[:200]}"
    if ref is None:
        return "invalid-accepted"
    return "accepted" if mine == ref else "mismatch"


def worker(start: int, stop: int, path: str) -> None:
    """Judges variants [start, stop): prints 'start i' before each and 'i outcome' after, flushed, so the
    parent can tell which variant a crash happened in."""
    import mogen_ext

    C = mogen_ext._C
    seeds = seed_files()
    for i in range(start, stop):
        print(f"start {i}", flush=True)
        print(f"{i} {judge(C, path, variant(i, seeds))}", flush=True)


if __name__ == "__main__":
    worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
