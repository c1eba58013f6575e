"""Non-finite values (inf, -inf, NaN) merge exactly as fp64 ``sum_i c_i x_i`` does, element by
element: the compensated fp32 accumulation must not turn ``inf`` into NaN through its error terms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mogen
import mogen_ext
from mogen.merging import methods
from merge_helpers import assert_matches_fp64, load_ckpt, save_ckpt

pytestmark = pytest.mark.skipif(not mogen_ext.has_cpu_kernels, reason=f"no compiled kernels: {mogen_ext.load_error}")

INF, NAN = float("inf"), float("nan")
BIG = 3.0e38  # fp32 products and partial sums of these overflow though the fp64 result does not


def _sources(n_inputs: int, numel: int, dtypes: list) -> list[dict]:
    """Per input a state dict whose tensors hold infinities, NaNs and near-overflow values at fixed
    positions (a pattern that covers same-sign, opposite-sign and mixed cases) amid random values."""
    g = torch.Generator().manual_seed(7)
    sds = []
    for i in range(n_inputs):
        x = torch.randn(numel, generator=g, dtype=torch.float64)
        x[0:3] = torch.tensor([-INF, 1.0 + i, INF])           # the issue's example: stays [-inf, *, inf]
        x[3] = INF if i % 2 == 0 else -INF                   # opposite signs: NaN where fp64 gives NaN
        x[4] = NAN if i == 1 else 2.0                        # one NaN input
        x[5] = INF if i == 0 else 1.0                        # one infinite input
        x[6] = BIG if i < 2 else -BIG                        # fp32 overflow of a finite fp64 result
        pos = torch.randint(7, numel, (numel // 50,), generator=g)
        x[pos] = torch.tensor([INF, -INF, NAN], dtype=torch.float64)[torch.randint(0, 3, pos.shape, generator=g)]
        sds.append({"w": x.to(dtypes[i % len(dtypes)]), "b": x[:5].to(dtypes[i % len(dtypes)]).clone()})
    return sds


def _fp64(coef_row: np.ndarray, xs: list[torch.Tensor]) -> np.ndarray:
    """fp64 sum_i c_i x_i over the inputs with a nonzero coefficient (the engine does not read the others)."""
    acc = np.zeros(xs[0].shape, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        for c, x in zip(coef_row, xs):
            if c != 0.0:
                acc = acc + c * x.double().numpy()
    return acc


def _check(got: torch.Tensor, want64: np.ndarray, name: str) -> None:
    want_out = torch.from_numpy(want64).to(got.dtype)  # fp64 result rounded to the output dtype
    nonfinite = ~torch.isfinite(want_out)
    g, w = got[nonfinite].double(), want_out[nonfinite].double()
    assert torch.equal(torch.isnan(g), torch.isnan(w)), f"{name}: NaN where fp64 has none, or the reverse"
    inf = torch.isinf(w)
    assert torch.equal(g[inf], w[inf]), f"{name}: infinities differ from fp64's"
    assert bool(torch.isfinite(got[~nonfinite]).all()), f"{name}: non-finite where fp64's result is finite"
    fin = ~nonfinite
    assert_matches_fp64(got[fin], want64[fin.numpy()], np.abs(want64[fin.numpy()]), name)


CASES = [
    ("linear", [0.5, 0.5, -1.25], {}),
    ("task_arithmetic", [0.5, -0.3, 1.2], {"lambda_": 0.8}),
    ("task_arithmetic", [0.25, 0.25, 0.5], {}),  # base coefficient 0: base not read
    ("bone_soup", [0.2, 0.5, 0.3], {"bone_beta": 0.7, "alpha": 0.25}),
]


def _resolve(method: str, coef, params: dict, base, sft) -> np.ndarray:
    has_base = method == "task_arithmetic"
    p = dict(params, sft=sft) if method == "bone_soup" else dict(params)
    return methods.resolve(method, 3, coef, has_base, p).coef[0]


@pytest.mark.parametrize("method,coef,params", CASES)
@pytest.mark.parametrize("out_dtype", ["F32", "BF16", "F16"])
def test_non_finite_merge_to_disk_like_fp64(tmp_path, method, coef, params, out_dtype):
    sds = _sources(4, 5000, [torch.float32, torch.bfloat16, torch.float16])
    paths = [save_ckpt(tmp_path / f"s{i}", sds[i]) for i in range(3)]
    extra = save_ckpt(tmp_path / "extra", sds[3])  # base (task arithmetic) or sft (bone soup)
    kw = dict(params)
    if method == "task_arithmetic":
        kw["base"] = extra
    if method == "bone_soup":
        kw["sft"] = extra
    mogen.merge(paths, coef, tmp_path / "out", method=method, dtype=out_dtype, progress=False, **kw)
    got = load_ckpt(tmp_path / "out")
    row = _resolve(method, coef, params, extra, extra)
    for name in ("w", "b"):
        _check(got[name], _fp64(row, [sd[name] for sd in sds[:len(row)]]), f"{method}/{out_dtype}/{name}")


def test_issue_example_exact(tmp_path):
    a = save_ckpt(tmp_path / "a", {"m": torch.tensor([-INF, 1.0, INF])})
    b = save_ckpt(tmp_path / "b", {"m": torch.tensor([-INF, 3.0, INF])})
    mogen.merge([a, b], [0.5, 0.5], tmp_path / "o", progress=False)
    assert torch.equal(load_ckpt(tmp_path / "o")["m"], torch.tensor([-INF, 2.0, INF]))


def test_fp32_overflow_of_a_finite_result(tmp_path):
    """2 * 3e38 overflows fp32 but 2 * 3e38 - 1.5 * 3e38 is a finite fp64 result."""
    a = save_ckpt(tmp_path / "a", {"m": torch.tensor([BIG, -BIG, 1.0])})
    b = save_ckpt(tmp_path / "b", {"m": torch.tensor([BIG, -BIG, 1.0])})
    mogen.merge([a, b], [2.0, -1.5], tmp_path / "o", progress=False)
    want = torch.tensor([0.5 * BIG, -0.5 * BIG, 0.5], dtype=torch.float64).float()
    assert torch.equal(load_ckpt(tmp_path / "o")["m"], want)


@pytest.mark.parametrize("method,coef,params", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_finite_merge_into_like_fp64(tmp_path, method, coef, params, dtype):
    sds = _sources(4, 3000, [torch.float16, torch.float32])
    paths = [save_ckpt(tmp_path / f"s{i}", sds[i]) for i in range(3)]
    extra = save_ckpt(tmp_path / "extra", sds[3])
    kw = dict(params)
    if method == "task_arithmetic":
        kw["base"] = extra
    if method == "bone_soup":
        kw["sft"] = extra
    model = torch.nn.Module()
    model.w = torch.nn.Parameter(torch.zeros(3000, dtype=dtype))
    model.b = torch.nn.Parameter(torch.zeros(5, dtype=dtype))
    mogen.merge_into(model, paths, coef, method=method, **kw)
    row = _resolve(method, coef, params, extra, extra)
    for name in ("w", "b"):
        _check(getattr(model, name).detach(), _fp64(row, [sd[name] for sd in sds[:len(row)]]), f"{method}/{name}")


def test_k_outputs_agree_with_single_merges_on_non_finite(tmp_path):
    """A zero coefficient means the input is not part of that output, also for K > 1 (0 * inf is not NaN)."""
    sds = _sources(2, 1000, [torch.float32])
    paths = [save_ckpt(tmp_path / f"s{i}", sds[i]) for i in range(2)]
    C = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    mogen.merge(paths, C, [tmp_path / f"k{k}" for k in range(3)], progress=False)
    for k in range(3):
        single = tmp_path / f"single{k}"
        mogen.merge(paths, C[k], single, progress=False)
        a, b = load_ckpt(tmp_path / f"k{k}")["w"], load_ckpt(single)["w"]
        assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num()), k
        _check(a, _fp64(C[k], [sd["w"] for sd in sds]), f"K row {k}")
