"""K3 merge engine against fp64 numpy (linear family) and mogen.reference (ties, dare, slerp)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

import mogen
import mogen_ext
from mogen import reference
from mogen.merging import engine
from merge_helpers import (OUT_DTYPES, assert_matches_fp64, load_ckpt, model_tensors, np64, save_ckpt)

pytestmark = pytest.mark.skipif(not mogen_ext.has_cpu_kernels, reason=f"no compiled kernels: {mogen_ext.load_error}")

BIG = 300_001  # above the kernel's 64K-element block; pieces are made smaller still below


@pytest.fixture
def three(tmp_path):
    """Three sources with mixed dtypes and different shard boundaries, plus a base."""
    dts = [{}, {"q": torch.bfloat16, "v_head": torch.bfloat16, "big": torch.bfloat16},
           {"up": torch.float16, "embed": torch.float16, "scalar": torch.float16}]
    sds = [model_tensors(i, dts[i], big=BIG) for i in range(3)]
    names = sorted(sds[0])
    paths = [
        save_ckpt(tmp_path / "s0", sds[0]),
        save_ckpt(tmp_path / "s1", sds[1], shards=[names[:4], names[4:]]),
        save_ckpt(tmp_path / "s2", sds[2], shards=[names[:1], names[1:9], names[9:]]),
    ]
    base_sd = model_tensors(10, {"up": torch.bfloat16}, big=BIG)
    base = save_ckpt(tmp_path / "base", base_sd, shards=[names[:7], names[7:]])
    return paths, sds, base, base_sd


def _float_names(sd):
    return [n for n, t in sd.items() if t.is_floating_point()]


@pytest.mark.parametrize("out_dtype", list(OUT_DTYPES))
def test_linear_matches_fp64(three, tmp_path, out_dtype, monkeypatch):
    monkeypatch.setattr(engine, "PIECE", 100_000)  # a tensor spanning several kernel calls
    paths, sds, _, _ = three
    c = [0.7, -0.45, 0.9]
    rep = mogen.merge(paths, c, tmp_path / "out", dtype=out_dtype, progress=False)
    got = load_ckpt(tmp_path / "out")
    assert set(got) == set(sds[0])
    for n in _float_names(sds[0]):
        x = [np64(sd[n]) for sd in sds]
        want = sum(ci * xi for ci, xi in zip(c, x))
        scale = sum(abs(ci) * np.abs(xi) for ci, xi in zip(c, x))
        assert got[n].dtype == OUT_DTYPES[out_dtype]
        assert_matches_fp64(got[n], want, scale, n)
    assert torch.equal(got["model.position_ids"], sds[0]["model.position_ids"])  # int buffer: copied
    assert got["logit_scale"].dim() == 0 and got["model.empty"].shape == (0, 24)
    assert rep.bytes_read > 0 and rep.bytes_written > 0 and rep.num_tensors == len(sds[0])
    assert rep.peak_rss >= rep.baseline_rss > 0 and rep.gb_per_s > 0
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["torch_dtype"] == {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}[out_dtype]
    assert (tmp_path / "out" / "tokenizer.json").exists()
    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}


@pytest.mark.parametrize("count", [1, 2, 4, 5, 7])
def test_any_number_of_sources_matches_fp64(tmp_path, count):
    # Up to 4 sources the kernel sums in one register-resident pass, beyond in passes per
    # source; both keep the compensated pair, so both match fp64 the same way.
    dts = [{}, {"q": torch.bfloat16, "big": torch.bfloat16}, {"up": torch.float16, "big": torch.float16}]
    sds = [model_tensors(i, dts[i % 3], big=BIG) for i in range(count)]
    paths = [save_ckpt(tmp_path / f"s{i}", sd) for i, sd in enumerate(sds)]
    c = [(-1) ** i * (0.3 + 0.17 * i) for i in range(count)]
    mogen.merge(paths, c, tmp_path / "out", dtype="F32", progress=False)
    got = load_ckpt(tmp_path / "out")
    for n in _float_names(sds[0]):
        x = [np64(sd[n]) for sd in sds]
        assert_matches_fp64(got[n], sum(ci * xi for ci, xi in zip(c, x)),
                            sum(abs(ci) * np.abs(xi) for ci, xi in zip(c, x)), n)


def test_default_dtype_is_first_source(three, tmp_path):
    paths, sds, _, _ = three
    mogen.merge([paths[1], paths[2]], [0.5, 0.5], tmp_path / "o", progress=False)
    got = load_ckpt(tmp_path / "o")
    for n in _float_names(sds[1]):
        assert got[n].dtype == sds[1][n].dtype, n


def test_k_outputs_from_one_pass(three, tmp_path):
    paths, sds, _, _ = three
    C = np.array([[1.0, 0.0, 0.0], [0.2, 0.3, 0.5], [-1.0, 2.0, 0.25], [0.0, 0.0, 0.0]])
    outs = [tmp_path / f"k{k}" for k in range(len(C))]
    rep = mogen.merge(paths, C, outs, dtype="bfloat16", shard_size="20KB", progress=False)
    assert len(rep.outputs) == 4
    single = tmp_path / "single"
    mogen.merge(paths, C[1], single, dtype="bfloat16", shard_size="20KB", progress=False)
    ref_single = load_ckpt(single)
    for k, o in enumerate(outs):
        idx = json.loads((o / "model.safetensors.index.json").read_text())
        assert set(idx["weight_map"]) == set(sds[0]) and len(set(idx["weight_map"].values())) > 1
        got = load_ckpt(o)
        for n in _float_names(sds[0]):
            x = [np64(sd[n]) for sd in sds]
            want = sum(C[k, i] * x[i] for i in range(3))
            assert_matches_fp64(got[n], want, sum(abs(C[k, i]) * np.abs(x[i]) for i in range(3)), n)
            if k == 1:
                assert torch.equal(got[n], ref_single[n])  # one pass for K equals K passes
    # Row 0 is source 0 itself, cast to bf16.
    g0 = load_ckpt(outs[0])
    assert torch.equal(g0["model.embed_tokens.weight"], sds[0]["model.embed_tokens.weight"].bfloat16())


def test_task_arithmetic_matches_fp64(three, tmp_path):
    paths, sds, base, base_sd = three
    w = [0.5, -0.3, 1.2]
    mogen.merge(paths, w, tmp_path / "ta", base=base, method="task_arithmetic", lambda_=0.8, progress=False)
    got = load_ckpt(tmp_path / "ta")
    for n in _float_names(sds[0]):
        b = np64(base_sd[n])
        x = [np64(sd[n]) for sd in sds]
        want = b + 0.8 * sum(wi * (xi - b) for wi, xi in zip(w, x))
        assert np.allclose(want, np64(reference.merge_task_arithmetic(base_sd[n], [sd[n] for sd in sds], w, 0.8)))
        scale = np.abs(b) * (1 + 0.8 * sum(map(abs, w))) + 0.8 * sum(abs(wi) * np.abs(xi) for wi, xi in zip(w, x))
        assert got[n].dtype == base_sd[n].dtype  # default dtype: the base's
        assert_matches_fp64(got[n], want, scale, n)


def test_bone_soup_coefficients():
    mu = [0.2, 0.5, 0.3]
    lam, c_sft = mogen.bone_soup_coefficients(mu, bone_beta=0.7)
    assert c_sft == 0.0
    assert np.allclose(lam, reference.bone_soup_lambdas(mu, 0.7).numpy(), atol=1e-12)
    assert np.allclose(reference.bone_soup_matrix(3, 0.7).numpy() @ lam, mu)
    lam2, c2 = mogen.bone_soup_coefficients([mu, [1, 0, 0]], bone_beta=0.8, alpha=0.3)
    assert lam2.shape == (2, 3) and c2 == -0.3
    assert np.allclose(lam2[1], 1.3 * reference.bone_soup_lambdas([1, 0, 0], 0.8).numpy())
    assert np.isclose(lam2[0].sum() + c2, 1.0)  # coefficients still sum to 1
    with pytest.raises(ValueError, match="singular"):
        mogen.bone_soup_coefficients(mu, bone_beta=1 / 3)
    with pytest.raises(ValueError, match="simplex"):
        mogen.bone_soup_coefficients([0.5, 0.6, 0.1], bone_beta=0.7)
    with pytest.raises(ValueError, match="simplex"):
        mogen.bone_soup_coefficients([1.2, -0.2], bone_beta=0.7)
    with pytest.raises(ValueError, match="finite"):
        mogen.bone_soup_coefficients([0.5, 0.5], bone_beta=float("nan"))


def test_bone_soup_merge_matches_fp64(three, tmp_path):
    paths, sds, base, base_sd = three
    mu = np.array([[0.2, 0.5, 0.3], [0.6, 0.2, 0.2]])
    outs = [tmp_path / "b0", tmp_path / "b1"]
    mogen.merge(paths, mu, outs, method="bone_soup", bone_beta=0.7, alpha=0.25, sft=base, dtype="bf16", progress=False)
    for k, o in enumerate(outs):
        lam = reference.bone_soup_lambdas(mu[k], 0.7).numpy()
        got = load_ckpt(o)
        for n in _float_names(sds[0]):
            x = [np64(sd[n]) for sd in sds]
            want = 1.25 * sum(lam[i] * x[i] for i in range(3)) - 0.25 * np64(base_sd[n])
            scale = 1.25 * sum(abs(lam[i]) * np.abs(x[i]) for i in range(3)) + 0.25 * np.abs(np64(base_sd[n]))
            assert_matches_fp64(got[n], want, scale, n)
    with pytest.raises(ValueError, match="sft"):
        mogen.merge(paths, mu[0], tmp_path / "x", method="bone_soup", bone_beta=0.7, alpha=0.25, progress=False)
    assert not (tmp_path / "x").exists()


def _close(got: torch.Tensor, want64: torch.Tensor, name: str, frac: float = 0.0) -> None:
    """Within output rounding (+ fp32 accumulation) of the fp64 reference; `frac` of elements may differ
    where fp32 and fp64 sums fall on different sides of a sign election at ~0."""
    w = want64.to(got.dtype).to(torch.float64)
    g = got.to(torch.float64)
    tol = (2e-6 if got.dtype == torch.float32 else 1e-2) * (1 + want64.abs())
    bad = ((g - w).abs() > tol).sum().item()
    assert bad <= frac * got.numel(), f"{name}: {bad} of {got.numel()} elements differ"


@pytest.mark.parametrize("method", ["ties", "dare_linear", "dare_ties"])
def test_sparse_methods_match_reference(three, tmp_path, method):
    paths, sds, base, base_sd = three
    w, dens = [0.6, 0.9, -0.4], [0.5, 0.3, 0.8]
    kw = dict(density=dens) if method == "ties" else dict(density=dens, seed=7)
    mogen.merge(paths, w, tmp_path / "m", base=base, method=method, progress=False, dtype="float32", **kw)
    got = load_ckpt(tmp_path / "m")
    for n in _float_names(sds[0]):
        xs = [sd[n] for sd in sds]
        if method == "ties":
            want = reference.merge_ties(base_sd[n], xs, w, dens)
        else:
            want = reference.merge_dare(base_sd[n], xs, w, dens, name=n, seed=7, ties=method == "dare_ties")
        _close(got[n], want, n, frac=1e-4)
    # Seeded per tensor: the same seed gives the same output, another seed another.
    if method != "ties":
        mogen.merge(paths, w, tmp_path / "m2", base=base, method=method, progress=False, dtype="float32", **kw)
        kw["seed"] = 8
        mogen.merge(paths, w, tmp_path / "m3", base=base, method=method, progress=False, dtype="float32", **kw)
        a, b, c = (load_ckpt(tmp_path / d)["model.big"] for d in ("m", "m2", "m3"))
        assert torch.equal(a, b) and not torch.equal(a, c)


def test_slerp_matches_reference(three, tmp_path):
    paths, sds, _, _ = three
    outs = [tmp_path / "t0", tmp_path / "t1"]
    mogen.merge(paths[:2], None, outs, method="slerp", t=[0.3, 1.0], dtype="float32", progress=False)
    for k, t in enumerate([0.3, 1.0]):
        got = load_ckpt(outs[k])
        for n in _float_names(sds[0]):
            _close(got[n], reference.merge_slerp(sds[0][n], sds[1][n], t), n)


def test_rules_and_missing_tensors(tmp_path):
    a = model_tensors(0)
    b = model_tensors(1)
    b["extra.only_in_b"] = torch.ones(3)
    pa, pb = save_ckpt(tmp_path / "a", a), save_ckpt(tmp_path / "b", b)
    with pytest.raises(ValueError, match="extra.only_in_b.*missing"):
        mogen.merge([pa, pb], [0.5, 0.5], tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()
    mogen.merge([pa, pb], [0.5, 0.5], tmp_path / "skip", on_missing="skip", progress=False)
    assert "extra.only_in_b" not in load_ckpt(tmp_path / "skip")
    mogen.merge([pa, pb], [0.5, 0.5], tmp_path / "first", on_missing="first", progress=False)
    assert torch.equal(load_ckpt(tmp_path / "first")["extra.only_in_b"], torch.ones(3))
    rules = [(r"^v_head\.", "copy:1"), (r"layernorm", "skip"), (r"extra", "skip")]
    mogen.merge([pa, pb], [0.5, 0.5], tmp_path / "r", rules=rules, progress=False)
    got = load_ckpt(tmp_path / "r")
    assert torch.equal(got["v_head.weight"], b["v_head.weight"])
    assert not any("layernorm" in n for n in got)
    assert torch.allclose(got["model.norm.weight"], (a["model.norm.weight"] + b["model.norm.weight"]) / 2)


def test_merge_into_model_in_place(three, tmp_path):
    paths, sds, _, _ = three

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            sd = sds[0]
            self.p = torch.nn.ParameterDict()
            self.names = [n for n in sd if sd[n].is_floating_point()]
            for n in self.names:
                self.register_parameter(n.replace(".", "_"), torch.nn.Parameter(torch.zeros_like(sd[n], dtype=torch.bfloat16)))

        def named_parameters(self, *a, **k):  # checkpoint names, as a real model would have
            for n in self.names:
                yield n, getattr(self, n.replace(".", "_"))

        def named_buffers(self, *a, **k):
            return iter(())

    m = Tiny()
    ptrs = {n: p.data_ptr() for n, p in m.named_parameters()}
    c = [0.25, 0.5, 0.25]
    rep = mogen.merge_into(m, paths, c, rules=[("position_ids", "skip")])
    mogen.merge(paths, c, tmp_path / "disk", dtype="bf16", progress=False)
    disk = load_ckpt(tmp_path / "disk")
    for n, p in m.named_parameters():
        assert p.data_ptr() == ptrs[n]  # in place
        assert torch.equal(p.data, disk[n]), n
    assert rep.bytes_written == sum(p.numel() * 2 for _, p in m.named_parameters())


def test_merge_into_hf_style_tied_model(tmp_path):
    emb, head = torch.nn.Embedding(11, 6), torch.nn.Linear(6, 11, bias=False)
    head.weight = emb.weight  # tied
    model = torch.nn.ModuleDict({"embed": emb, "lm_head": head, "norm": torch.nn.LayerNorm(6)})
    sds = []
    for s in range(2):
        g = torch.Generator().manual_seed(s)
        sds.append({"embed.weight": torch.randn(11, 6, generator=g), "norm.weight": torch.randn(6, generator=g),
                    "norm.bias": torch.randn(6, generator=g)})  # the tied lm_head.weight is not saved
    paths = [save_ckpt(tmp_path / f"c{s}", sd) for s, sd in enumerate(sds)]
    mogen.merge_into(model, paths, [0.3, 0.7])
    want = 0.3 * sds[0]["embed.weight"].double() + 0.7 * sds[1]["embed.weight"].double()
    assert torch.allclose(model["lm_head"].weight.double(), want, atol=1e-6)
    assert model["lm_head"].weight is model["embed"].weight
    sds[0]["extra"] = torch.ones(2)
    p2 = save_ckpt(tmp_path / "c2", sds[0])
    with pytest.raises(ValueError, match="no counterpart|missing"):
        mogen.merge_into(model, [p2, paths[1]], [0.5, 0.5])


def test_reader_matches_safetensors_and_writer_roundtrip(tmp_path):
    C = mogen_ext._C
    sd = {"a\u00e9\"b": torch.randn(3, 4), "z": torch.randn(2).half(), "e": torch.zeros(0), "i": torch.arange(3)}
    from safetensors.torch import save_file, load_file
    save_file(sd, str(tmp_path / "x.safetensors"), metadata={"k": "v\n"})
    r = C.SafetensorsReader(str(tmp_path / "x.safetensors"))
    assert r.metadata == {"k": "v\n"}
    names = {t[0]: t for t in r.tensors()}
    assert set(names) == set(sd)
    ents = [(n, t[1], t[2]) for n, t in names.items()]
    w = C.SafetensorsWriter(str(tmp_path / "y.safetensors"), ents, {"format": "pt"})
    for n, _, _, begin, _ in w.tensors():
        t = names[n]
        w.copy_from(begin, r, t[3], t[4] - t[3])
    w.finish(True)
    back = load_file(str(tmp_path / "y.safetensors"))
    for n in sd:
        assert torch.equal(back[n], sd[n])
