"""K1 (multi-vocabulary log-ratio fusion) against an independent fp64 computation.

`expected()` below re-derives docs/design.md section 1 in numpy float64, independent of
both the kernels and `mogen.reference`; the reference is checked against it too.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import mogen_ext
from markers import requires_cuda_kernels as cuda
from mogen import _backend, ops, reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# The kernels upcast inputs exactly and accumulate in fp32, so against fp64 on the
# same (rounded) inputs only fp32 accumulation error remains; scores of O(10) for
# half inputs carry a little more of it through the larger logits they see.
TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-4, torch.float16: 2e-4}


def _log_softmax64(x: np.ndarray, temperature: float) -> np.ndarray:
    x = x.astype(np.float64) / temperature
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def expected(base, experts, refs, weights, vocab_maps=None, beta=1.0, base_temperature=1.0, temperatures=None,
             unmapped=0.0) -> np.ndarray:
    """docs/design.md section 1 in float64 numpy, [B, V_b]."""
    m = len(experts)
    maps = vocab_maps or [None] * m
    temps = temperatures if temperatures is not None else [1.0] * m
    np64 = lambda t: t.detach().cpu().to(torch.float64).numpy()  # noqa: E731
    out = _log_softmax64(np64(base), base_temperature)
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim == 1:
        w = np.broadcast_to(w, (out.shape[0], m))
    for i in range(m):
        diff = _log_softmax64(np64(experts[i]), temps[i]) - _log_softmax64(np64(refs[i]), temps[i])
        if maps[i] is not None:
            ids = maps[i].cpu().numpy().astype(np.int64)
            diff = np.where(ids[None, :] >= 0, diff[:, np.clip(ids, 0, None)], unmapped)
        out = out + beta * w[:, i : i + 1] * diff
    return out


def make_case(batch, vocab, guide_vocabs, dtype, *, device="cpu", seed=0, strided=False, per_row=False,
              unmapped_frac=0.1, mixed=False):
    """Random logits for a base and one guide per entry of `guide_vocabs` (None = shared vocabulary).

    `strided` slices the logits out of wider (padded) matrices, as `logits[:, :n]` does.
    `mixed` gives the guides dtypes other than the base's.
    """
    g = torch.Generator().manual_seed(seed)

    def logits(v, dt):
        pad = 7 if strided else 0
        full = torch.randn(batch, v + pad, generator=g) * 4.0
        return full.to(dt)[:, :v].to(device)

    base = logits(vocab, dtype)
    experts, refs, maps = [], [], []
    for i, gv in enumerate(guide_vocabs):
        dt = DTYPES[(DTYPES.index(dtype) + i + 1) % 3] if mixed else dtype
        v_i = vocab if gv is None else gv
        experts.append(logits(v_i, dt))
        refs.append(logits(v_i, dt))
        if gv is None:
            maps.append(None)
        else:
            ids = torch.randint(0, gv, (vocab,), generator=g, dtype=torch.int32)
            ids[torch.rand(vocab, generator=g) < unmapped_frac] = -1
            maps.append(ids.to(device))
    m = len(guide_vocabs)
    shape = (batch, m) if per_row else (m,)
    weights = (torch.rand(shape, generator=g) * 2.0 - 0.5).to(device)
    return base, experts, refs, maps, weights


def rel_err(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """|got - want| / (1 + |want|), 0 where both are the same infinity, NaN where only one is."""
    same_inf = np.isinf(want) & (got == want)
    with np.errstate(invalid="ignore"):
        return np.where(same_inf, 0.0, np.abs(got - want) / (1.0 + np.abs(want)))


def assert_close(got: torch.Tensor, want: np.ndarray, tol: float) -> None:
    assert got.dtype == torch.float32
    assert tuple(got.shape) == want.shape
    err = rel_err(got.detach().cpu().to(torch.float64).numpy(), want)
    assert not np.isnan(err).any(), "NaN or a wrong infinity where the fp64 result differs"
    assert err.max(initial=0.0) <= tol, f"max relative error {err.max():.3g} > {tol}"


def test_extension_is_built():
    # Every other CPU test would silently run the reference without this.
    assert mogen_ext.has_cpu_kernels, mogen_ext.load_error
    info = mogen_ext.build_info()
    assert info["torch_version"].split("+")[0] == torch.__version__.split("+")[0]


CASES = [
    # batch, vocab, guide vocabs (None = shared), strided, per_row
    (3, 17, [None], False, False),
    (1, 17, [13, None], True, True),
    (33, 1019, [None, 700, 1500], True, True),
    (8, 1019, [1019], False, False),
    (1, 4099, [], False, False),
    (2, 151936, [None, 32000], True, True),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("batch,vocab,guides,strided,per_row", CASES)
def test_matches_fp64(batch, vocab, guides, strided, per_row, dtype):
    if vocab > 100_000 and dtype != torch.float32 and batch > 1:
        batch = 1  # keep the suite quick; the fp32 case covers B = 2
    base, experts, refs, maps, w = make_case(batch, vocab, guides, dtype, strided=strided, per_row=per_row,
                                             seed=vocab + batch)
    kw = dict(vocab_maps=maps, beta=1.3, base_temperature=0.8, temperatures=[0.7 + 0.3 * i for i in range(len(guides))],
              unmapped=-1.5)
    want = expected(base, experts, refs, w, **kw)
    assert_close(ops.fused_log_ratio(base, experts, refs, w, **kw), want, TOL[dtype])
    k = min(vocab, 7)
    values, ids = ops.fused_log_ratio_topk(base, experts, refs, w, k, **kw)
    check_topk(values, ids, want, k, TOL[dtype])
    check_argmax(*ops.fused_log_ratio_argmax(base, experts, refs, w, **kw), want, TOL[dtype])


def check_argmax(values: torch.Tensor, ids: torch.Tensor, want: np.ndarray, tol: float) -> None:
    assert values.dtype == torch.float32 and ids.dtype == torch.int64
    assert tuple(values.shape) == tuple(ids.shape) == (want.shape[0],)
    v = values.cpu().to(torch.float64).numpy()
    i = ids.cpu().numpy()
    assert np.all(rel_err(v, want.max(axis=1, initial=-np.inf)) <= tol), "argmax values differ from the fp64 max"
    assert np.all(rel_err(v, want[np.arange(len(i)), i]) <= tol), "ids do not point at their values"


def check_topk(values: torch.Tensor, ids: torch.Tensor, want: np.ndarray, k: int, tol: float) -> None:
    assert values.dtype == torch.float32 and ids.dtype == torch.int64
    assert tuple(values.shape) == tuple(ids.shape) == (want.shape[0], k)
    v = values.cpu().to(torch.float64).numpy()
    i = ids.cpu().numpy()
    best = -np.sort(-want, axis=1)[:, :k]
    assert np.all(rel_err(v, best) <= tol), "top-k values differ from the fp64 top-k"
    # ids point at their values, are distinct, and come best first.
    assert np.all(rel_err(v, np.take_along_axis(want, i, axis=1)) <= tol)
    assert all(len(set(row)) == k for row in i)
    assert np.all(v[:, 1:] <= v[:, :-1])


def test_reference_matches_fp64():
    base, experts, refs, maps, w = make_case(5, 301, [None, 200], torch.float32, per_row=True, strided=True)
    kw = dict(vocab_maps=maps, beta=0.7, base_temperature=1.2, temperatures=[0.5, 2.0], unmapped=0.25)
    got = reference.fused_log_ratio(base, experts, refs, w, dtype=torch.float64, **kw)
    assert np.abs(got.numpy() - expected(base, experts, refs, w, **kw)).max() < 1e-10


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_mixed_dtypes_across_guides(dtype):
    base, experts, refs, maps, w = make_case(4, 1019, [None, 513], dtype, mixed=True, per_row=True)
    want = expected(base, experts, refs, w, vocab_maps=maps)
    assert_close(ops.fused_log_ratio(base, experts, refs, w, vocab_maps=maps), want, 2e-4)


def test_empty_batch():
    base, experts, refs, maps, w = make_case(0, 17, [None, 11], torch.float32, per_row=True)
    out = ops.fused_log_ratio(base, experts, refs, w, vocab_maps=maps)
    assert out.shape == (0, 17) and out.dtype == torch.float32
    values, ids = ops.fused_log_ratio_topk(base, experts, refs, w, 3, vocab_maps=maps)
    assert values.shape == ids.shape == (0, 3)


def test_masked_logits_and_zero_weight_rows():
    base, experts, refs, maps, _ = make_case(3, 257, [None, 100], torch.float32)
    base[:, 10:200] = float("-inf")  # banned tokens stay banned
    w = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, -0.5]])
    want = expected(base, experts, refs, w, vocab_maps=maps)
    got = ops.fused_log_ratio(base, experts, refs, w, vocab_maps=maps)
    assert_close(got, want, 1e-4)
    assert torch.isneginf(got[:, 10:200]).all()
    # Row 0 has every guide weighted 0: exactly the base's log-softmax.
    assert torch.allclose(got[0], torch.log_softmax(base[0], -1), atol=1e-5)
    # More wanted than finite scores: -inf entries fill the tail, lowest ids first.
    values, ids = ops.fused_log_ratio_topk(base, experts, refs, w, 80, vocab_maps=maps)
    check_topk(values, ids, want, 80, 1e-4)
    assert torch.isneginf(values[:, 67:]).all()
    assert torch.equal(ids[:, 67:], torch.arange(10, 23).expand(3, 13))


def test_topk_ties_prefer_lower_ids():
    base = torch.zeros(2, 50)
    values, ids = ops.fused_log_ratio_topk(base, [], [], [], 5)
    assert torch.equal(ids, torch.arange(5).expand(2, 5))
    assert torch.allclose(values, torch.full((2, 5), -math.log(50.0)))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=cuda)])
def test_argmax_ties_prefer_lower_ids_and_nan_ranks_first(device):
    # V = 20000 splits each row into several vocab chunks (and CPU tiles) for B = 3 on any machine.
    base = torch.zeros(3, 20000)
    base[1, [17000, 9001, 9000, 16383]] = 5.0           # ties across chunks and tiles: the lowest id wins
    base[2] = float("-inf")
    base[2, [100, 19999]] = torch.tensor([-1.0, 0.0])   # the best is the very last id
    g = torch.randn(3, 300)                               # expert == reference: the guide adds exactly 0
    vmap = torch.randint(0, 300, (20000,), dtype=torch.int32)
    base, g, vmap = base.to(device), g.to(device), vmap.to(device)
    kw = dict(vocab_maps=[vmap])
    values, ids = ops.fused_log_ratio_argmax(base, [g], [g], [0.5], **kw)
    assert ids.tolist() == [0, 9000, 19999]
    # The same as torch.argmax of the eager composite, and as the top-k path's k = 1.
    scores = reference.fused_log_ratio(base, [g], [g], torch.tensor([0.5], device=device), **kw)
    assert torch.equal(ids, torch.argmax(scores, dim=-1))
    torch.testing.assert_close(values, scores.amax(dim=-1), atol=1e-4, rtol=1e-4)
    v1, i1 = ops.fused_log_ratio_topk(base, [g], [g], [0.5], 1, **kw)
    assert torch.equal(i1[:, 0], ids) and torch.equal(v1[:, 0], values)

    # NaN scores (the raw op takes a NaN `unmapped`, which lands where the map is -1) rank above
    # everything, the first NaN first, as in torch.argmax and torch.topk; also through the op's top-k k = 1.
    vmap[[15000, 12000]] = -1
    base[:, 5] = 9.0
    args = (base, [g], [g], [vmap], torch.ones(3, 1, device=device), [1.0], 1.0, 1.0, float("nan"))
    for values, ids in (torch.ops.mogen.fused_log_ratio_argmax(*args), torch.ops.mogen.fused_log_ratio_topk(*args, 1)):
        assert ids.flatten().tolist() == [12000] * 3 and torch.isnan(values).all()


def test_topk_full_row_and_large_k():
    base, experts, refs, maps, w = make_case(3, 40000, [None, 30000], torch.float32, per_row=True)
    want = expected(base, experts, refs, w, vocab_maps=maps)
    for k in (1, 1500, 40000):
        values, ids = ops.fused_log_ratio_topk(base, experts, refs, w, k, vocab_maps=maps)
        check_topk(values, ids, want, k, 1e-4)


def test_shared_vocab_equals_eq12_on_raw_logits():
    # With one vocabulary, the design's fused score and MPAW eq. 12 (weighted raw-logit
    # ratios) differ by a per-row constant, so they rank tokens the same.
    base, experts, refs, _, w = make_case(4, 517, [None, None], torch.float32, per_row=True)
    fused = ops.fused_log_ratio(base, experts, refs, w).double()
    raw = base.double() + sum(w[:, i : i + 1].double() * (experts[i].double() - refs[i].double()) for i in range(2))
    shift = fused - raw
    assert torch.allclose(shift, shift[:, :1].expand_as(shift), atol=1e-4)
    assert torch.equal(fused.argmax(-1), raw.argmax(-1))


def test_weights_as_list_and_scalar_temperature():
    base, experts, refs, _, _ = make_case(2, 64, [None, None], torch.float32)
    want = expected(base, experts, refs, [0.25, 0.75], temperatures=[1.5, 1.5])
    assert_close(ops.fused_log_ratio(base, experts, refs, [0.25, 0.75], temperatures=1.5), want, 1e-4)


def test_single_tensor_guide_is_accepted():
    base, experts, refs, _, _ = make_case(2, 64, [None], torch.float32)
    want = expected(base, experts, refs, [0.5])
    assert_close(ops.fused_log_ratio(base, experts[0], refs[0], [0.5]), want, 1e-4)


def test_reference_fallback_warns_once_and_agrees(monkeypatch):
    base, experts, refs, maps, w = make_case(3, 333, [None, 200], torch.float32, per_row=True)
    monkeypatch.setattr(_backend, "has_kernels_for", lambda device: False)
    monkeypatch.setattr(_backend, "_warned", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = ops.fused_log_ratio(base, experts, refs, w, vocab_maps=maps)
        ops.fused_log_ratio(base, experts, refs, w, vocab_maps=maps)
    assert sum("falling back" in str(c.message) for c in caught) == 1
    assert_close(got, expected(base, experts, refs, w, vocab_maps=maps), 1e-4)


# ---------------------------------------------------------------- bad input


@pytest.fixture
def good():
    base, experts, refs, maps, w = make_case(2, 20, [None, 10], torch.float32)
    return dict(base_logits=base, expert_logits=experts, ref_logits=refs, weights=w, vocab_maps=maps)


def call(args, **over):
    a = dict(args)
    a.update(over)
    return ops.fused_log_ratio(a.pop("base_logits"), a.pop("expert_logits"), a.pop("ref_logits"),
                               a.pop("weights"), **a)


@pytest.mark.parametrize(
    "over,exc,match",
    [
        (lambda g: dict(expert_logits=[g["expert_logits"][0][:1], g["expert_logits"][1]]), ValueError, "batch"),
        (lambda g: dict(vocab_maps=[None, torch.zeros(19, dtype=torch.int32)]), ValueError, r"vocab_maps\[1\].*shape"),
        (lambda g: dict(vocab_maps=[None, torch.full((20,), 10, dtype=torch.int32)]), ValueError,
         r"vocab_maps\[1\].*vocabulary size 10"),
        (lambda g: dict(vocab_maps=[None, torch.full((20,), -2, dtype=torch.int32)]), ValueError, r"vocab_maps\[1\]"),
        (lambda g: dict(vocab_maps=[None, torch.zeros(20, dtype=torch.int64)]), TypeError, r"vocab_maps\[1\].*int32"),
        (lambda g: dict(vocab_maps=None), ValueError, r"expert_logits\[1\].*vocab_maps\[1\]"),
        (lambda g: dict(base_logits=g["base_logits"].long()), TypeError, "base_logits"),
        (lambda g: dict(base_logits=g["base_logits"][0]), ValueError, "base_logits.*2-D"),
        (lambda g: dict(ref_logits=[g["ref_logits"][0].half(), g["ref_logits"][1]]), TypeError, "dtype|ref_logits"),
        (lambda g: dict(ref_logits=g["ref_logits"][:1]), ValueError, "ref_logits"),
        (lambda g: dict(weights=[1.0]), ValueError, "weights.*2 guides"),
        (lambda g: dict(weights=torch.ones(3, 2)), ValueError, "weights"),
        (lambda g: dict(weights=[1.0, float("nan")]), ValueError, "weights.*finite"),
        (lambda g: dict(weights=torch.tensor([1.0, float("inf")])), ValueError, "weights.*finite"),
        (lambda g: dict(temperatures=[1.0, 0.0]), ValueError, r"temperatures\[1\]"),
        (lambda g: dict(temperatures=[1.0, float("nan")]), ValueError, r"temperatures\[1\]"),
        (lambda g: dict(base_temperature=-1.0), ValueError, "base_temperature"),
        (lambda g: dict(beta=float("inf")), ValueError, "beta"),
        (lambda g: dict(unmapped=float("nan")), ValueError, "unmapped"),
        (lambda g: dict(expert_logits="x"), TypeError, "expert_logits"),
    ],
)
def test_bad_input(good, over, exc, match):
    with pytest.raises(exc, match=match):
        call(good, **over(good))


def test_bad_k(good):
    for k in (0, 21, 2.5, True):
        with pytest.raises(ValueError, match="k must be"):
            ops.fused_log_ratio_topk(good["base_logits"], good["expert_logits"], good["ref_logits"], good["weights"],
                                     k, vocab_maps=good["vocab_maps"])


def test_kernel_rejects_bad_input_directly(good):
    # The compiled op checks for itself too: never a crash.
    C = torch.ops.mogen
    base = good["base_logits"]
    w = torch.ones(2, 1)
    with pytest.raises(ValueError, match="batch"):
        C.fused_log_ratio(base, [torch.zeros(3, 20)], [torch.zeros(3, 20)], [None], w, [1.0], 1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="vocab_maps"):
        C.fused_log_ratio(base, [torch.zeros(2, 5)], [torch.zeros(2, 5)], [torch.zeros(3, dtype=torch.int32)], w,
                          [1.0], 1.0, 1.0, 0.0)
    with pytest.raises(TypeError, match="int32"):
        C.fused_log_ratio(base, [torch.zeros(2, 5)], [torch.zeros(2, 5)], [torch.zeros(20)], w, [1.0], 1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="weights"):
        C.fused_log_ratio(base, [torch.zeros(2, 20)], [torch.zeros(2, 20)], [None], torch.ones(2, 2), [1.0], 1.0, 1.0,
                          0.0)


def test_map_range_checked_once_per_map_on_the_fallback(good, monkeypatch):
    # The compiled ops range-check maps themselves (cached likewise, tests/test_ops_bounds.py);
    # the wrapper checks them only for the reference fallback.
    monkeypatch.setattr(_backend, "has_kernels_for", lambda device: False)
    monkeypatch.setattr(_backend, "_warned", True)
    calls = []
    real = ops.checks._map_range
    monkeypatch.setattr(ops.checks, "_map_range", lambda t: calls.append(1) or real(t))  # where _check_map finds it
    vmap = torch.randint(-1, 10, (20,), dtype=torch.int32)
    for _ in range(5):
        call(good, vocab_maps=[None, vmap])
    assert len(calls) == 1
    vmap[0] = 10  # an in-place edit bumps the version: checked again, and caught
    with pytest.raises(ValueError, match="vocabulary size 10"):
        call(good, vocab_maps=[None, vmap])
    assert len(calls) == 2


# ---------------------------------------------------------------- CUDA


@cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("batch,vocab,guides,strided,per_row", CASES)
def test_cuda_matches_fp64(batch, vocab, guides, strided, per_row, dtype):
    base, experts, refs, maps, w = make_case(batch, vocab, guides, dtype, device="cuda", strided=strided,
                                             per_row=per_row, seed=vocab + batch)
    kw = dict(vocab_maps=maps, beta=1.3, base_temperature=0.8, temperatures=[0.7 + 0.3 * i for i in range(len(guides))],
              unmapped=-1.5)
    want = expected(base, experts, refs, w, **kw)
    assert_close(ops.fused_log_ratio(base, experts, refs, w, **kw), want, TOL[dtype])
    for k in (1, min(vocab, 7), min(vocab, 1024), min(vocab, 1500)):
        values, ids = ops.fused_log_ratio_topk(base, experts, refs, w, k, **kw)
        check_topk(values, ids, want, k, TOL[dtype])
    check_argmax(*ops.fused_log_ratio_argmax(base, experts, refs, w, **kw), want, TOL[dtype])


@cuda
def test_cuda_masked_logits_topk():
    base, experts, refs, maps, _ = make_case(3, 40000, [None, 100], torch.float32, device="cuda")
    base[:, 10:39990] = float("-inf")
    w = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, -0.5]], device="cuda")
    want = expected(base, experts, refs, w, vocab_maps=maps)
    values, ids = ops.fused_log_ratio_topk(base, experts, refs, w, 40, vocab_maps=maps)
    check_topk(values, ids, want, 40, 1e-4)
    assert torch.equal(ids[:, 20:].cpu(), torch.arange(10, 30).expand(3, 20))


def test_package_works_without_the_extension():
    # A real missing _C (not a monkeypatch): mogen imports, reports why, warns
    # once and computes with the reference.
    import subprocess
    import sys

    code = """
