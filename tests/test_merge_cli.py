"""`mogen merge` (flags and mergekit-style YAML), and agreement with mergekit where it is installed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import mogen_ext
from mogen import cli, reference
from merge_helpers import assert_matches_fp64, load_ckpt, model_tensors, np64, save_ckpt

pytestmark = pytest.mark.skipif(not mogen_ext.has_cpu_kernels, reason=f"no compiled kernels: {mogen_ext.load_error}")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def ckpts(tmp_path):
    sds = [model_tensors(i) for i in range(3)]
    return [save_ckpt(tmp_path / f"m{i}", sd) for i, sd in enumerate(sds)], sds


def test_cli_flags(ckpts, tmp_path, capsys):
    paths, sds = ckpts
    rc = cli.main(["merge", "--source", str(paths[0]), "--source", str(paths[1]), "--weights", "0.3,0.7",
                   "--weights", "1,-1", "--out", str(tmp_path / "a"), "--out", str(tmp_path / "b"),
                   "--dtype", "bfloat16", "--shard-size", "2KB", "--quiet", "--no-fsync"])
    assert rc == 0 and "linear merge" in capsys.readouterr().out
    for out, c in ((tmp_path / "a", [0.3, 0.7]), (tmp_path / "b", [1.0, -1.0])):
        got = load_ckpt(out)
        n = "model.layers.1.mlp.up_proj.weight"
        x = [np64(sds[0][n]), np64(sds[1][n])]
        assert_matches_fp64(got[n], c[0] * x[0] + c[1] * x[1], abs(c[0]) * np.abs(x[0]) + abs(c[1]) * np.abs(x[1]), n)
        assert (out / "model.safetensors.index.json").exists()


def test_cli_mergekit_yaml_ties(ckpts, tmp_path):
    paths, sds = ckpts
    cfg = {"models": [{"model": "m0"}, {"model": "m1", "parameters": {"weight": 0.6, "density": 0.5}},
                      {"model": "m2", "parameters": {"weight": 0.4, "density": 0.7}}],
           "merge_method": "ties", "base_model": "m0", "parameters": {"normalize": True, "int8_mask": True},
           "dtype": "float32"}
    (tmp_path / "merge.yaml").write_text(yaml.safe_dump(cfg))
    assert cli.main(["merge", "--config", str(tmp_path / "merge.yaml"), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    got = load_ckpt(tmp_path / "o")
    n = "model.embed_tokens.weight"
    want = reference.merge_ties(sds[0][n], [sds[1][n], sds[2][n]], [0.6, 0.4], [0.5, 0.7])
    assert torch.allclose(got[n].double(), want, atol=1e-6)


def test_cli_yaml_linear_normalizes_like_mergekit(ckpts, tmp_path, capsys):
    paths, sds = ckpts
    cfg = {"models": [{"model": str(paths[0]), "parameters": {"weight": 1.0}},
                      {"model": str(paths[1]), "parameters": {"weight": 3.0}}],
           "merge_method": "linear", "dtype": "float32"}
    (tmp_path / "lin.yaml").write_text(yaml.safe_dump(cfg))
    cli.main(["merge", "--config", str(tmp_path / "lin.yaml"), "--out", str(tmp_path / "o"), "--quiet"])
    n = "v_head.weight"
    want = 0.25 * sds[0][n].double() + 0.75 * sds[1][n].double()
    assert torch.allclose(load_ckpt(tmp_path / "o")[n].double(), want, atol=1e-6)
    cfg["slices"] = []
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    assert cli.main(["merge", "--config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "o2"), "--quiet"]) == 2
    assert "slices" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


def _mergekit_python():
    cands = [os.environ.get("MOGEN_MERGEKIT_PYTHON"), str(ROOT / ".venv-mergekit" / "bin" / "python"), sys.executable]
    for c in cands:
        if c and Path(c).exists() and subprocess.run([c, "-c", "import mergekit"], capture_output=True).returncode == 0:
            return c
    return None


@pytest.mark.slow
@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "ties", "slerp"])
def test_agrees_with_mergekit(tmp_path, method):
    py = _mergekit_python()
    if py is None:
        pytest.skip("mergekit is not installed (benchmarks/bench_merge.py creates .venv-mergekit with it; "
                    "or set MOGEN_MERGEKIT_PYTHON)")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_merge import write_synthetic_llama

    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 101,
           "rms_norm_eps": 1e-5, "max_position_embeddings": 128, "tie_word_embeddings": False}
    shapes = {"model.embed_tokens.weight": (101, 64), "lm_head.weight": (101, 64), "model.norm.weight": (64,)}
    for i in range(2):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (64, 64), p + "self_attn.k_proj.weight": (32, 64),
                       p + "self_attn.v_proj.weight": (32, 64), p + "self_attn.o_proj.weight": (64, 64),
                       p + "mlp.gate_proj.weight": (128, 64), p + "mlp.up_proj.weight": (128, 64),
                       p + "mlp.down_proj.weight": (64, 128), p + "input_layernorm.weight": (64,),
                       p + "post_attention_layernorm.weight": (64,)})
    dtype = torch.float32
    for i in range(3):
        write_synthetic_llama(tmp_path / f"m{i}", shapes, cfg, dtype, seed=i, shard_bytes=40_000 + 20_000 * i)
    models = {"linear": [("m0", 0.2), ("m1", 0.5), ("m2", 0.3)], "task_arithmetic": [("m1", 0.7), ("m2", -0.4)],
              "ties": [("m1", 0.7), ("m2", 0.5)], "slerp": [("m0", None), ("m1", None)]}[method]
    conf = {"merge_method": method, "dtype": "float32",
            "models": [{"model": str(tmp_path / m), **({"parameters": {"weight": w, **({"density": 0.6} if method == "ties" else {})}} if w is not None else {})}
                       for m, w in models]}
    if method != "linear":
        conf["base_model"] = str(tmp_path / "m0")
    if method == "slerp":
        conf["parameters"] = {"t": 0.35}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(conf))
    r = subprocess.run([str(Path(py).parent / "mergekit-yaml"), str(tmp_path / "c.yaml"), str(tmp_path / "mk"), "--quiet"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    cli.main(["merge", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "mine"), "--quiet"])
    theirs, mine = load_ckpt(tmp_path / "mk"), load_ckpt(tmp_path / "mine")
    for n, t in theirs.items():
        assert torch.allclose(mine[n].double(), t.double(), rtol=1e-5, atol=1e-6), n
