"""Bad input to the merge engine: a clear error, and no output folder (or temporary) left behind."""

from __future__ import annotations

import json
import os
import struct

import pytest
import torch

import mogen
import mogen_ext
from mogen.merging import engine
from merge_helpers import model_tensors, save_ckpt

pytestmark = pytest.mark.skipif(not mogen_ext.has_cpu_kernels, reason=f"no compiled kernels: {mogen_ext.load_error}")


def raw_file(path, header, data: bytes = b"", header_len=None) -> str:
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(h) if header_len is None else header_len
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", n) + h + data)
    return str(path)


GOOD = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F16", "shape": [2], "data_offsets": [8, 12]}}


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda p: p.write_bytes(b"\x01\x02"), "truncated"),
        (lambda p: raw_file(p, b"{not json", b""), "corrupt header"),
        (lambda p: raw_file(p, GOOD, b"\0" * 12, header_len=10_000), "past the end"),
        (lambda p: raw_file(p, GOOD, b"\0" * 12, header_len=2**40), "100 MB"),
        (lambda p: raw_file(p, GOOD, b"\0" * 8), "truncated"),
        (lambda p: raw_file(p, GOOD, b"\0" * 20), "after the last"),
        (lambda p: raw_file(p, {**GOOD, "b": {"dtype": "F16", "shape": [2], "data_offsets": [6, 10]}}, b"\0" * 12),
         "overlapping"),
        (lambda p: raw_file(p, {**GOOD, "b": {"dtype": "F16", "shape": [2], "data_offsets": [10, 14]}}, b"\0" * 14),
         "gap"),
        (lambda p: raw_file(p, b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
                               b'"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}', b"\0" * 8),
         "duplicate"),
        (lambda p: raw_file(p, {"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8),
         "needs 12"),
        (lambda p: raw_file(p, {"w": {"dtype": "F33", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8),
         "unknown dtype"),
        (lambda p: raw_file(p, {"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8),
         "negative"),
        (lambda p: raw_file(p, {"w": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 8]}}, b"\0" * 8),
         "overflow"),
        (lambda p: raw_file(p, {"w": {"dtype": "F32", "shape": [2]}}, b"\0" * 8), "missing data_offsets"),
    ],
    ids=["tiny-file", "bad-json", "header-past-end", "header-huge", "truncated-data", "trailing-bytes", "overlap",
         "gap", "duplicate-name", "size-mismatch", "bad-dtype", "negative-dim", "size-overflow", "no-offsets"],
)
def test_corrupt_files_are_refused(tmp_path, make, match):
    bad = tmp_path / "bad"
    bad.mkdir()
    make(bad / "model.safetensors")
    good = save_ckpt(tmp_path / "good", {"w": torch.ones(2), "b": torch.ones(2).half()})
    with pytest.raises(ValueError, match=match):
        mogen.merge([good, bad], [0.5, 0.5], tmp_path / "out", progress=False)
    assert sorted(os.listdir(tmp_path)) == ["bad", "good"]


@pytest.fixture
def pair(tmp_path):
    return save_ckpt(tmp_path / "a", model_tensors(0)), save_ckpt(tmp_path / "b", model_tensors(1))


def _clean(tmp_path, *keep):
    assert sorted(os.listdir(tmp_path)) == sorted(["a", "b", *keep])


def test_shape_mismatch(tmp_path, pair):
    sd = model_tensors(2)
    sd["model.norm.weight"] = torch.ones(5)
    c = save_ckpt(tmp_path / "c", sd)
    with pytest.raises(ValueError, match="model.norm.weight.*different shapes"):
        mogen.merge([pair[0], c], [0.5, 0.5], tmp_path / "out", progress=False)
    _clean(tmp_path, "c")


def test_missing_tensor(tmp_path, pair):
    sd = model_tensors(2)
    del sd["v_head.bias"]
    c = save_ckpt(tmp_path / "c", sd)
    with pytest.raises(ValueError, match="v_head.bias.*missing"):
        mogen.merge([pair[0], c], [0.5, 0.5], tmp_path / "out", progress=False)
    _clean(tmp_path, "c")


def test_duplicate_name_across_shards(tmp_path, pair):
    d = tmp_path / "c"
    d.mkdir()
    from safetensors.torch import save_file
    save_file({"x": torch.ones(1)}, str(d / "s1.safetensors"))
    save_file({"x": torch.ones(1)}, str(d / "s2.safetensors"))
    with pytest.raises(ValueError, match="duplicate tensor name 'x'"):
        mogen.merge([d, d], [0.5, 0.5], tmp_path / "out", progress=False)
    _clean(tmp_path, "c")


@pytest.mark.parametrize("coef", [[0.5, float("nan")], [float("inf"), 1.0], [[1.0, 0.0], [0.0, float("-inf")]]])
def test_non_finite_coefficients(tmp_path, pair, coef):
    outs = tmp_path / "out" if len(coef) == 2 and not isinstance(coef[0], list) else [tmp_path / "o1", tmp_path / "o2"]
    with pytest.raises(ValueError, match="finite"):
        mogen.merge(list(pair), coef, outs, progress=False)
    _clean(tmp_path)


@pytest.mark.parametrize(
    "kw,exc,match",
    [
        (dict(coefficients=[1.0]), ValueError, r"\[N\] or \[K, N\]"),
        (dict(method="nope"), ValueError, "unknown merge method"),
        (dict(method="ties"), ValueError, "base="),
        (dict(method="slerp", coefficients=None), ValueError, "needs t"),
        (dict(dtype="int8"), ValueError, "dtype"),
        (dict(shard_size="lots"), ValueError, "shard_size"),
        (dict(bogus=1), TypeError, "unexpected parameters: bogus"),
        (dict(on_missing="maybe"), ValueError, "on_missing"),
        (dict(rules=[("(", "skip")]), ValueError, "not a valid regex"),
        (dict(method="bone_soup", coefficients=[0.5, 0.5]), ValueError, "beta"),
        (dict(method="bone_soup", coefficients=[0.5, 0.5], bone_beta=0.5), ValueError, "singular"),
    ],
)
def test_bad_arguments(tmp_path, pair, kw, exc, match):
    kw = {"coefficients": [0.5, 0.5], **kw}
    with pytest.raises(exc, match=match):
        mogen.merge(list(pair), kw.pop("coefficients"), tmp_path / "out", progress=False, **kw)
    _clean(tmp_path)


def test_output_exists_unless_overwrite(tmp_path, pair):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="already exists"):
        mogen.merge(list(pair), [0.5, 0.5], tmp_path / "out", progress=False)
    assert os.listdir(tmp_path / "out") == ["keep.txt"]
    mogen.merge(list(pair), [0.5, 0.5], tmp_path / "out", progress=False, overwrite=True)
    assert "keep.txt" not in os.listdir(tmp_path / "out")
    _clean(tmp_path, "out")


def test_output_cannot_be_written(tmp_path, pair):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(PermissionError, match="cannot be written"):
        mogen.merge(list(pair), [0.5, 0.5], tmp_path / "afile" / "out", progress=False)
    _clean(tmp_path, "afile")


def test_output_overlapping_a_source(tmp_path, pair):
    with pytest.raises(ValueError, match="overlaps input"):
        mogen.merge(list(pair), [0.5, 0.5], pair[0], progress=False, overwrite=True)
    assert (pair[0] / "model.safetensors").exists()


def test_write_failing_midway(tmp_path, pair, monkeypatch):
    calls = {"n": 0}
    real = engine._call_kernel

    def flaky(*a):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(28, "No space left on device")
        return real(*a)

    monkeypatch.setattr(engine, "_call_kernel", flaky)
    with pytest.raises(OSError, match="No space"):
        mogen.merge(list(pair), [[0.5, 0.5], [1, 0]], [tmp_path / "o1", tmp_path / "nested" / "o2"],
                    shard_size="10KB", progress=False)
    assert calls["n"] == 5
    _clean(tmp_path)


def test_real_write_error_from_the_os(tmp_path, pair):
    # A file-size limit makes the kernel's pwrite fail with EFBIG (SIGXFSZ ignored): the
    # OS error surfaces as an OSError naming the shard, and nothing is left behind.
    import subprocess
    import sys
    code = f"""
import resource, signal, os, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
import mogen
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
try:
    mogen.merge([{str(pair[0])!r}, {str(pair[1])!r}], [0.5, 0.5], {str(tmp_path / 'out')!r}, progress=False)
except OSError as e:
    print("OSError", e)
"""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "OSError" in r.stdout and "File too large" in r.stdout, r.stdout + r.stderr
    _clean(tmp_path)