import sys, warnings
sys.modules["mogen_ext._C"] = None  # makes `import mogen_ext._C` raise ImportError
import torch, mogen_ext
from mogen import ops
assert not mogen_ext.has_cpu_kernels and not mogen_ext.has_cuda_kernels
assert mogen_ext.load_error and "load_error" in mogen_ext.build_info()
torch.manual_seed(0)
b, e, r = torch.randn(2, 9), torch.randn(2, 9), torch.randn(2, 9)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    out = ops.fused_log_ratio(b, [e], [r], [0.5])
    ops.fused_log_ratio_topk(b, [e], [r], [0.5], 3)
assert sum("falling back" in str(c.message) for c in caught) == 1, caught
want = torch.log_softmax(b, -1) + 0.5 * (torch.log_softmax(e, -1) - torch.log_softmax(r, -1))
assert torch.allclose(out, want, atol=1e-5)
print("ok")
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_inference_mode_tensors(good):
    # Inference tensors have no version counter: checked every call, never cached.
    with torch.inference_mode():
        vmap = torch.randint(-1, 10, (20,), dtype=torch.int32)
        w = torch.tensor([0.5, 0.5])
        want = expected(good["base_logits"], good["expert_logits"], good["ref_logits"], w, vocab_maps=[None, vmap])
        for _ in range(2):
            assert_close(call(good, vocab_maps=[None, vmap], weights=w), want, 1e-4)
        vmap[0] = 10
        with pytest.raises(ValueError, match="vocabulary size 10"):
            call(good, vocab_maps=[None, vmap], weights=w)
