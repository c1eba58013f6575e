"""K2 (top-k value scores) against an independent fp64 computation.

`expected()` computes the whole head ``hidden @ weight.T`` in numpy float64 and
picks the candidates out of it, independent of both the kernels and
`mogen.reference` (which gathers rows first); the reference is checked too.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from markers import requires_cuda_kernels as cuda
from mogen import _backend, ops, reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DT_IDS = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
C = torch.ops.mogen  # the compiled ops, without the Python wrappers

# The fp64 expectation is computed from the same (already rounded) bf16 / fp16
# values the kernels read, and the product of two bf16 or fp16 numbers (8 or 11
# significant bits each) is exact in fp32: what remains is fp32 accumulation
# error alone, for every dtype. It is bounded by ~(depth * eps32) * sum |h * w|
# with depth ~ H / 16 + 16 for the kernels' 16-lane (CPU) or 32-lane (CUDA)
# blocked sums; random signs make it far smaller in practice. A tolerance of
# TOL * sum |h * w| leaves a 10x margin over observed errors and still catches
# one dropped or wrong element (an error of ~|h * w| ~ sum |h * w| / H).
TOL = {torch.float32: 1e-6, torch.bfloat16: 1e-6, torch.float16: 1e-6}

_weights: dict = {}


def head(vocab: int, size: int, dtype: torch.dtype, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """A cached random value head ``[V, H]`` and bias ``[V]`` (fp32 bias, ~N(0, 1) weights)."""
    key = (vocab, size, dtype, str(device))
    if key not in _weights:
        g = torch.Generator().manual_seed(vocab * 7919 + size)
        w = torch.randn(vocab, size, generator=g).to(dtype).to(device)
        b = torch.randn(vocab, generator=g).to(device)
        _weights[key] = (w, b)
    return _weights[key]


def hidden_states(batch: int, size: int, dtype: torch.dtype, *, strided: bool = False, seed: int = 0,
                  device="cpu") -> torch.Tensor:
    """``[B, H]``; `strided` takes the last position of ``[B, 3, H]`` states (row stride 3H), as ``h[:, -1]``."""
    g = torch.Generator().manual_seed(seed)
    if strided:
        return torch.randn(batch, 3, size, generator=g).to(dtype).to(device)[:, -1]
    return torch.randn(batch, size, generator=g).to(dtype).to(device)


_np_heads: dict = {}


def _np64(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().to(torch.float64).numpy()


def expected(hidden, weight, ids, bias=None) -> tuple[np.ndarray, np.ndarray]:
    """(``[B, k]`` scores, ``[B, k]`` sum |h * w|) in float64 from the full head."""
    key = (weight.data_ptr(), tuple(weight.shape), weight.stride(), weight.dtype)
    if key not in _np_heads:  # heads are cached and never modified: convert each once
        w = _np64(weight)
        _np_heads[key] = (weight, w, np.abs(w))
    _, w, w_abs = _np_heads[key]
    h = _np64(hidden)
    i = ids.cpu().numpy().astype(np.int64)
    out = np.take_along_axis(h @ w.T, i, axis=1)
    if bias is not None:
        out = out + _np64(bias)[i]
    return out, np.take_along_axis(np.abs(h) @ w_abs.T, i, axis=1)


def assert_close(got: torch.Tensor, want: tuple[np.ndarray, np.ndarray], tol: float) -> None:
    assert got.dtype == torch.float32
    value, mag = want
    assert tuple(got.shape) == value.shape
    err = np.abs(got.cpu().numpy().astype(np.float64) - value)
    bound = tol * mag + 1e-6
    worst = np.unravel_index(np.argmax(err - bound), err.shape) if err.size else None
    assert np.all(err <= bound), f"max error {err.max():.3g} at {worst}: bound {bound[worst]:.3g}"


def candidate_ids(batch: int, k: int, vocab: int, int32: bool, seed: int = 1) -> torch.Tensor:
    """``[B, k]`` ids: all of 0..V-1 shuffled per row when k == V, else drawn with replacement (repeats)."""
    g = torch.Generator().manual_seed(seed)
    if k == vocab:
        ids = torch.stack([torch.randperm(vocab, generator=g) for _ in range(batch)]) if batch else \
            torch.empty(0, vocab, dtype=torch.long)
    else:
        ids = torch.randint(0, vocab, (batch, k), generator=g)
    return ids.to(torch.int32 if int32 else torch.int64)


# ---------------------------------------------------------------- values

@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS.get)
@pytest.mark.parametrize("vocab", [13, 1019])
@pytest.mark.parametrize("kk", ["1", "7", "V"])
@pytest.mark.parametrize("size", [17, 64, 4096])
@pytest.mark.parametrize("batch", [0, 1, 3, 33])
def test_matches_fp64(batch, size, kk, vocab, dtype):
    k = vocab if kk == "V" else int(kk)
    # Vary the ids dtype and the hidden layout across the matrix rather than multiplying it.
    int32 = (batch + size + k) % 2 == 1
    strided = (size + vocab) % 3 != 0
    weight, bias = head(vocab, size, dtype)
    hidden = hidden_states(batch, size, dtype, strided=strided, seed=batch + size)
    ids = candidate_ids(batch, k, vocab, int32, seed=k)
    value, mag = expected(hidden, weight, ids)
    assert_close(ops.topk_value_scores(hidden, weight, ids), (value, mag), TOL[dtype])
    with_bias = (value + _np64(bias)[ids.long().numpy()], mag)
    assert_close(ops.topk_value_scores(hidden, weight, ids, bias), with_bias, TOL[dtype])
    if batch * k * size <= 1 << 20:  # the reference gathers [B, k, H] rows: only where that is small
        assert_close(reference.topk_value_scores(hidden, weight, ids, bias), with_bias, TOL[dtype])


@pytest.mark.parametrize("hdt", DTYPES, ids=DT_IDS.get)
@pytest.mark.parametrize("wdt", DTYPES, ids=DT_IDS.get)
def test_mixed_dtypes(hdt, wdt):
    # Each of hidden, weight and bias may have its own dtype.
    weight, _ = head(1019, 100, wdt)
    bias = torch.randn(1019).to(DTYPES[(DTYPES.index(wdt) + 1) % 3])
    hidden = hidden_states(5, 100, hdt, strided=True, seed=3)
    ids = candidate_ids(5, 9, 1019, int32=hdt == wdt)
    got = ops.topk_value_scores(hidden, weight, ids, bias)
    assert_close(got, expected(hidden, weight, ids, bias), max(TOL[hdt], TOL[wdt]))


def test_repeated_ids_and_extremes():
    weight, bias = head(1019, 64, torch.float32)
    hidden = hidden_states(3, 64, torch.float32)
    ids = torch.tensor([[0, 0, 0, 1018], [1018, 5, 1018, 5], [7, 7, 7, 7]])
    got = ops.topk_value_scores(hidden, weight, ids, bias)
    assert_close(got, expected(hidden, weight, ids, bias), 1e-6)
    assert got[0, 0] == got[0, 1] == got[0, 2] and got[2].unique().numel() == 1


def test_strided_ids_and_bias():
    # ids and bias are read through their strides (no copy needed).
    weight, _ = head(1019, 64, torch.bfloat16)
    hidden = hidden_states(4, 64, torch.bfloat16)
    ids = torch.randint(0, 1019, (4, 12)).to(torch.int32)[:, ::2]
    bias = torch.randn(2 * 1019)[::2]
    assert not ids.is_contiguous() and not bias.is_contiguous()
    assert_close(ops.topk_value_scores(hidden, weight, ids, bias), expected(hidden, weight, ids, bias), 1e-6)


def test_hidden_not_contiguous_in_last_dim():
    weight, _ = head(13, 17, torch.float32)
    hidden = torch.randn(17, 3).t()  # [3, 17], stride (1, 3)
    ids = torch.randint(0, 13, (3, 4))
    # The wrapper copies [B, H] (small); the compiled op refuses, naming hidden.
    assert_close(ops.topk_value_scores(hidden, weight, ids), expected(hidden, weight, ids), 1e-6)
    with pytest.raises(ValueError, match="hidden must be contiguous in its last dim"):
        C.topk_value_scores(hidden, weight, ids, None)


def test_weight_row_stride():
    # A head sliced out of a wider matrix (rows contiguous, row stride > H).
    wide = torch.randn(50, 40)
    weight = wide[:, 3:35]
    hidden = hidden_states(2, 32, torch.float32)
    ids = torch.randint(0, 50, (2, 6))
    assert_close(ops.topk_value_scores(hidden, weight, ids), expected(hidden, weight, ids), 1e-6)


def test_empty_shapes():
    weight, bias = head(13, 17, torch.float32)
    assert ops.topk_value_scores(hidden_states(4, 17, torch.float32), weight, torch.empty(4, 0, dtype=torch.long),
                                 bias).shape == (4, 0)
    # H = 0: every dot product is empty, the score is the bias alone.
    ids = torch.tensor([[3, 5]])
    got = ops.topk_value_scores(torch.empty(1, 0), torch.empty(13, 0), ids, bias)
    torch.testing.assert_close(got, bias[ids], rtol=0, atol=0)
    # No rows at all: nothing is read, so even an empty head is fine.
    assert C.topk_value_scores(torch.empty(0, 8), torch.empty(0, 8), torch.empty(0, 5, dtype=torch.long),
                               None).shape == (0, 5)


def test_same_result_for_any_thread_count():
    # Each candidate's sum has one fixed order (grouping and threads do not change it).
    weight, bias = head(1019, 4096, torch.bfloat16)
    hidden = hidden_states(33, 4096, torch.bfloat16, seed=9)
    ids = candidate_ids(33, 7, 1019, int32=False)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = C.topk_value_scores(hidden, weight, ids, bias)
    finally:
        torch.set_num_threads(threads)
    many = C.topk_value_scores(hidden, weight, ids, bias)
    assert torch.equal(one, many)
    # ... and a candidate scores the same alone as in a group of four.
    alone = C.topk_value_scores(hidden[:, :], weight, ids[:, 5:6], bias)
    assert torch.equal(alone[:, 0], many[:, 5])


# ---------------------------------------------------------------- errors

BAD_IDS = [
    ("too large", lambda v: v),
    ("negative", lambda v: -1),
    ("huge", lambda v: 2**40),
]


@pytest.mark.parametrize("int32", [False, True], ids=["int64", "int32"])
@pytest.mark.parametrize("what,bad", BAD_IDS, ids=[b[0] for b in BAD_IDS])
def test_out_of_range_ids_raise(what, bad, int32):
    weight, bias = head(1019, 64, torch.float32)
    hidden = hidden_states(3, 64, torch.float32)
    value = bad(1019)
    if int32 and value >= 2**31:
        value = 2**31 - 1
    ids = torch.randint(0, 1019, (3, 7))
    ids[2, 4] = value
    ids = ids.to(torch.int32 if int32 else torch.int64)
    for b in (None, bias):
        with pytest.raises(ValueError, match=r"ids\[2, 4\] = .* out of range .*V = 1019"):
            ops.topk_value_scores(hidden, weight, ids, b)
        with pytest.raises(ValueError, match=r"ids\[2, 4\] = .* out of range"):
            C.topk_value_scores(hidden, weight, ids, b)


def test_out_of_range_ids_raise_on_the_reference_fallback(monkeypatch):
    monkeypatch.setattr(_backend, "has_kernels_for", lambda device: False)
    weight, bias = head(13, 17, torch.float32)
    hidden = hidden_states(2, 17, torch.float32)
    ids = torch.tensor([[1, 2], [3, 4]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert_close(ops.topk_value_scores(hidden, weight, ids, bias), expected(hidden, weight, ids, bias), 1e-6)
        for bad in (13, -1):
            ids[1, 0] = bad
            with pytest.raises(ValueError, match="ids holds ids in .* V = 13"):
                ops.topk_value_scores(hidden, weight, ids, bias)


def _good():
    weight, bias = head(13, 17, torch.float32)
    return dict(hidden=hidden_states(2, 17, torch.float32), weight=weight, ids=torch.tensor([[1, 2], [3, 4]]),
                bias=bias)


BAD_INPUTS = [
    # (name, change, error type, message pattern); each checked via ops and via the compiled op.
    ("hidden 1-D", dict(hidden=torch.zeros(17)), ValueError, "hidden must be 2-D"),
    ("hidden int", dict(hidden=torch.zeros(2, 17, dtype=torch.int64)), TypeError, "hidden must be float32"),
    ("weight 1-D", dict(weight=torch.zeros(17)), ValueError, "weight must be 2-D"),
    ("weight H", dict(weight=torch.zeros(13, 16)), ValueError, "weight has hidden size 16 but hidden has 17"),
    ("weight fp64", dict(weight=torch.zeros(13, 17, dtype=torch.float64)), TypeError, "weight must be float32"),
    ("weight last dim", dict(weight=torch.zeros(17, 13).t()), ValueError, "weight must be contiguous in its last"),
    ("ids float", dict(ids=torch.zeros(2, 2)), TypeError, "ids must be int"),
    ("ids int16", dict(ids=torch.zeros(2, 2, dtype=torch.int16)), TypeError, "ids must be int"),
    ("ids batch", dict(ids=torch.zeros(3, 2, dtype=torch.long)), ValueError, "ids"),
    ("ids 1-D", dict(ids=torch.zeros(2, dtype=torch.long)), ValueError, "ids must be"),
    ("bias shape", dict(bias=torch.zeros(12)), ValueError, r"bias must have shape \[V\] = \[13\]"),
    ("bias 2-D", dict(bias=torch.zeros(13, 1)), ValueError, "bias must"),
    ("bias int", dict(bias=torch.zeros(13, dtype=torch.int32)), TypeError, "bias must be float32"),
    ("weight device", dict(weight=torch.zeros(13, 17, device="meta")), ValueError, "weight is on meta"),
    ("ids device", dict(ids=torch.zeros(2, 2, dtype=torch.long, device="meta")), ValueError, "ids is on meta"),
    ("bias device", dict(bias=torch.zeros(13, device="meta")), ValueError, "bias is on meta"),
]


@pytest.mark.parametrize("change,exc,pattern", [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs_raise(change, exc, pattern):
    args = {**_good(), **change}
    with pytest.raises(exc, match=pattern):
        ops.topk_value_scores(args["hidden"], args["weight"], args["ids"], args["bias"])
    with pytest.raises(exc, match=pattern):
        C.topk_value_scores(args["hidden"], args["weight"], args["ids"], args["bias"])


def test_wrapper_rejects_non_tensors():
    g = _good()
    with pytest.raises(TypeError, match="hidden must be a torch.Tensor"):
        ops.topk_value_scores(g["hidden"].tolist(), g["weight"], g["ids"])
    with pytest.raises(TypeError, match="ids must be an int32 or int64 torch.Tensor"):
        ops.topk_value_scores(g["hidden"], g["weight"], [[1, 2], [3, 4]])


# ---------------------------------------------------------------- CUDA


@cuda
@pytest.mark.parametrize("hdt", DTYPES, ids=DT_IDS.get)
@pytest.mark.parametrize("wdt", DTYPES, ids=DT_IDS.get)
@pytest.mark.parametrize("batch,size,k,vocab,strided", [
    (1, 4096, 50, 1019, False), (3, 17, 7, 13, True), (33, 64, 1019, 1019, True), (33, 4096, 7, 1019, True),
    (0, 64, 7, 13, False), (2, 4101, 5, 1019, False),
])
def test_cuda_matches_fp64(batch, size, k, vocab, strided, wdt, hdt):
    weight, bias = head(vocab, size, wdt, device="cuda")
    hidden = hidden_states(batch, size, hdt, strided=strided, seed=batch, device="cuda")
    ids = candidate_ids(batch, k, vocab, int32=batch % 2 == 1).cuda()
    for b in (None, bias):
        got = ops.topk_value_scores(hidden, weight, ids, b)
        assert got.is_cuda
        assert_close(got, expected(hidden, weight, ids, b), max(TOL[hdt], TOL[wdt]))


@cuda
def test_cuda_out_of_range_ids_raise():
    weight, bias = head(1019, 64, torch.bfloat16, device="cuda")
    hidden = hidden_states(3, 64, torch.bfloat16, device="cuda")
    for bad in (1019, -1):
        ids = torch.randint(0, 1019, (3, 7), device="cuda")
        ids[1, 2] = bad
        with pytest.raises(ValueError, match=r"ids holds 1 id\(s\) out of range .*V = 1019"):
            ops.topk_value_scores(hidden, weight, ids, bias)
        with pytest.raises(ValueError, match="ids holds"):
            C.topk_value_scores(hidden, weight, ids.int(), None)
    # The stream is still usable afterwards (the kernel skipped the bad rows, no fault).
    ok = torch.randint(0, 1019, (3, 7), device="cuda")
    assert_close(ops.topk_value_scores(hidden, weight, ok, bias), expected(hidden, weight, ok, bias), 1e-6)
