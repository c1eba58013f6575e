"""Substitute files (mogen.evaluation.substitute): a sweep config run with stand-in folders and smaller settings;
`mogen sweep --substitute`; errors that name the substitute file and its key."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from mogen import cli
from mogen.configs import ConfigError
from mogen.evaluation import load_sweep_config, run_sweep
from mogen.evaluation.substitute import apply_substitutes, config_paths

from tiny_models import metaspace_tokenizer, tiny_llama

#: A config as a user writes it for the real models; only some of its folders exist here (the stand-ins do).
CONFIG = {
    "output": "runs/real", "prompts": "data/prompts.txt",
    "rewards": ["tests_sweep_rewards:count_e", {"model": "models/rm", "label": 0}],
    "preferences": 11, "samples": 4, "reference_point": [-1, -100],
    "decoding": {"max_new_tokens": 128, "do_sample": True, "top_p": 0.9, "repetition_penalty": 1.1, "seed": 0},
    "models": {"base": "models/big", "sft": "models/big", "backbones": ["models/bb_a", "models/bb_b"],
               "dtype": "bf16"},
    "methods": [{"name": "base", "kind": "base"}, {"name": "Bone Soup", "kind": "bone_soup"}],
}
PATHS = {"models/big": "tiny/base", "models/bb_a/": "tiny/bb_a", "./models/bb_b": "tiny/bb_b", "models/rm": "tiny/rm",
         "data/prompts.txt": "tiny/prompts.txt"}
SMALL = {"preferences": 2, "samples": 1, "decoding": {"max_new_tokens": 3}, "models": {"dtype": "float32"}}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """``config/sweep.yaml`` (CONFIG) and, elsewhere, ``subst/stand_ins.yaml`` with its tiny stand-ins."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    root = tmp_path_factory.mktemp("substitute")
    (root / "config").mkdir()
    (root / "config" / "sweep.yaml").write_text(yaml.safe_dump(CONFIG))
    tiny = root / "subst" / "tiny"
    tok = metaspace_tokenizer()
    for name, seed in (("base", 1), ("bb_a", 2), ("bb_b", 3)):
        model = tiny_llama(len(tok), seed)
        model.generation_config.pad_token_id = tok.pad_token_id
        model.save_pretrained(tiny / name)
    tok.save_pretrained(tiny / "base")
    rm = LlamaForSequenceClassification(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                                                    num_hidden_layers=1, num_attention_heads=2, num_labels=1,
                                                    pad_token_id=tok.pad_token_id))
    rm.save_pretrained(tiny / "rm")
    tok.save_pretrained(tiny / "rm")
    (tiny / "prompts.txt").write_text("the river\na busy street\n")
    subst = root / "subst" / "stand_ins.yaml"
    subst.write_text(yaml.safe_dump({"paths": PATHS, "output": "run", "override": SMALL}))
    return root, subst


def test_config_paths():
    assert config_paths(CONFIG) == [("prompts", "data/prompts.txt"), ("rewards[1].model", "models/rm"),
                                    ("models.base", "models/big"), ("models.sft", "models/big"),
                                    ("models.backbones[0]", "models/bb_a"), ("models.backbones[1]", "models/bb_b")]
    raw = dict(CONFIG, prompts={"path": "p.parquet", "limit": 3},
               models={"experts": ["e1", "e2"], "reference": "r", "value_models": ["v1"], "tokenizer": "t",
                       "guide_tokenizer": "g", "policies": ["p1"]})
    assert [w for w, _ in config_paths(raw)] == [
        "prompts.path", "rewards[1].model", "models.tokenizer", "models.reference", "models.guide_tokenizer",
        "models.policies[0]", "models.experts[0]", "models.experts[1]", "models.value_models[0]"]
    assert config_paths("not a mapping") == []


def test_substitute_applies_paths_output_and_overrides(world):
    root, subst = world
    cfg = load_sweep_config(root / "config" / "sweep.yaml", substitute=subst)
    tiny = (root / "subst" / "tiny").resolve()
    assert cfg.output == Path(os.path.abspath(root / "subst" / "run"))
    # a path written twice (base and sft) is replaced everywhere; keys compare after normpath
    assert Path(cfg.models["base"]).resolve() == tiny / "base" and Path(cfg.models["sft"]).resolve() == tiny / "base"
    assert [Path(p).resolve() for p in cfg.models["backbones"]] == [tiny / "bb_a", tiny / "bb_b"]
    assert Path(cfg.rewards[1].source).resolve() == tiny / "rm"
    assert cfg.prompts == ["the river", "a busy street"]
    # override: mappings merge key by key, the rest replaces
    assert cfg.decoding == {"max_new_tokens": 3, "do_sample": True, "top_p": 0.9, "repetition_penalty": 1.1, "seed": 0}
    assert cfg.models["dtype"] == "float32" and cfg.samples == 1 and cfg.preferences.shape == (2, 2)
    assert cfg.reference_point == [-1, -100] and [m.name for m in cfg.methods] == ["base", "Bone Soup"]
    # the config itself is left as it was
    assert yaml.safe_load((root / "config" / "sweep.yaml").read_text()) == CONFIG
    methods = [{"name": "base", "kind": "base"}]
    stand_ins = {k: str(root / "subst" / v) for k, v in PATHS.items()}
    again = load_sweep_config(root / "config" / "sweep.yaml", substitute={"paths": stand_ins,
                                                                         "override": {"methods": methods}})
    assert [m.name for m in again.methods] == ["base"]


