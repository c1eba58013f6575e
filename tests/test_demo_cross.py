"""The demo's cross-family variant: its guide tokenizer's coverage of the base's vocabulary
in the band of real cross-family pairs, the config, CLI and sweep plumbing, MAGE's cross_vocab, and the
text-vs-map lines under the recorded table."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mogen import cli
from mogen.configs import ConfigError
from mogen.demo.checks import TEXT_VS_MAP, text_vs_map_lines
from mogen.demo.sweep import CROSS_METHODS, run_demo_sweep
from mogen.demo.train import DemoConfig
from mogen.demo.vocabs import guide_coverage
from mogen.evaluation.report import method_metrics
from mogen.mage import MAGE, MAGEConfig

from tiny_models import metaspace_tokenizer, pad_rows, tiny_llama, value_llama

#: The real cross-family pairs (benchmarks/results/vocab_coverage.md) span 17.3% (Qwen2 -> Llama-2) to 36.9% (Falcon -> StarCoder).
BAND = (0.17, 0.40)


def test_cross_family_coverage_is_in_the_real_pairs_band():
    """Trained in-process (no model): the cross-family guides cover as little of the base's vocabulary as real
    cross-family pairs, and none of the topic words the rewards count; the default guides cover 95%."""
    cross = guide_coverage(DemoConfig(guide_family="cross"))
    assert BAND[0] <= cross["vocab"] <= BAND[1], cross
    assert cross["topic_words"] == 0.0 and cross["vocab"] < cross["text"] < 0.8, cross
    default = guide_coverage(DemoConfig())
    assert default["vocab"] > 0.9 and default["topic_words"] > 0.5, default


def test_guide_family_config_and_cache_key():
    assert DemoConfig(guide_family="cross").key() not in (DemoConfig().key(), DemoConfig(objectives=3).key())
    assert DemoConfig(guide_family="metaspace").key() == DemoConfig().key()
    with pytest.raises(ValueError, match="guide_family must be one of"):
        DemoConfig(guide_family="wordpiece")


def test_cross_family_cli_and_sweep_plumbing(capsys):
    assert cli.main(["demo", "--cross-family"]) == 2
    assert "--cross-family is for the embedded comparison (--sweep)" in capsys.readouterr().err
    assert cli.main(["demo", "--sweep", "--cross-family", "--objectives", "3"]) == 2
    assert "two-objective" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no 3-objective comparison with guide family 'cross'"):
        run_demo_sweep(objectives=3, guide_family="cross")
    names = [m["name"] for m in CROSS_METHODS]
    assert names[0] == "base only" and all(name in names for pair in TEXT_VS_MAP for name in pair)


def test_mage_config_cross_vocab():
    assert MAGEConfig().cross_vocab == "map"
    assert MAGEConfig.parse({"variant": "I", "cross_vocab": "text", "text_top_k": 5}).text_top_k == 5
    with pytest.raises(ConfigError, match="cross_vocab must be one of"):
        MAGEConfig.parse({"cross_vocab": "bytes"})
    with pytest.raises(ConfigError, match="must be an int >= 1"):
        MAGEConfig.parse({"text_top_k": 0})


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("mage_cross")
    v = len(metaspace_tokenizer())
    out = {}
    for name, model in [("bb0", tiny_llama(v, 1)), ("bb1", tiny_llama(v, 2)), ("e0", tiny_llama(v, 6)),
                        ("e1", tiny_llama(v, 7)), ("ref", tiny_llama(v, 8)), ("v0", value_llama(v, 4)),
                        ("v1", value_llama(v, 5))]:
        model.save_pretrained(root / name)
        out[name] = root / name
    return out


def test_mage_passes_cross_vocab_to_guides_with_their_own_tokenizer(folders):
    """MAGE-I and MAGE-E with cross_vocab="text": the guides score candidates on their text (text_top_k of
    them; a value guide's default is value_top_k), and decoding runs; guides sharing the base's tokenizer
    ignore it."""
    tok = metaspace_tokenizer()
    own = metaspace_tokenizer.__wrapped__()
    proxy = dict(experts=[folders["e0"], folders["e1"]], reference=folders["ref"])
    mage = MAGE([folders["bb0"], folders["bb1"]], tokenizer=tok, variant="I", guide_tokenizer=own,
                cross_vocab="text", text_top_k=5, **proxy)
    assert [(g.cross_vocab, g.top_k) for g in mage._guides()] == [("text", 5)] * 2
    ids, mask = pad_rows([tok("the quiet river", add_special_tokens=False)["input_ids"]], pad_id=tok.pad_token_id)
    out = mage.generate(ids, mask, preference=[0.3, 0.7], max_new_tokens=4, generator=torch.Generator().manual_seed(0),
                        do_sample=True)
    assert out.shape == (1, ids.shape[1] + 4)
    values = MAGE([folders["bb0"], folders["bb1"]], tokenizer=tok, variant="E", guide_tokenizer=own,
                  value_models=[folders["v0"], folders["v1"]], cross_vocab="text", value_top_k=3)
    assert [(g.cross_vocab, g.top_k) for g in values._guides()] == [("text", 3)] * 2
    shared = MAGE([folders["bb0"], folders["bb1"]], tokenizer=tok, variant="I", guide_tokenizer=None,
                  cross_vocab="text", **proxy)
    assert [g.cross_vocab for g in shared._guides()] == ["map"] * 2


def test_text_vs_map_lines(tmp_path):
    prefs = np.array([[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]])
    good, weak = [[0.1, 0.3], [0.2, 0.2], [0.3, 0.1]], [[0.1, 0.2], [0.15, 0.15], [0.2, 0.1]]
    rows = {"MPAW token-level (map)": (weak, [600.0, 500.0]), "MPAW token-level (text)": (good, [200.0, 250.0]),
            "MAGE-I (map)": (good, [400.0, 400.0]), "MAGE-I (text)": (good, [100.0, 100.0]),
            "MAGE-I (text, beta 0.5)": (weak, [100.0, 100.0])}
    table, arrays = [], {}
    for name, (r, tps) in rows.items():
        row = method_metrics(prefs, np.asarray(r), [0.0, 0.0], 300 * len(tps), 300 / np.mean(tps) * len(tps))
        table.append((name, row))
        arrays[f"{name}/tokens_per_second"] = np.asarray(tps)
        # replicates spread around the point value: the MAGE-I pair ties within noise
        arrays[f"{name}/HV"] = row["HV"] + np.linspace(-0.01, 0.01, 10) * (name == "MAGE-I (text)")
        arrays[f"{name}/controllability"] = np.full(10, row["controllability"])
    np.savez(tmp_path / "bootstrap.npz", **arrays)
    text = "\n".join(text_vs_map_lines(tmp_path, table))
    assert "- MPAW token-level (text) vs MPAW token-level (map): HV " in text
    assert "HV 0.0600 vs 0.0325, paired difference 0.0275 [0.0275, 0.0275] (text >= map: met)" in text
    assert "controllability 1.0000 vs 1.0000, paired difference 0.0000 [0.0000, 0.0000] (text >= map: met)" in text
    assert "time per token 2.44 [2.00, 3.00]x over 2 seed(s)" in text  # 550 / 225; per seed 600 / 200, 500 / 250
    assert "- MAGE-I (text) vs MAGE-I (map): HV 0.0600 vs 0.0600, paired difference 0.0000 [-0.0095, 0.0095] " \
           "(text >= map: within noise)" in text
    assert "- MAGE-I (text, beta 0.5) vs MAGE-I (map): HV 0.0325 vs 0.0600, paired difference -0.0275 " \
           "[-0.0275, -0.0275] (text >= map: not met)" in text
