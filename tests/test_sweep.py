"""mogen sweep: every output written, resumable, clear errors."""

from __future__ import annotations

import itertools
import re
import json

import numpy as np
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
                        ("vb", value_llama(v, 10)), ("pc", tiny_llama(v, 11)), ("bbc", tiny_llama(v, 12)),
                        ("ec", tiny_llama(v, 13)), ("vc", value_llama(v, 14))]:
        model.generation_config.pad_token_id = tok.pad_token_id
        model.save_pretrained(root / name)
    tok.save_pretrained(root / "base")
    (root / "prompts.txt").write_text("the river\na busy street\n")
    cfg = {
        "output": "run", "prompts": "prompts.txt", "preferences": 3, "samples": 1, "reference_point": [-1, -1],
        # Known, non-zero rewards on random text, so that every metric has something to measure.
        "rewards": ["tests_sweep_rewards:count_e", "tests_sweep_rewards:count_a"],
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
    # other settings: the points of the old run are decoded again, not mixed in
    more = run_sweep({**cfg, "samples": 2}, root=root, progress=False)
    assert more.decoded == 18 and more.skipped == 0
    assert len((folder / "samples.jsonl").read_text().splitlines()) == 6 * 3 * 2 * 2
    tuned = run_sweep({**cfg, "samples": 2, "methods": cfg["methods"][:4] + [{**cfg["methods"][4], "beta": 0.5}]},
                      root=root, progress=False)
    assert tuned.decoded == 3 and tuned.skipped == 12  # only the method whose parameters changed


def test_sweep_with_three_objectives(setup):
    """n = 3: every method kind over the step-1/2 lattice (6 preferences), all metrics finite, a 3-panel plot."""
    root, cfg = setup
    models = dict(cfg["models"], policies=["pa", "pb", "pc"], backbones=["bba", "bbb", "bbc"],
                  experts=["ea", "eb", "ec"], value_models=["va", "vb", "vc"])
    methods = cfg["methods"] + [{"name": "MPAW search", "kind": "mpaw_search", "beam_width": 2, "expansion": 2,
                                 "chunk_length": 2}, {"name": "MAGE-I-M", "kind": "mage", "variant": "I-M"}]
    tri = dict(cfg, output="run3", rewards=[*cfg["rewards"], "tests_sweep_rewards:count_o"],
               reference_point=[-1, -1, -1], models=models, methods=methods)
    res = run_sweep(tri, root=root, progress=False)
    assert res.decoded == 8 * 6
    lines = [json.loads(x) for x in (root / "run3" / "samples.jsonl").read_text().splitlines()]
    assert {tuple(ln["preference"]) for ln in lines} == {tuple(mu) for mu in preference_grid(3, 3).tolist()}
    assert all(len(ln["rewards"]) == 3 for ln in lines)
    for name, row in res.table:
        assert all(np.isfinite(v) for v in row.values()), name
        assert row["HV"] > 0 and 0 <= row["controllability"] <= 1, name
    head = "Reference point for HV: [-1.0, -1.0, -1.0]; 6 preference points"
    assert head in (root / "run3" / "metrics.md").read_text()
    assert (root / "run3" / "pareto.png").stat().st_size > 0


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
    with pytest.raises(ValueError, match=r"preferences\[1\]: \[0.7, 0.7\] is not on the simplex"):
        load_sweep_config(dict(cfg, preferences=[[1.0, 0.0], [0.7, 0.7]]), root)
    with pytest.raises(ValueError, match="preferences: a sweep needs at least 2 distinct preference points"):
        load_sweep_config(dict(cfg, preferences=[[0.5, 0.5], [0.5, 0.5]]), root)
    with pytest.raises(ValueError, match="needs models.value_models"):
        run_sweep(dict(cfg, output="bad2", models={k: v for k, v in cfg["models"].items() if k != "value_models"},
                       methods=[{"name": "E", "kind": "mage", "variant": "E"}]), root=root, progress=False)


def test_preference_grid():
    assert preference_grid(2, 11).shape == (11, 2)
    assert np.allclose(preference_grid(2, 11), [[i / 10, 1 - i / 10] for i in range(11)])
    g = preference_grid(3, 5)
    assert g.shape == (15, 3) and torch.allclose(torch.tensor(g.sum(1)), torch.ones(15, dtype=torch.float64))


@pytest.mark.parametrize("n,points,size", [(3, 5, 15), (3, 6, 21), (4, 4, 20), (5, 3, 15)])
def test_preference_grid_is_a_path_of_neighbours(n, points, size):
    """Every lattice point once, mu_1 ascending, consecutive points one lattice step apart (so sparsity,
    eq. 29 over points in preference order, compares neighbours only)."""
    d = points - 1
    g = preference_grid(n, points)
    lattice = {c for c in itertools.product(range(d + 1), repeat=n) if sum(c) == d}
    assert g.shape == (size, n) and {tuple(int(x) for x in row) for row in np.rint(g * d)} == lattice
    assert (np.diff(g[:, 0]) >= 0).all()
    assert np.allclose(np.abs(np.diff(g, axis=0)).sum(1), 2 / d)


# --------------------------------------------------------------------------- #
# The reports against the texts: every figure of means.csv and metrics.md
# recomputed from samples.jsonl with this file's own code.
# --------------------------------------------------------------------------- #


def _own_metrics(prefs: np.ndarray, r: np.ndarray, ref) -> dict:
    """Two objectives, maximised: HV (eq. 27), IP (28), sparsity (29), spacing (30), front, Definition 1."""
    pts = [tuple(p) for p in r]
    front = {p for p in pts if not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in pts)}
    hv, top = 0.0, ref[1]
    for x, y in sorted((p for p in front if p[0] > ref[0] and p[1] > ref[1]), reverse=True):
        if y > top:
            hv, top = hv + (x - ref[0]) * (y - top), y
    nearest = [min(np.hypot(*(r[i] - r[j])) for j in range(len(r)) if j != i) for i in range(len(r))]
    pairs = [(i, j) for i in range(len(r)) for j in range(len(r)) if i != j]
    agree = [all(np.sign(prefs[i, k] - prefs[j, k]) == np.sign(r[i, k] - r[j, k]) for k in range(2)) for i, j in pairs]
    return {"HV": hv, "IP": float(np.mean([p @ x for p, x in zip(prefs, r)])),
            "sparsity": sum(float(np.sum((r[i] - r[i - 1]) ** 2)) for i in range(1, len(r))) / (len(r) - 1),
            "spacing": float(np.std(nearest)), "front": len(front), "controllability": float(np.mean(agree))}