def test_sweep_cli_with_substitute(world, capsys):
    root, subst = world
    config = root / "config" / "sweep.yaml"
    assert cli.main(["sweep", "--config", str(config), "--substitute", str(subst), "--quiet"]) == 0
    out = capsys.readouterr().out
    run = root / "subst" / "run"
    assert "4 point(s) decoded, 0 already done" in out and "| Bone Soup |" in out
    lines = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    assert len(lines) == 2 * 2 * 2 and all(len(ln["rewards"]) == 2 for ln in lines)
    assert not (root / "config" / "runs").exists()  # the config's own output is not touched
    # a rerun with the same substitutes finds every point done
    assert run_sweep(config, substitute=subst, progress=False).decoded == 0


def _error(world, substitute, match):
    root, _ = world
    with pytest.raises(ConfigError, match=match) as info:
        load_sweep_config(root / "config" / "sweep.yaml", substitute=substitute)
    return info.value


def test_substitute_errors(world):
    root, subst = world
    base = yaml.safe_load(subst.read_text())

    def write(**changes):
        subst.with_name("bad.yaml").write_text(yaml.safe_dump({**base, **changes}))
        return subst.with_name("bad.yaml")

    bad = str(subst.with_name("bad.yaml"))
    # keys of the substitute file itself
    _error(world, write(path={}),
           rf"^{bad}: path: unknown key\(s\) \['path'\]; known: \['paths', 'output', 'override'\]")
    # a path the config does not name: the error lists the paths it does name
    err = _error(world, write(paths={**PATHS, "models/bigg": "tiny/base"}),
                 rf"^{bad}: paths\['models/bigg'\]: 'models/bigg' is not a path of the config .*sweep.yaml'; its "
                 r"paths: \['data/prompts.txt', 'models/bb_a', 'models/bb_b', 'models/big', 'models/rm'\]")
    assert err.file == subst.with_name("bad.yaml")
    _error(world, write(paths={"models/big": 3}), r"paths\['models/big'\]: maps a path of the config to the path")
    # override: unknown keys, at the top and inside a section; output is the file's own key
    _error(world, write(override={"sample": 1}),
           rf"^{bad}: override.sample: unknown key\(s\) \['sample'\] \(the config")
    _error(world, write(override={"decoding": {"max_new_token": 3}}),
           rf"^{bad}: override.decoding.max_new_token: unknown key\(s\) \['max_new_token'\] of decoding")
    _error(world, write(override={"output": "x"}), r"override.output: the run folder is the substitute file's own")
    _error(world, write(override={"prompts": {"limit": 1}}),
           r"override.prompts: merges into the config's prompts mapping, but the config's prompts is '.*prompts.txt': "
           "give the whole value")
    # a value override sets that the config refuses: the substitute file's key, not the config's
    _error(world, write(override={"decoding": {"max_new_tokens": 0}}),
           rf"^{bad}: override.decoding.max_new_tokens: must be an int >= 1, got 0")
    _error(world, write(override={"preferences": [[0.5, 0.6], [1.0, 0.0]]}),
           rf"^{bad}: override.preferences\[0\]: \[0.5, 0.6\] is not on the simplex")
    # a stand-in that is not there: the config's key, and which stand-in it was
    _error(world, write(paths={**PATHS, "models/rm": "tiny/missing"}),
           r"sweep.yaml: rewards\[1\].model: reward model folder .*tiny/missing' does not exist .*\(a stand-in: "
           rf"{bad} paths\['models/rm'\]\)")
    # an error of the config itself still names the config
    plain = dict(CONFIG, samples=0)
    with pytest.raises(ConfigError, match=r"^sweep config: samples: must be an int >= 1"):
        load_sweep_config(plain, root / "config", substitute={"paths": {}})
    with pytest.raises(TypeError, match="substitute= applies to a YAML path or a dict config"):
        run_sweep(load_sweep_config(root / "config" / "sweep.yaml", substitute=subst), substitute=subst)


def test_apply_substitutes_leaves_the_config_alone():
    raw = {"models": {"base": "m"}, "decoding": {"top_p": 0.9}}
    out, applied = apply_substitutes(raw, {"paths": {"m": "/x/m"}, "override": {"decoding": {"top_k": 0}}})
    assert out == {"models": {"base": "/x/m"}, "decoding": {"top_p": 0.9, "top_k": 0}}
    assert raw == {"models": {"base": "m"}, "decoding": {"top_p": 0.9}}
    assert applied.substituted == {"models.base": "m"} and applied.overridden == ["decoding.top_k"]
