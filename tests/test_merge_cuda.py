"""K3 on CUDA: merge_into a CUDA model through the pinned, double-buffered staging path.

Gated on the build having CUDA kernels (on a GPU with a CPU-only build, merge_into
would silently test the CPU fallback instead) and on a GPU being present."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mogen
import mogen_ext
from mogen.merging.io import open_checkpoint
from merge_helpers import assert_matches_fp64, model_tensors, np64, save_ckpt

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not mogen_ext.has_cuda_kernels,
                       reason="this build of mogen_ext has no CUDA kernels (CPU-only torch or no CUDA toolkit at "
                              "build time); rebuild with MOGEN_FORCE_CUDA=1 to test them"),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

BIG = 300_001  # with chunk=7000: 43 chunks, the last one partial, both slots reused many times
COEF = [0.2, -0.5, 1.1]


@pytest.fixture
def three(tmp_path):
    dts = [{}, {"q": torch.bfloat16, "big": torch.bfloat16}, {"up": torch.float16, "big": torch.float16}]
    sds = [model_tensors(i, dts[i], big=BIG) for i in range(3)]
    for sd in sds:  # infinities and NaNs, as fp64 treats them
        sd["model.big"][[5, 70_000, 299_999]] = torch.tensor([float("inf"), float("-inf"), float("nan")],
                                                             dtype=sd["model.big"].dtype)
    return [save_ckpt(tmp_path / f"s{i}", sds[i]) for i in range(3)], sds


def _want(sds, name, coef=COEF):
    x = [np64(sd[name]) for sd in sds]
    with np.errstate(invalid="ignore"):
        return sum(c * xi for c, xi in zip(coef, x)), sum(abs(c) * np.abs(xi) for c, xi in zip(coef, x))


def _check(got: torch.Tensor, want: np.ndarray, scale: np.ndarray, name: str) -> None:
    got = got.detach().cpu()
    w = torch.from_numpy(want).to(got.dtype)
    fin = torch.isfinite(w)
    assert torch.equal(got[~fin].isnan(), w[~fin].isnan()) and torch.equal(got[~fin].nan_to_num(),
                                                                            w[~fin].nan_to_num()), name
    assert_matches_fp64(got[fin], want[fin.numpy()], scale[fin.numpy()], name)


def _sources(paths, name):
    cks = [open_checkpoint(p) for p in paths]
    return cks, [(ck.tensors[name].reader, ck.tensors[name].begin, ck.tensors[name].dtype) for ck in cks]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_merge_into_cuda_parameters(three, dtype):
    paths, sds = three
    names = [n for n in sds[0] if sds[0][n].is_floating_point()]
    params = {n: torch.nn.Parameter(torch.zeros(sds[0][n].shape, dtype=dtype, device="cuda")) for n in names}

    class M(torch.nn.Module):
        def named_parameters(self, *a, **k):
            return iter(params.items())

        def named_buffers(self, *a, **k):
            return iter(())

    mogen.merge_into(M(), paths, COEF, rules=[("position_ids", "skip")])
    for n in names:
        _check(params[n], *_want(sds, n), n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_many_chunks_reuse_both_slots_and_the_staging(three, dtype):
    paths, sds = three
    cks, srcs = _sources(paths, "model.big")
    staging = mogen_ext._C.MergeStaging()
    dst = torch.zeros(BIG, dtype=dtype, device="cuda")
    mogen_ext._C.merge_to_tensor(srcs, COEF, dst, staging, 7000)
    _check(dst, *_want(sds, "model.big"), "model.big")
    # Staging holds two slots of one 7000-element chunk per source, not the tensor, not a default chunk.
    per_slot = sum((7000 * torch.empty((), dtype=sd["model.big"].dtype).element_size() + 255) // 256 * 256
                   for sd in sds)
    assert staging.nbytes == (2 * per_slot, 2 * per_slot)
    dst2 = torch.zeros(BIG, dtype=dtype, device="cuda")
    mogen_ext._C.merge_to_tensor(srcs, COEF, dst2, staging, 7000)  # reused, not grown
    assert staging.nbytes == (2 * per_slot, 2 * per_slot) and torch.equal(dst.isnan(), dst2.isnan())
    small = torch.zeros(100, dtype=dtype, device="cuda")
    fresh = mogen_ext._C.MergeStaging()
    cks2, srcs2 = _sources(paths, "model.norm.weight")
    mogen_ext._C.merge_to_tensor(srcs2, COEF, small[:24], fresh)
    assert fresh.nbytes[0] <= 2 * 3 * 256  # sized by the tensor (24 elements), not by a chunk
    for ck in cks + cks2:
        ck.close()


def test_error_mid_merge_leaves_the_device_usable(three):
    paths, sds = three
    cks, srcs = _sources(paths, "model.big")
    staging = mogen_ext._C.MergeStaging()
    dst = torch.zeros(BIG, device="cuda")
    with pytest.raises(RuntimeError, match="before chunk 5"):
        mogen_ext._C.merge_to_tensor(srcs, COEF, dst, staging, 9000, 5)
    torch.cuda.synchronize()  # no error left behind by copies or kernels of the chunks before
    # The buffers were not freed under running copies: a new merge through them is exact.
    mogen_ext._C.merge_to_tensor(srcs, COEF, dst, staging, 9000)
    torch.cuda.synchronize()
    _check(dst, *_want(sds, "model.big"), "model.big after an error")
    for ck in cks:
        ck.close()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_merge_tensors_on_device_matches_fp64(dtype):
    """K3's kernel alone on device tensors (what the GPU benchmark times): mixed source dtypes, fp64 reference."""
    g = torch.Generator().manual_seed(7)
    host = [torch.randn(BIG, generator=g).to(dt) for dt in (torch.float32, torch.bfloat16, torch.float16)]
    dst = torch.empty(BIG, dtype=dtype, device="cuda")
    mogen_ext._C.merge_tensors([h.cuda() for h in host], COEF, dst)
    torch.cuda.synchronize()
    x = [h.double().numpy() for h in host]
    want = sum(c * xi for c, xi in zip(COEF, x))
    scale = sum(abs(c) * np.abs(xi) for c, xi in zip(COEF, x))
    assert_matches_fp64(dst.cpu(), want, scale, f"merge_tensors -> {dtype}")
    with pytest.raises((ValueError, RuntimeError), match=r"sources\[1\] must be a contiguous tensor of 300001"):
        mogen_ext._C.merge_tensors([host[0].cuda(), host[1][:10].cuda()], COEF[:2], dst)
