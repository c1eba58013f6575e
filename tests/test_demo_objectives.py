"""The demo's three-objective variant: the ocean topic and reward, the two-topic texts unchanged,
the n = 3 build, and an n = 3 sweep of the built models end to end."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re

import numpy as np
import pytest

from mogen import cli
from mogen.demo import corpus as c
from mogen.demo.train import DEMO_VERSION, DemoConfig, _mixture


def _sha(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def test_two_topic_texts_and_cache_key_are_unchanged():
    """The hashes of the texts the two-topic functions gave before the third topic existed: the cached
    two-objective demo models (and the recorded two-objective results) stay valid."""
    assert _sha(c.corpus(4000, seed=0)) == "4e1af0812b08c379bc62ef75e924badf0ec89459d9977b6f7728d99f15cf47be"
    assert _sha(c.corpus()) == "7f5eb2662ffa63ccaa19976067ddac3522ff6cbd5d3b0c74191fa31339625e94"
    assert c.corpus(4000, seed=0) == c.corpus(4000, seed=0, mix=(0.45, 0.45, 0.10), topics=("nature", "city"))
    expected = {"nature": "43b0137f0938358327a7cbdf9aa7d53e7ce90a2ed893c943a88be33f7cc517aa",
                "city": "baddb59c62459b67b93e23090cdf6b8e5617b513e7785a820a68bbd550f882c9",
                "mixed": "b20b48bd4786803df21d6e0aa6fd30259bf197740f3c68f36211854d8010431b"}
    for topic, digest in expected.items():
        assert _sha(c.topic_sentences(topic, 1500, seed=0)) == digest, topic
    assert _sha(c.neutral_prompts(96, seed=0)) == "29c70d646ab2b6460dd8038361dd7d23024a32ce06037934114dd69f73fbb2c4"
    first = "at dawn our group painted the crowded factory while the lobby opened near the market."
    assert c.corpus(3, seed=0)[0] == first
    # the default config hashes exactly what it hashed before the `objectives` and `guide_family` fields existed
    before = {k: v for k, v in dataclasses.asdict(DemoConfig()).items() if k not in ("objectives", "guide_family")}
    blob = json.dumps({"version": DEMO_VERSION, **before}, sort_keys=True)
    assert DemoConfig().key() == hashlib.sha256(blob.encode()).hexdigest()[:12]
    assert DemoConfig(objectives=3).key() != DemoConfig().key()
    assert c.objectives() is c.OBJECTIVES and c.objectives(2) == c.OBJECTIVES


def test_three_topic_corpus_and_rewards():
    assert [n for n, _ in c.objectives(3)] == ["nature", "city", "ocean"] == list(c.TOPICS_3)
    assert c.OBJECTIVES_3[:2] == c.OBJECTIVES and DemoConfig(objectives=3).topics == c.TOPICS_3
    assert len(set(c.OCEAN)) == len(c.OCEAN) >= 30
    others = set(c.NATURE) | set(c.CITY) | {w for p in c.PROMPTS for w in p.split()}
    assert not set(c.OCEAN) & others
    assert c.ocean_rate("the whale swam near the boat") == pytest.approx(2 / 6)
    assert c.nature_rate("the whale swam") == c.city_rate("the whale swam") == 0.0 == c.ocean_rate("")
    lines = c.corpus(600, seed=1, topics=c.TOPICS_3)
    rates = np.array([[fn(s) for _, fn in c.OBJECTIVES_3] for s in lines])  # [600, 3]
    single = (rates > 0).sum(1) == 1
    counts = np.bincount(rates[single].argmax(1), minlength=3)
    assert (counts > 150).all(), counts  # about 0.3 of the corpus per topic
    # "mixed" sentences pick two of the three topics: every pair shows up, never all three
    pairs = {tuple(np.flatnonzero(r > 0)) for r in rates if (r > 0).sum() >= 2}
    assert pairs == {(0, 1), (0, 2), (1, 2)}
    mixed = c.topic_sentences("mixed", 60, seed=0, topics=c.TOPICS_3)
    assert all(sum(fn(s) > 0 for _, fn in c.OBJECTIVES_3) <= 2 for s in mixed)
    with pytest.raises(ValueError, match="2 or 3 objectives"):
        c.objectives(4)
    with pytest.raises(ValueError, match="mix needs 4 weights"):
        c.corpus(10, topics=c.TOPICS_3, mix=(0.45, 0.45, 0.1))
    with pytest.raises(ValueError, match="topics must be two or more"):
        c.corpus(10, topics=("nature", "desert"))
    with pytest.raises(ValueError, match="2 or 3 objectives"):
        DemoConfig(objectives=1)


def test_backbone_mixture_splits_the_rest_evenly():
    """Bone Soup's B: ``beta`` of the own topic, ``(1 - beta) / 2`` of each other (remainder to the first)."""
    topics = {name: c.topic_sentences(name, 100, seed=0) for name in c.TOPICS_3}
    owner = {s: name for name, lines in topics.items() for s in lines}
    mix = _mixture(topics, "city", 0.75, 100, seed=0)
    assert [sum(owner[s] == name for s in mix) for name in c.TOPICS_3] == [13, 75, 12]


