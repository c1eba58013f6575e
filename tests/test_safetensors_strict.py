"""The C++ safetensors reader is strict where the format is: invalid UTF-8 anywhere in the header is
refused (as the safetensors reference implementation does), and every error names the file."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors import safe_open

import mogen_ext

pytestmark = pytest.mark.skipif(not mogen_ext.has_cpu_kernels, reason=f"no compiled kernels: {mogen_ext.load_error}")

META = "__metadata__"


def _write(path, header: bytes, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header + data)
    return str(path)


def _header(meta_value: bytes = b"v", name: bytes = b"w", dtype: bytes = b"F32") -> bytes:
    return (b'{"' + META.encode() + b'":{"k":"' + meta_value + b'"},"' + name + b'":{"dtype":"' + dtype
            + b'","shape":[2],"data_offsets":[0,8]}}')


BAD_UTF8 = {
    "lone-continuation": b"\x80",
    "truncated-2-byte": b"\xc3",
    "overlong-2-byte": b"\xc0\xaf",
    "overlong-3-byte": b"\xe0\x80\xaf",
    "utf16-surrogate": b"\xed\xa0\x80",
    "above-u10ffff": b"\xf4\x90\x80\x80",
    "byte-ff": b"\xff",
    "bit-flip-in-e9": b"caf\xa9",  # 'é' = c3 a9 with its lead byte flipped away
}


@pytest.mark.parametrize("where", ["metadata", "name", "dtype"])
@pytest.mark.parametrize("bad", list(BAD_UTF8.values()), ids=list(BAD_UTF8))
def test_invalid_utf8_is_refused_naming_the_file(tmp_path, where, bad):
    parts = {"metadata": dict(meta_value=b"a" + bad + b"b"), "name": dict(name=b"w" + bad),
             "dtype": dict(dtype=b"F32" + bad)}[where]
    path = _write(tmp_path / "bad.safetensors", _header(**parts), b"\0" * 8)
    with pytest.raises(Exception) as info:
        safe_open(path, "pt")  # the reference implementation refuses it too
    with pytest.raises(ValueError) as info:
        mogen_ext._C.SafetensorsReader(path)
    assert not isinstance(info.value, UnicodeError), f"bare {type(info.value).__name__}: {info.value}"
    assert path in str(info.value) and "UTF-8" in str(info.value)


def test_valid_utf8_everywhere_is_read(tmp_path):
    name, value = "wé\u4e2d\U0001f600", "caf\u00e9 \U0001f600 \u00ff"
    header = json.dumps({META: {"k\u00e9": value}, name: {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
                        ensure_ascii=False).encode()
    path = _write(tmp_path / "ok.safetensors", header, struct.pack("<2f", 1.5, -2.0))
    r = mogen_ext._C.SafetensorsReader(path)
    assert r.metadata == {"k\u00e9": value}
    assert [t[0] for t in r.tensors()] == [name]
    assert torch.equal(r.read(0, 8).view(torch.float32), torch.tensor([1.5, -2.0]))


def test_escaped_and_raw_utf8_decode_alike(tmp_path):
    raw = _write(tmp_path / "raw.safetensors", _header(meta_value="\u00e9\U0001f600".encode()), b"\0" * 8)
    esc = _write(tmp_path / "esc.safetensors", _header(meta_value=b"\\u00e9\\ud83d\\ude00"), b"\0" * 8)
    assert mogen_ext._C.SafetensorsReader(raw).metadata == mogen_ext._C.SafetensorsReader(esc).metadata
