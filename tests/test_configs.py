"""Typed configs (mogen.configs): merge, sweep and MAGE configs name the key path and file of every error."""

from __future__ import annotations

import copy
import re

import pytest
import torch
import yaml

from mogen.configs import ConfigError, parse, to_dict
from mogen.evaluation.config import SweepFile, load_sweep_config, parse_sweep_file
from mogen.mage import MAGE, MAGEConfig

REWARDS = ["mogen.demo.corpus:city_rate", "mogen.demo.corpus:city_rate"]
SWEEP = {"output": "runs", "prompts": ["a prompt"], "rewards": REWARDS, "reference_point": [0.0, 0.0],
         "decoding": {"max_new_tokens": 4, "seed": 0}, "bootstrap": {"resamples": 10, "seed": 1},
         "models": {"base": "base", "experts": ["ea", "eb"], "reference": "ref", "bone_beta": 0.7},
         "methods": [{"name": "base", "kind": "base"},
                     {"name": "MAGE", "kind": "mage", "variant": "E-M", "gamma": 2.0, "search": {"beam_width": 2}}]}


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    assert isinstance(info.value, ValueError)
    return str(info.value)


def _write(tmp_path, name: str, cfg: dict):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


# -- the helper ---------------------------------------------------------------------------------------------
def test_config_error_text_names_file_and_path():
    assert str(ConfigError("slices[1].sources[0].layer_range", "bad", "m.yml")) == \
        "m.yml: slices[1].sources[0].layer_range: bad"
    assert str(ConfigError("a.b", "bad", label="merge config")) == "merge config: a.b: bad"
    assert str(ConfigError("", "bad", "m.yml")) == "m.yml: bad"


# -- sweep configs ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("change, path, message", [
    (lambda c: c.update(colour=1), "colour", r"unknown key\(s\) \['colour'\]"),
    (lambda c: c["models"].update(backbone=["a"]), "models.backbone", r"unknown key\(s\) \['backbone'\]"),
    (lambda c: c["methods"][1].update(temperature=1), "methods[1].temperature", "unknown key.*for kind 'mage'"),
    (lambda c: c["methods"][1].update(gamma="high"), "methods[1].gamma", "expected a number, got 'high'"),
    (lambda c: c["models"]["experts"].__setitem__(1, 7), "models.experts[1]", "expected a string"),
    (lambda c: c["bootstrap"].update(resamples=0), "bootstrap.resamples", "must be an int >= 1"),
    (lambda c: c["methods"][1].update(variant="Q"), "methods[1].variant", "variant must be one of"),
    (lambda c: c["methods"][1].update(value_top_k=0), "methods[1].value_top_k", "must be an int >= 1"),
    (lambda c: c["methods"][0].update(kind="magic"), "methods[0].kind", "unknown kind 'magic'"),
    (lambda c: c["methods"][0].update(kind="mpaw", cross_vocab="bytes"), "methods[0].cross_vocab",
     r"must be one of \['map', 'text'\]"),
    (lambda c: c["methods"][0].update(kind="mpaw_search", text_top_k=0), "methods[0].text_top_k",
     "must be an int >= 1"),
    (lambda c: c.update(rewards=["nope:f", REWARDS[0]]), "rewards[0]", "cannot import reward 'nope:f'"),
    (lambda c: c.update(reference_point=[0.0, float("inf")]), "reference_point", "finite"),
    (lambda c: c.pop("methods"), "methods", "is required"),
    (lambda c: c["models"].update(dtype="int4"), "models.dtype", "dtype must be one of"),
    (lambda c: c.update(prompts="missing.txt"), "prompts", "cannot read the prompts file"),
])
def test_sweep_errors_name_path_and_file(tmp_path, change, path, message):
    cfg = copy.deepcopy(SWEEP)
    change(cfg)
    text = _error(load_sweep_config, cfg, tmp_path)
    assert text.startswith(f"sweep config: {path}: ") and re.search(message, text), text
    file = _write(tmp_path, "sweep.yaml", cfg)
    text = _error(load_sweep_config, file)
    assert text.startswith(f"{file}: {path}: ") and re.search(message, text), text


