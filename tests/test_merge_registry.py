"""Merge methods are registered classes: a method defined here, outside mogen, runs through
mogen.merge, mogen.merge_into and a YAML config (mogen merge --config) like a built-in one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

import mogen
import mogen_ext
from mogen import cli
from mogen.merging import METHODS
from mogen.merging.methods import LinearMethod, MergeMethod, as_matrix, as_scalar, register_method, unregister_method
from merge_helpers import load_ckpt, model_tensors, save_ckpt

pytestmark = pytest.mark.skipif(not mogen_ext.has_cpu_kernels, reason=f"no compiled kernels: {mogen_ext.load_error}")


class ScaledMean(MergeMethod):
    """factor * sum_i w_i x_i / sum_i w_i, per tensor (weights default 1: factor times the mean)."""

    name = "scaled_mean"
    summary = "factor times the weighted mean of the sources"
    parameters = ("factor",)
    config_parameters = ("factor",)

    def setup(self, spec, coefficients, params):
        n = spec.num_sources
        w = np.ones((1, n)) if coefficients is None else as_matrix(coefficients, n, "coefficients")
        spec.params["weights"] = w / w.sum(axis=1, keepdims=True)
        spec.params["factor"] = as_scalar(params.take("factor", 1.0), "factor")
        spec.num_outputs = w.shape[0]

    def merge_tensor(self, spec, k, name, xs, base):
        w = spec.params["weights"][k]
        return spec.params["factor"] * sum(float(wi) * x for wi, x in zip(w, xs))


class ScaledSum(LinearMethod):
    """factor * sum_i c_i x_i, by the streaming kernel."""

    name = "scaled_sum"
    summary = "factor times the weighted sum of the sources"
    parameters = ("factor",)
    config_parameters = ("factor",)

    def coefficients(self, spec, coefficients, params):
        factor = as_scalar(params.take("factor", 1.0), "factor")
        return factor * as_matrix(coefficients, spec.num_sources, "coefficients")


@pytest.fixture
def toy_methods():
    for cls in (ScaledMean, ScaledSum):
        register_method(cls)
    try:
        yield
    finally:
        for cls in (ScaledMean, ScaledSum):
            unregister_method(cls.name)


@pytest.fixture
def ckpts(tmp_path):
    sds = [model_tensors(i) for i in range(3)]
    return [save_ckpt(tmp_path / f"m{i}", sd) for i, sd in enumerate(sds)], sds


def _want(sds, weights, factor, name) -> np.ndarray:
    """factor * sum_i w_i x_i / sum_i w_i in fp64 (normalized: scaled_mean; pass w / 1 for scaled_sum)."""
    return factor * sum(w * sd[name].double().numpy() for w, sd in zip(weights, sds))


def _check(got: dict, sds, weights, factor) -> None:
    for n, t in sds[0].items():
        if t.is_floating_point():
            want = _want(sds, weights, factor, n)
            assert np.allclose(got[n].double().numpy(), want, rtol=1e-5, atol=1e-6), n
        else:
            assert torch.equal(got[n], t), n  # integer buffers are copied


def test_registry_lists_a_registered_method(toy_methods, capsys):
    assert "scaled_mean" in METHODS and "scaled_sum" in list(METHODS) and "passthrough" in METHODS
    with pytest.raises(SystemExit):
        cli.main(["merge", "--help"])
    assert "scaled_mean [factor]: factor times the weighted mean" in capsys.readouterr().out


@pytest.mark.parametrize("method,weights", [("scaled_mean", [1.0, 3.0]), ("scaled_sum", [0.5, -0.25])])
def test_merge_and_merge_into(toy_methods, ckpts, tmp_path, method, weights):
    paths, sds = ckpts
    norm = sum(weights) if method == "scaled_mean" else 1.0
    w = [x / norm for x in weights]
    rep = mogen.merge(paths[:2], weights, tmp_path / "o", method=method, factor=0.5, progress=False)
    assert rep.method == method
    _check(load_ckpt(tmp_path / "o"), sds, w, 0.5)
    model = torch.nn.Module()
    model.w = torch.nn.Parameter(torch.zeros_like(sds[0]["v_head.weight"]))
    model.b = torch.nn.Parameter(torch.zeros_like(sds[0]["v_head.bias"]))
    flat = [save_ckpt(tmp_path / f"f{i}", {"w": sd["v_head.weight"], "b": sd["v_head.bias"]}) for i, sd in
            enumerate(sds[:2])]
    mogen.merge_into(model, flat, weights, method=method, factor=2.0)
    assert np.allclose(model.w.detach().double().numpy(), _want(sds, w, 2.0, "v_head.weight"), rtol=1e-5, atol=1e-6)
    assert np.allclose(model.b.detach().double().numpy(), _want(sds, w, 2.0, "v_head.bias"), rtol=1e-5, atol=1e-6)


def test_k_outputs(toy_methods, ckpts, tmp_path):
    paths, sds = ckpts
    mogen.merge(paths, [[1.0, 1.0, 2.0], [0.0, 1.0, 0.0]], [tmp_path / "a", tmp_path / "b"], method="scaled_mean",
                factor=3.0, progress=False)
    _check(load_ckpt(tmp_path / "a"), sds, [0.25, 0.25, 0.5], 3.0)
    _check(load_ckpt(tmp_path / "b"), sds, [0.0, 1.0, 0.0], 3.0)


def test_yaml_config(toy_methods, ckpts, tmp_path):
    paths, sds = ckpts
    cfg = {"models": [{"model": "m0", "parameters": {"weight": 2.0}}, {"model": "m1"},
                      {"model": "m2", "parameters": {"weight": 1.0}}],
           "merge_method": "scaled_mean", "parameters": {"factor": 0.75}, "dtype": "float32"}
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(cfg))
    assert cli.main(["merge", "--config", str(tmp_path / "toy.yaml"), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    _check(load_ckpt(tmp_path / "o"), sds, [0.5, 0.25, 0.25], 0.75)


def test_yaml_config_per_layer(toy_methods, ckpts, tmp_path):
    """A gradient parameter sends the config to the layerwise reader, which takes the method from the registry too."""
    paths, sds = ckpts
    cfg = {"models": [{"model": "m0"}, {"model": "m1"}], "merge_method": "scaled_sum",
           "parameters": {"factor": [1.0, 3.0]}}
    (tmp_path / "grad.yaml").write_text(yaml.safe_dump(cfg))
    assert cli.main(["merge", "--config", str(tmp_path / "grad.yaml"), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    got = load_ckpt(tmp_path / "o")
    for n, factor in (("model.layers.0.mlp.up_proj.weight", 1.0), ("model.layers.1.mlp.up_proj.weight", 3.0),
                      ("v_head.weight", 1.0)):  # layer i of 2 at t = i; tensors outside the layers at t = 0
        assert np.allclose(got[n].double().numpy(), _want(sds, [1.0, 1.0], factor, n), rtol=1e-5, atol=1e-6), n


def test_unregistered_method_is_unknown(ckpts, tmp_path):
    paths, _ = ckpts
    assert "scaled_mean" not in METHODS
    with pytest.raises(ValueError, match="unknown merge method 'scaled_mean'"):
        mogen.merge(paths[:2], [0.5, 0.5], tmp_path / "o", method="scaled_mean", progress=False)


def test_registering_twice_is_refused(toy_methods):
    with pytest.raises(ValueError, match="already registered"):
        register_method(ScaledMean)