def _md_rows(text: str) -> dict:
    """metrics.md's table: method -> {column: (value, low, high)} (tokens/s: (value, None, None))."""
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    cols = [c.strip() for c in lines[0].strip("|").split("|")][1:]
    out = {}
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        row = {}
        for col, cell in zip(cols, cells[1:]):
            m = re.fullmatch(r"(\S+)(?: \[(\S+), (\S+)\])?", cell)
            row[col] = tuple(float(x) if x is not None else None for x in m.groups())
        out[cells[0]] = row
    return out


def test_reports_agree_with_the_texts(setup):
    import csv

    from tests_sweep_rewards import count_a, count_e

    root, cfg = setup
    run = dict(cfg, output="run_check", preferences=5, samples=2, seeds=2, bootstrap={"resamples": 200, "seed": 3},
               decoding={**cfg["decoding"], "max_new_tokens": 8},
               methods=[cfg["methods"][0], cfg["methods"][4], {"name": "MAGE-E", "kind": "mage", "variant": "E",
                                                                 "gamma": 4.0}])
    res = run_sweep(run, root=root, progress=False)
    folder = root / "run_check"
    lines = [json.loads(x) for x in (folder / "samples.jsonl").read_text().splitlines()]
    assert len(lines) == 3 * 5 * 2 * 2 * 2 and {ln["seed"] for ln in lines} == {0, 1}
    assert all(ln["rewards"] == [count_e(ln["response"]), count_a(ln["response"])] for ln in lines)
    groups: dict = {}
    for ln in lines:
        groups.setdefault(ln["method"], {}).setdefault(tuple(ln["preference"]), []).append(ln["rewards"])
    with open(folder / "means.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    md = _md_rows((folder / "metrics.md").read_text())
    assert "2 prompts x 2 samples each x 2 seed(s) [0, 1]" in (folder / "metrics.md").read_text()
    for name, by_pref in groups.items():
        prefs = np.asarray(list(by_pref))
        means = np.asarray([np.mean(v, axis=0) for v in by_pref.values()])
        assert (means > 0).all(), name  # known, non-zero rewards
        if name != "base":  # the guided methods move with mu: the metrics have work to do
            assert np.ptp(means, axis=0).min() > 0, name
        got = np.asarray([[float(r["count_e"]), float(r["count_a"])] for r in csv_rows if r["method"] == name])
        np.testing.assert_allclose(got, means, rtol=0, atol=1e-12)
        own = _own_metrics(prefs, means, [-1.0, -1.0])
        row = dict(res.table)[name]
        for col, value in own.items():
            assert row[col] == pytest.approx(value, abs=1e-12), (name, col)
            shown, low, high = md[name][col]
            assert shown == pytest.approx(value, abs=5e-5 if col != "front" else 0), (name, col)
            assert low <= high, (name, col)
    again = run_sweep(run, root=root, progress=False)  # seeded bootstrap: the same intervals
    assert again.decoded == 0 and _md_rows((folder / "metrics.md").read_text()) == md


# --------------------------------------------------------------------------- #
# Decoding settings, pad tokens, dtype and device of the sweep's models.
# --------------------------------------------------------------------------- #


def test_decoding_passes_generate_arguments(setup):
    """decoding's model.generate arguments reach the decoder: the sweep's texts are mogen.generate's with them."""
    from mogen import generate
    from mogen.decoding.loading import load_causal_lm, load_tokenizer

    root, cfg = setup
    extra = {"repetition_penalty": 1.5, "no_repeat_ngram_size": 2, "min_new_tokens": 3, "top_k": 0, "top_p": 0.9,
             "temperature": 0.7, "typical_p": 0.95}
    run = dict(cfg, output="run_args", preferences=[[0.5, 0.5], [1.0, 0.0]], samples=2,
               decoding={**cfg["decoding"], "max_new_tokens": 8, **extra}, methods=[{"name": "base", "kind": "base"}])
    run_sweep(run, root=root, progress=False)
    got = [json.loads(x)["response"] for x in (root / "run_args" / "samples.jsonl").read_text().splitlines()][:4]
    tok = load_tokenizer(root / "base", "base")
    base = load_causal_lm(root / "base")
    rows = [p for p in ("the river", "a busy street") for _ in range(2)]
    enc = tok(rows, return_tensors="pt", padding=True)

    def texts(**kw):
        out = generate(base, enc["input_ids"], enc["attention_mask"], guides=[], tokenizer=tok, weights=None,
                       max_new_tokens=8, do_sample=True, generator=torch.Generator().manual_seed(0),
                       pad_token_id=tok.pad_token_id, **kw)
        return tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    assert got == texts(**extra)
    assert got != texts()  # the arguments change the texts: they were not dropped


def test_decoding_settings_are_checked(setup):
    root, cfg = setup
    for key, value, match in [("repetition_penalty", 0.0, r"decoding.repetition_penalty: must be a number in \(0, "),
                              ("top_p", 1.5, r"decoding.top_p: must be a number in \(0, 1\]"),
                              ("no_repeat_ngram_size", -1, "decoding.no_repeat_ngram_size: must be an int >= 0"),
                              ("stop_strings", 3, "decoding.stop_strings: expected a string or a list"),
                              ("num_beams", 4, r"decoding.num_beams: unknown key\(s\) \['num_beams'\]")]:
        with pytest.raises(ValueError, match=match):
            load_sweep_config(dict(cfg, decoding={**cfg["decoding"], key: value}), root)
    search = {"name": "search", "kind": "mpaw_search", "beam_width": 2}
    with pytest.raises(ValueError, match="decoding.do_sample: false, but method 'search' is a chunk search"):
        load_sweep_config(dict(cfg, decoding={**cfg["decoding"], "do_sample": False},
                               methods=[*cfg["methods"], search]), root)
    load_sweep_config(dict(cfg, methods=[*cfg["methods"], search]), root)  # sampled: fine


def test_generation_keys_are_honoured_by_both_drivers():
    """Every model.generate argument a sweep's decoding takes is honoured by mogen.generate and mogen.search (a
    chunk search method would otherwise fail after hours of decoding); search always samples (do_sample: false
    with a search method is refused when the config loads)."""
    from mogen.decoding.argument_support import FIELDS, HONOURED, SEARCH_FIELDS
    from mogen.evaluation.config import GENERATION_KEYS

    assert "repetition_penalty" in GENERATION_KEYS and "seed" not in GENERATION_KEYS
    for key in GENERATION_KEYS:
        assert FIELDS[key].status == HONOURED, key
        assert key == "do_sample" or SEARCH_FIELDS[key].status == HONOURED, key


def test_base_tokenizer_without_pad_token(setup):
    """A base tokenizer with no pad token (Llama-3's) pads the prompts with its eos token, and the rows that end
    are filled with it: the sweep runs, every method kind, and counts only the tokens decoded."""
    from mogen.decoding.loading import load_tokenizer

    root, cfg = setup
    tok = load_tokenizer(root / "base", "base")
    tok.pad_token = None
    tok.save_pretrained(root / "nopad_tok")
    assert load_tokenizer(root / "nopad_tok", "t").pad_token_id is None
    run = dict(cfg, output="run_nopad", preferences=2, models={**cfg["models"], "tokenizer": "nopad_tok"},
               methods=[*cfg["methods"], {"name": "search", "kind": "mpaw_search", "beam_width": 2, "expansion": 2,
                                          "chunk_length": 2}])
    res = run_sweep(run, root=root, progress=False)
    assert res.decoded == len(run["methods"]) * 2
    for f in (root / "run_nopad" / "points").rglob("*.json"):
        point = json.loads(f.read_text())
        assert 0 < point["tokens"] <= 2 * 4, f


def test_mage_methods_load_in_the_sweeps_dtype(setup):
    """models.dtype reaches MAGE (Bone Soup and every MAGE variant load their base and guides in it)."""
    from mogen.evaluation.methods import SweepModels, build_decoder

    root, cfg = setup
    loaded = load_sweep_config(dict(cfg, models={**cfg["models"], "dtype": "bf16"}), root)
    models = SweepModels(loaded)
    for spec in loaded.methods:
        if spec.kind in ("bone_soup", "mage"):
            mage = build_decoder(spec, models).mage
            held = [mage.base, *mage._loaded["models"]]
            assert all(next(m.parameters()).dtype == torch.bfloat16 for m in held), spec.name


def test_models_device(setup):
    root, cfg = setup
    assert load_sweep_config(dict(cfg, models={**cfg["models"], "device": "cpu"}), root).models["device"] == "cpu"
    with pytest.raises(ValueError, match="models.device: must be a torch device"):
        load_sweep_config(dict(cfg, models={**cfg["models"], "device": "gpu0"}), root)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="models.device: 'cuda': CUDA is not available on this machine"):
            load_sweep_config(dict(cfg, models={**cfg["models"], "device": "cuda"}), root)


def test_a_methods_models_go_before_the_next_method_loads(setup, monkeypatch):
    """The decoders are built method by method, and the previous method's (its MAGE's live base, merged guides)
    is let go first, so a run holds one method's own models at a time."""
    import gc
    import weakref

    from mogen.evaluation import sweep as sweep_mod

    root, cfg = setup
    built: list = []
    real = sweep_mod.build_decoder

    def build(method, models):
        gc.collect()
        alive = [name for name, ref in built if ref() is not None]
        decoder = real(method, models)
        built.append((method.name, weakref.ref(decoder.mage or decoder)))
        assert alive == [], f"{alive} still held when {method.name} is built"
        return decoder

    monkeypatch.setattr(sweep_mod, "build_decoder", build)
    run_sweep(dict(cfg, output="run_release", preferences=2), root=root, progress=False)
    assert [name for name, _ in built] == [m["name"] for m in cfg["methods"]]