def test_sweep_config_round_trips(tmp_path):
    checked = parse_sweep_file(SWEEP)
    assert isinstance(checked, SweepFile) and parse(SweepFile, to_dict(checked)) == checked
    assert to_dict(checked) == {**SWEEP, "preferences": 11, "samples": 1, "seeds": 1,  # the defaults filled in
                                "max_retries": 2}
    cfg = load_sweep_config(_write(tmp_path, "sweep.yaml", to_dict(checked)))
    assert cfg.output == tmp_path / "runs" and cfg.models["experts"] == [tmp_path / "ea", tmp_path / "eb"]
    assert cfg.resamples == 10 and cfg.bootstrap_seed == 1 and cfg.decoding == {"max_new_tokens": 4, "seed": 0}
    assert [m.params for m in cfg.methods] == [{}, {"variant": "E-M", "gamma": 2.0, "search": {"beam_width": 2}}]


# -- MAGE ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("data, path, message", [
    ({"gama": 1.0}, "gama", r"unknown key\(s\) \['gama'\]"),
    ({"gamma": "x"}, "gamma", "expected a number"),
    ({"variant": "X"}, "variant", "variant must be one of"),
    ({"bone_beta": float("nan")}, "bone_beta", "finite"),
    ({"search": [1]}, "search", "expected a mapping"),
])
def test_mage_config_errors_name_path_and_file(data, path, message):
    text = _error(MAGEConfig.parse, data, file="mage.yaml")
    assert text.startswith(f"mage.yaml: {path}: ") and re.search(message, text), text
    text = _error(MAGEConfig.parse, data, "methods[2]")
    assert text.startswith(f"MAGE config: methods[2].{path}: "), text


def test_mage_checks_its_config_before_loading_anything(tmp_path):
    bb = [tmp_path / "missing0", tmp_path / "missing1"]
    assert _error(MAGE, bb, tokenizer=None, gamma="x").startswith("MAGE config: gamma: expected a number")
    assert "singular" in _error(MAGE, bb, tokenizer=None, bone_beta=0.5)
    assert _error(MAGE, bb, tokenizer=None, alpha=0.3).startswith("MAGE config: alpha: ")
    with pytest.raises(TypeError, match="unexpected keyword"):
        MAGE(bb, tokenizer=None, gama=1.0)


def test_mage_config_round_trips_and_keywords_override():
    cfg = MAGEConfig.parse({"variant": "I-M", "expert_beta": 0.9, "value_top_k": 4, "search": {"beam_width": 2}})
    assert MAGEConfig.parse(to_dict(cfg)) == cfg and cfg.bone_beta == 0.8
    assert MAGE._config(cfg, {"gamma": 3}) == MAGEConfig.parse({**to_dict(cfg), "gamma": 3.0})
    assert MAGE._config(None, {}) == MAGEConfig()


# -- merge configs ------------------------------------------------------------------------------------------
SLICED = {"merge_method": "linear", "dtype": "float32", "parameters": {"normalize": True},
          "slices": [{"sources": [{"model": "a", "layer_range": [0, 2], "parameters": {"weight": 0.5}},
                                  {"model": "b", "layer_range": [0, 2], "parameters": {"weight": [0.2, 0.8]}}]},
                     {"sources": [{"model": "a", "layer_range": [2, 4]}, {"model": "b", "layer_range": [2, 4]}],
                      "parameters": {"weight": 0.5}}]}
WHOLE = {"merge_method": "task_arithmetic", "base_model": "base", "tokenizer_source": "base",
         "models": ["a", {"model": "b", "parameters": {"weight": 0.3}}], "parameters": {"lambda": 0.5}}