def test_demo_objectives_flag_needs_sweep(capsys):
    assert cli.main(["demo", "--objectives", "3"]) == 2
    assert "--sweep" in capsys.readouterr().err


SMALL3 = DemoConfig(corpus_size=600, topic_size=300, base_vocab=400, guide_vocab=300, base_hidden=32, base_layers=1,
                    guide_hidden=32, guide_layers=1, batch=16, base_steps=20, reference_steps=20, expert_steps=10,
                    policy_steps=10, value_prompts=8, value_samples=2, value_tokens=6, value_epochs=1, objectives=3)


def test_three_objective_demo_builds_and_sweeps(tmp_path):
    """A scaled-down n = 3 demo: three of every family, then the demo's n = 3 sweep config run on it."""
    from mogen.demo.sweep import DEMO_METHODS, demo_sweep_config
    from mogen.demo.train import load_demo_models
    from mogen.evaluation import run_sweep

    models = load_demo_models(SMALL3, tmp_path, log=lambda line: None)
    meta = json.loads((models.path / "meta.json").read_text())
    assert meta["objectives"] == ["nature", "city", "ocean"] and set(meta["value_models"]) == set(c.TOPICS_3)
    for family in ("expert", "policy", "backbone", "value"):
        assert all((models.path / f"{family}_{n}" / "model.safetensors").is_file() for n in c.TOPICS_3), family
    methods = [DEMO_METHODS[0], DEMO_METHODS[6]]  # base only, MAGE-E (value models): the rest in test_sweep
    cfg = demo_sweep_config(models.path, tmp_path / "run", samples=1, points=3, max_new_tokens=6, methods=methods,
                            objectives=3)
    cfg["prompts"] = cfg["prompts"][:2]
    res = run_sweep(cfg, progress=False)
    assert res.decoded == 6 * len(methods)  # points=3: the step-1/2 lattice, 6 preferences
    header = (res.folder / "means.csv").read_text().splitlines()[0]
    assert header == "method,mu_1,mu_2,mu_3,nature_rate,city_rate,ocean_rate,tokens,seconds"
    md = (res.folder / "metrics.md").read_text()
    assert "Reference point for HV: [0.0, 0.0, 0.0]; 6 preference points" in md
    for name, row in res.table:
        assert 0.0 <= row["controllability"] <= 1.0 and row["HV"] >= 0.0 and 1 <= row["front"] <= 6, name
        assert np.isfinite([row["sparsity"], row["spacing"], row["IP"]]).all(), name
    assert (res.folder / "pareto.png").stat().st_size > 0
    assert len(re.findall(r"^\| ", md, flags=re.M)) == len(methods) + 1
