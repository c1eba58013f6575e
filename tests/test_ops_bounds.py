"""The compiled ops check what they index with, whoever calls them: a caller of ``torch.ops.mogen`` (or
of ``mogen_ext._C``'s merge functions) that skips the Python wrappers gets an error naming the argument,
never an out-of-bounds read. Each case runs
in a child process, so that a missing check shows up as a crash of the child and not of the test run."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import mogen_ext

pytestmark = pytest.mark.skipif(not mogen_ext.has_cpu_kernels, reason=f"no compiled kernels: {mogen_ext.load_error}")

# Prints OK when fn raises a ValueError whose message holds every word (run in the child).
EXPECT = """
def expect(fn, *words):
    try:
        fn()
    except ValueError as exc:
        missing = [x for x in words if x not in str(exc)]
        print("OK" if not missing else f"message lacks {missing}: {exc}")
    else:
        print("no error")
"""

K1_PRELUDE = EXPECT + """
import torch, mogen_ext  # loading mogen_ext registers torch.ops.mogen
C = torch.ops.mogen
base = torch.randn(2, 20)
e, r = torch.randn(2, 10), torch.randn(2, 10)
w = torch.ones(2, 1)
def k1(vmap, topk=False):
    args = (base, [e], [r], [vmap], w, [1.0], 1.0, 1.0, 0.0)
    if topk == "argmax":
        return C.fused_log_ratio_argmax(*args)
    return C.fused_log_ratio_topk(*args, topk) if topk else C.fused_log_ratio(*args)
"""


def _child(code: str) -> str:
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"child crashed or failed (rc {r.returncode}):\n{r.stderr[-2000:]}"
    return r.stdout.strip()


def test_k1_rejects_an_out_of_range_map():
    cases = [(bad, topk) for bad in ("10", "1 << 30", "-2", "-(1 << 30)") for topk in (False, 3, 1, "'argmax'")]
    code = K1_PRELUDE + "".join(f"""
vmap = torch.randint(-1, 10, (20,), dtype=torch.int32)
vmap[7] = {bad}
expect(lambda: k1(vmap, {topk}), "vocab_maps[0]", "[0, 10)")
""" for bad, topk in cases)
    assert _child(code).splitlines() == ["OK"] * len(cases)


def test_k1_map_check_is_cached_but_sees_in_place_edits():
    out = _child(K1_PRELUDE + """
import time
vmap = torch.randint(-1, 10, (20,), dtype=torch.int32)
ref = k1(vmap)
for _ in range(3):
    assert torch.equal(k1(vmap), ref)      # a valid map, checked once, stays usable
vmap[3] = 10                                # in-place edit: the version moves, the map is checked again
expect(lambda: k1(vmap), "vocab_maps[0]")
vmap[3] = 2
k1(vmap)
with torch.inference_mode():               # inference tensors keep no version: checked every time
    m2 = torch.randint(-1, 10, (20,), dtype=torch.int32)
    k1(m2)
    m2[0] = 99
    expect(lambda: k1(m2), "vocab_maps[0]")
""")
    assert out.splitlines() == ["OK", "OK"], out


K3_PRELUDE = EXPECT + """
import torch, mogen_ext
from safetensors.torch import save_file
C = mogen_ext._C
save_file({"x": torch.ones(16)}, "/TMP/a.safetensors")
r = C.SafetensorsReader("/TMP/a.safetensors")
w = C.SafetensorsWriter("/TMP/o.safetensors", [("y", "F32", [16])], {})
"""

BIG = "(1 << 62)"
K3_CASES = {
    "source-offset-overflow": f"C.merge_to_files([(r, {BIG}, 'F32')], [1.0], [(w, 0, 'F32')], 16)",
    "source-numel-overflow": f"C.merge_to_files([(r, 0, 'F32')], [1.0], [(w, 0, 'F32')], {BIG})",
    "negative-source-offset": "C.merge_to_files([(r, -64, 'F32')], [1.0], [(w, 0, 'F32')], 16)",
    "negative-numel": "C.merge_to_files([(r, 0, 'F32')], [1.0], [(w, 0, 'F32')], -1)",
    "sink-offset-overflow": f"C.merge_to_files([(r, 0, 'F32')], [1.0], [(w, {BIG}, 'F32')], 16)",
    "sink-past-end": "C.merge_to_files([(r, 0, 'F32')], [1.0], [(w, 8, 'F32')], 16)",
    "read-overflow": f"r.read({BIG}, {BIG} + 8)",
    "copy-overflow": f"w.copy_from(0, r, {BIG}, {BIG})",
    "copy-sink-overflow": f"w.copy_from({BIG}, r, 0, 8)",
    "write-overflow": f"w.write({BIG}, torch.ones(4))",
    "tensor-offset-overflow": f"C.merge_to_tensor([(r, {BIG}, 'F32')], [1.0], torch.zeros(16))",
}


def test_k3_spans_are_checked(tmp_path):
    code = K3_PRELUDE.replace("/TMP", str(tmp_path)) + "".join(
        f"print({case!r}, end=' '); expect(lambda: {call})\n" for case, call in K3_CASES.items())
    assert _child(code).splitlines() == [f"{case} OK" for case in K3_CASES]


def test_k3_source_truncated_after_opening(tmp_path):
    # A mapped read of the lost pages would be a SIGBUS; K3 reads with pread and says so.
    code = K3_PRELUDE.replace("/TMP", str(tmp_path)) + textwrap.dedent("""
        import os
        os.truncate("/TMP/a.safetensors", os.path.getsize("/TMP/a.safetensors") - 32)
        expect(lambda: C.merge_to_files([(r, 0, 'F32')], [1.0], [(w, 0, 'F32')], 16), "a.safetensors", "truncated")
        expect(lambda: C.merge_to_tensor([(r, 0, 'F32')], [1.0], torch.zeros(16)), "a.safetensors", "truncated")
    """).replace("/TMP", str(tmp_path))
    assert _child(code).splitlines() == ["OK", "OK"]