@pytest.mark.parametrize("base, change, path, message", [
    (SLICED, lambda c: c["slices"][1]["sources"][0].update(layers=[0, 1]), "slices[1].sources[0].layers",
     r"unknown key\(s\) \['layers'\]"),
    (SLICED, lambda c: c["slices"][1]["sources"][0].update(layer_range=[3, 1]), "slices[1].sources[0].layer_range",
     r"expected \[begin, end\)"),
    (SLICED, lambda c: c["slices"][1]["sources"][0].update(layer_range=[0, "4"]),
     "slices[1].sources[0].layer_range[1]", "expected an int"),
    (SLICED, lambda c: c["slices"][1]["sources"][0].pop("layer_range"), "slices[1].sources[0].layer_range",
     "is required"),
    (SLICED, lambda c: c["slices"][0]["sources"][1]["parameters"].update(weight={"filter": 1}),
     "slices[0].sources[1].parameters.weight[0]", "an entry needs 'value'"),
    (SLICED, lambda c: c["slices"][1].update(sources=[]), "slices[1].sources", "non-empty"),
    (SLICED, lambda c: c.update(merge_method="nuslerp"), "merge_method", "unknown merge method 'nuslerp'"),
    (WHOLE, lambda c: c["models"][1].update(weight=0.3), "models[1].weight", r"unknown key\(s\) \['weight'\]"),
    (WHOLE, lambda c: c.update(base_model=["x"]), "base_model", "expected a string"),
    (WHOLE, lambda c: c["models"][1]["parameters"].update(dnsity=0.5), "models[1].parameters.dnsity",
     "unknown parameter"),
    (WHOLE, lambda c: c["parameters"].update(lambda_=1), "parameters.lambda_", "unknown parameter"),
    (WHOLE, lambda c: c.update(tokenizer_source="union"), "tokenizer_source", "not supported"),
    (WHOLE, lambda c: c.update(out_dtype="int8"), "out_dtype", "dtype must be one of"),
])
def test_merge_errors_name_path_and_file(tmp_path, base, change, path, message):
    from mogen.merging.config import config_to_merge_args, load_config
    from mogen.merging.layerwise import merge_config

    cfg = copy.deepcopy(base)
    change(cfg)
    file = _write(tmp_path, "merge.yml", cfg)
    read = (lambda: config_to_merge_args(load_config(file), tmp_path, file=file)) if "models" in cfg else \
        (lambda: merge_config(load_config(file), tmp_path / "out", tmp_path, file=file))
    text = _error(read)
    assert text.startswith(f"{file}: {path}: ") and re.search(message, text), text
    run = config_to_merge_args if "models" in cfg else (lambda c, root: merge_config(c, tmp_path / "out", root))
    text = _error(run, cfg, tmp_path)
    assert text.startswith(f"merge config: {path}: ") and re.search(message, text), text


def test_merge_error_from_the_checkpoints_names_path_and_file(tmp_path):
    from merge_helpers import save_ckpt
    from mogen.merging.layerwise import merge_config

    tensors = {f"model.layers.{i}.w": torch.ones(2) for i in range(4)}
    save_ckpt(tmp_path / "a", tensors)
    save_ckpt(tmp_path / "b", tensors)
    cfg = copy.deepcopy(SLICED)
    cfg["slices"][1]["sources"][1]["layer_range"] = [2, 6]
    file = _write(tmp_path, "merge.yml", cfg)
    text = _error(merge_config, cfg, tmp_path / "out", tmp_path, progress=False, file=file)
    assert text.startswith(f"{file}: slices[1].sources[1].layer_range: [2, 6] is beyond the 4 layers"), text
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("cfg", [SLICED, WHOLE])
def test_merge_config_round_trips(cfg):
    from mogen.merging.schema import MergeConfig, ModelEntry, parse_merge_config

    checked = parse_merge_config(cfg)
    assert isinstance(checked, MergeConfig) and to_dict(checked) == cfg
    assert parse_merge_config(to_dict(checked)) == checked
    if checked.models:
        assert checked.models[1] == ModelEntry("b", {"weight": 0.3})
    else:
        assert checked.slices[1].sources[0].layer_range == [2, 4]
