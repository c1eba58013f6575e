"""Typed configs (mogen.configs): merge, sweep and MAGE configs name the key path and file of every error."""

from __future__ import annotations

import copy
import re

import pytest
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
    (lambda c: c.update(rewards=["nope:f", REWARDS[0]]), "rewards[0]", "cannot import reward 'nope:f'"),
    (lambda c: c.update(reference_point=[0.0, float("inf")]), "reference_point", "finite"),
    (lambda c: c.pop("methods"), "methods", "is required"),
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
    assert to_dict(checked) == {**SWEEP, "preferences": 11, "samples": 1, "seeds": 1}  # the defaults filled in
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
