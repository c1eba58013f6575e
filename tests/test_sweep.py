"""mogen sweep: every output written, resumable, clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from mogen import cli
from mogen.evaluation import load_sweep_config, preference_grid, run_sweep

from tiny_models import metaspace_tokenizer, tiny_llama, value_llama


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    tok = metaspace_tokenizer()
    v = len(tok)
    for name, model in [("base", tiny_llama(v, 1)), ("pa", tiny_llama(v, 2)), ("pb", tiny_llama(v, 3)),
                        ("bba", tiny_llama(v, 4)), ("bbb", tiny_llama(v, 5)), ("ea", tiny_llama(v, 6)),
                        ("eb", tiny_llama(v, 7)), ("ref", tiny_llama(v, 8)), ("va", value_llama(v, 9)),
                        ("vb", value_llama(v, 10))]:
        model.generation_config.pad_token_id = tok.pad_token_id
        model.save_pretrained(root / name)
    tok.save_pretrained(root / "base")
    (root / "prompts.txt").write_text("the river\na busy street\n")
    cfg = {
        "output": "run", "prompts": "prompts.txt", "preferences": 3, "samples": 1, "reference_point": [-1, -1],
        "rewards": ["mogen.demo.corpus:nature_rate", "mogen.demo.corpus:city_rate"],
        "decoding": {"max_new_tokens": 4, "do_sample": True, "seed": 0},
        "models": {"base": "base", "policies": ["pa", "pb"], "backbones": ["bba", "bbb"], "experts": ["ea", "eb"],
                   "reference": "ref", "value_models": ["va", "vb"]},
        "methods": [{"name": "base", "kind": "base"}, {"name": "Rewarded Soup", "kind": "rewarded_soup"},
                    {"name": "Bone Soup", "kind": "bone_soup"}, {"name": "MOD", "kind": "mod"},
                    {"name": "MPAW", "kind": "mpaw"}, {"name": "MAGE-E-M", "kind": "mage", "variant": "E-M"}],
    }
    return root, cfg


def test_sweep_writes_everything_and_resumes(setup):
    root, cfg = setup
    res = run_sweep(cfg, root=root, progress=False)
    folder = root / "run"
    assert res.decoded == 18 and res.skipped == 0
    for name in ("samples.jsonl", "means.csv", "metrics.md", "pareto.png"):
        assert (folder / name).is_file() and (folder / name).stat().st_size > 0, name
    lines = [json.loads(x) for x in (folder / "samples.jsonl").read_text().splitlines()]
    assert len(lines) == 6 * 3 * 2 and {ln["method"] for ln in lines} == {m["name"] for m in cfg["methods"]}
    assert all(len(ln["rewards"]) == 2 for ln in lines)
    metrics_md = (folder / "metrics.md").read_text()
    assert "Reference point for HV: [-1.0, -1.0]" in metrics_md and "| MAGE-E-M |" in metrics_md
    again = run_sweep(cfg, root=root, progress=False)
    assert again.decoded == 0 and again.skipped == 18
    # a run killed midway: some points missing; the rerun decodes exactly those, same results
    before = (folder / "samples.jsonl").read_text()
    for f in list((folder / "points" / "MOD").glob("*.json"))[:2]:
        f.unlink()
    resumed = run_sweep(cfg, root=root, progress=False)
    assert resumed.decoded == 2
    assert (folder / "samples.jsonl").read_text() == before  # seeded per point: the same texts


def test_sweep_cli(setup, tmp_path, capsys):
    root, cfg = setup
    import yaml

    small = dict(cfg, output=str(tmp_path / "cli"), methods=cfg["methods"][:1], preferences=2)
    path = root / "small.yaml"
    path.write_text(yaml.safe_dump(small))
    assert cli.main(["sweep", "--config", str(path), "--quiet"]) == 0
    assert "| base |" in capsys.readouterr().out


def test_sweep_errors(setup):
    root, cfg = setup
    with pytest.raises(ValueError, match="unknown kind 'magic'"):
        load_sweep_config(dict(cfg, methods=[{"name": "x", "kind": "magic"}]), root)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['colour'\]"):
        load_sweep_config(dict(cfg, colour=1), root)
    with pytest.raises(ValueError, match="unknown key.*gamma"):
        load_sweep_config(dict(cfg, methods=[{"name": "x", "kind": "mpaw", "gamma": 2}]), root)
    with pytest.raises(ValueError, match="cannot import reward 'nope:f'"):
        load_sweep_config(dict(cfg, rewards=["nope:f", "mogen.demo.corpus:city_rate"]), root)
    bad = dict(cfg, output="bad", rewards=["tests_sweep_rewards:not_finite", "mogen.demo.corpus:city_rate"],
               methods=[{"name": "base", "kind": "base"}])
    with pytest.raises(ValueError, match=r"not_finite at preference \[0.0, 1.0\].*prompt='the river'.*nan"):
        run_sweep(bad, root=root, progress=False)
    with pytest.raises(ValueError, match="needs models.value_models"):
        run_sweep(dict(cfg, output="bad2", models={k: v for k, v in cfg["models"].items() if k != "value_models"},
                       methods=[{"name": "E", "kind": "mage", "variant": "E"}]), root=root, progress=False)


def test_preference_grid():
    assert preference_grid(2, 11).shape == (11, 2)
    g = preference_grid(3, 5)
    assert g.shape == (15, 3) and torch.allclose(torch.tensor(g.sum(1)), torch.ones(15, dtype=torch.float64))
