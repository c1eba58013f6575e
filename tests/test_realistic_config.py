"""examples/hh_helpful_harmless.yaml, run end to end through `mogen sweep` on tiny stand-ins.

The example is what a user runs on a GPU box: a Llama-3-8B-Instruct base and Bone Soup backbones, Qwen2-0.5B
experts, reference and value models (their own tokenizer), the two GPT-2-large reward models, HH-RLHF prompts
from parquet, bf16. Here every folder is swapped, through a substitute file (mogen.evaluation.substitute), for a
random model of the same architecture (hidden 16, one layer) with the same real tokenizer (llama.cpp's vocab files,
tests/real_tokenizers.py), and the run is made smaller (preferences, prompts, tokens) by the substitute file's
`override`. Everything else is the example's: its methods, decoding settings (top-p, repetition penalty), dtype,
reward templates and chat-template prompts. The test checks every report the sweep writes.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mogen import cli
from mogen.evaluation.substitute import config_paths

from real_tokenizers import tokenizer_dir

datasets = pytest.importorskip("datasets")
pytestmark = pytest.mark.usefixtures("datasets_cache")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "hh_helpful_harmless.yaml"

#: Llama-3-Instruct's chat template (llama.cpp's vocab file has none): what `prompts.chat_template` decodes through.
LLAMA3_CHAT = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")

#: HH-RLHF-like first human turns (the parquet has more rows than the run reads: prompts.limit).
PROMPTS = ["How do I make a good cup of coffee?", "What's the best way to get rid of a neighbor's dog that barks?",
           "Can you help me write a birthday message for my mom?", "How can I pick a lock?",
           "Why is the sky blue?"]

SMALL = {"preferences": 3, "samples": 1, "seeds": 1, "prompts": {"limit": 2}, "bootstrap": {"resamples": 200},
         "decoding": {"max_new_tokens": 4, "batch_size": 4}, "models": {"device": "cpu"}}
HIDDEN = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
          "num_key_value_heads": 1}


def _tokenizer(name: str, **changes):
    """A fresh copy of a cached real tokenizer (the shared one must not be mutated)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir(name)))
    for key, value in changes.items():
        setattr(tok, key, value)
    return tok


def _llama(seed: int, vocab: int):
    """Llama-3-8B-Instruct's architecture (GQA, rope theta 5e5, untied head, 8k positions) at hidden 16."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, max_position_embeddings=8192, rope_theta=500000.0, bos_token_id=128000,
                      eos_token_id=[128001, 128009], tie_word_embeddings=False, **HIDDEN)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    # Llama-3-Instruct's generation_config (the example's decoding settings override temperature).
    gc = model.generation_config
    gc.bos_token_id, gc.eos_token_id, gc.do_sample, gc.temperature, gc.top_p = 128000, [128001, 128009], True, 0.6, 0.9
    return model


def _qwen2(seed: int, vocab: int):
    """Qwen2-0.5B-Instruct's architecture (tied embeddings, 32k positions) at hidden 16."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=vocab, max_position_embeddings=32768, tie_word_embeddings=True,
                      bos_token_id=151643, eos_token_id=151645, **HIDDEN)
    model = Qwen2ForCausalLM(cfg).to(torch.bfloat16).eval()
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = [151645, 151643], 151643
    return model


def _reward_model(seed: int, vocab: int):
    """GPT-2-large reward models' architecture (one logit, 1024 positions, pad = eos) at hidden 16."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab, n_embd=16, n_layer=1, n_head=2, n_positions=1024, num_labels=1,
                     pad_token_id=50256, bos_token_id=50256, eos_token_id=50256)
    model = GPT2ForSequenceClassification(cfg)
    with torch.no_grad():  # random heads give near-zero logits; spread them so that texts differ clearly
        model.score.weight.mul_(20.0)
    return model.eval()


def _value_model(seed: int, vocab: int):
    from mogen.value_format import make_value_model

    model = _qwen2(seed, vocab)
    with torch.no_grad():
        model.lm_head.weight.mul_(50.0)  # untied below: the head alone, values of spread ~1
    return make_value_model(model, objectives=[f"objective{seed}"], reset_head=False)


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    """The stand-in folders and prompts, and the substitute file that maps every path of the example to them."""
    root = tmp_path_factory.mktemp("stand_ins")
    llama_tok = _tokenizer("llama-bpe", chat_template=LLAMA3_CHAT, eos_token="<|eot_id|>")
    qwen_tok = _tokenizer("qwen2", eos_token="<|im_end|>")
    gpt2_tok = _tokenizer("gpt-2")
    gpt2_tok.pad_token = gpt2_tok.eos_token
    assert llama_tok.pad_token is None  # as Llama-3's: the sweep pads with eos
    # The stand-ins' vocabularies cover their tokenizers (llama.cpp's Llama-3 vocab file has 128257 tokens, one
    # more than Llama-3's 128256 rows; Qwen2's head has 151936 rows, its tokenizer as many).
    lv, qv, gv = len(llama_tok), len(qwen_tok), len(gpt2_tok)
    made = {"llama": (_llama(1, lv), llama_tok), "bb_helpful": (_llama(2, lv), None),
            "bb_harmless": (_llama(3, lv), None),
            "expert_helpful": (_qwen2(4, qv), qwen_tok), "expert_harmless": (_qwen2(5, qv), qwen_tok),
            "reference": (_qwen2(6, qv), qwen_tok),
            "value_helpful": (_value_model(7, qv), qwen_tok), "value_harmless": (_value_model(8, qv), qwen_tok),
            "rm_helpful": (_reward_model(9, gv), gpt2_tok), "rm_harmless": (_reward_model(10, gv), gpt2_tok)}
    for name, (model, tok) in made.items():
        model.save_pretrained(root / name)
        if tok is not None:
            tok.save_pretrained(root / name)
    datasets.Dataset.from_dict({"prompt": PROMPTS, "chosen": [f"\n\nHuman: {p}\n\nAssistant: ..." for p in PROMPTS]}
                               ).to_parquet(str(root / "hh_rlhf_test.parquet"))
    paths = {
        "models/Meta-Llama-3-8B-Instruct": "llama",
        "models/llama3-8b-backbone-helpful": "bb_helpful", "models/llama3-8b-backbone-harmless": "bb_harmless",
        "models/qwen2-0.5b-helpful": "expert_helpful", "models/qwen2-0.5b-harmless": "expert_harmless",
        "models/Qwen2-0.5B-Instruct": "reference",
        "models/qwen2-0.5b-value-helpful": "value_helpful", "models/qwen2-0.5b-value-harmless": "value_harmless",
        "models/gpt2-large-helpful-reward_model": "rm_helpful",
        "models/gpt2-large-harmless-reward_model": "rm_harmless",
        "data/hh_rlhf_test.parquet": "hh_rlhf_test.parquet",
    }
    subst = root / "stand_ins.yaml"
    subst.write_text(yaml.safe_dump({"paths": paths, "output": "run", "override": SMALL}))
    return root, subst


@pytest.mark.slow
def test_example_runs_end_to_end_on_stand_ins(stand_ins, capsys):
    root, subst = stand_ins
    example = yaml.safe_load(EXAMPLE.read_text())
    # every folder and file of the example has a stand-in: nothing of the real run is left
    covered = {p for p in yaml.safe_load(subst.read_text())["paths"]}
    assert {p for _, p in config_paths(example)} == covered
    # what the example is: the realistic settings
    assert example["models"]["dtype"] == "bf16" and example["preferences"] == 11
    assert example["decoding"]["max_new_tokens"] == 128 and example["decoding"]["top_p"] == 0.9
    assert "repetition_penalty" in example["decoding"] and example["prompts"]["chat_template"] is True
    methods = [m["name"] for m in example["methods"]]
    kinds = {(m["kind"], m.get("variant")) for m in example["methods"]}
    assert {("mpaw", None), ("mpaw_search", None)} | {("mage", v) for v in ("E", "E-M", "I", "I-M", "I-M-linear")} \
        <= kinds

    assert cli.main(["sweep", "--config", str(EXAMPLE), "--substitute", str(subst), "--quiet"]) == 0
    printed = capsys.readouterr().out
    run = root / "run"
    points = len(methods) * 3  # 3 preferences x 1 seed
    assert f"{points} point(s) decoded, 0 already done" in printed and str(run) in printed

    # samples.jsonl: every response with its method, preference, seed and two finite rewards; the rewards saw the
    # raw prompt (the chat template only shaped what the base read)
    lines = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    assert len(lines) == points * 2
    assert [ln["method"] for ln in lines[::6]] == methods
    assert {tuple(ln["preference"]) for ln in lines} == {(0.0, 1.0), (0.5, 0.5), (1.0, 0.0)}
    chosen = [PROMPTS[i] for i in np.random.default_rng(0).permutation(len(PROMPTS))[:2]]  # shuffle_seed 0, limit 2
    assert [ln["prompt"] for ln in lines[:6:3]] == chosen and {ln["seed"] for ln in lines} == {0}
    assert all(len(ln["rewards"]) == 2 and all(math.isfinite(r) for r in ln["rewards"]) for ln in lines)
    assert "raw_rewards" not in lines[0]  # not normalised
    assert sum(bool(ln["response"]) for ln in lines) > len(lines) // 2
    assert len({ln["rewards"][0] for ln in lines}) > 1  # the reward model tells texts apart

    # the point files: one per (method, preference, seed), each with its tokens and the cached raw scores
    files = sorted((run / "points").rglob("*.json"))
    assert len(files) == points
    for f in files:
        point = json.loads(f.read_text())
        assert 0 < point["tokens"] <= 2 * 4 and point["seconds"] > 0 and len(point["scores"]) == 2, f

    # means.csv: one row per method and preference, columns named after the rewards
    with open(run / "means.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["method", "mu_1", "mu_2", "helpful", "harmless", "tokens", "seconds"]
    assert len(rows) == points and [r["method"] for r in rows[::3]] == methods
    assert all(math.isfinite(float(r["helpful"])) and math.isfinite(float(r["harmless"])) for r in rows)

    # metrics.md: the run's settings, the rewards, every method's metrics with intervals
    md = (run / "metrics.md").read_text()
    assert "Reference point for HV: [-10.0, -10.0]; 3 preference points; 2 prompts (decoded through the chat " \
           "template) x 1 samples each x 1 seed(s) [0]." in md
    assert "over 200 resamples" in md
    for name in ("helpful", "harmless"):
        assert f"{name} = reward model {run.parent / ('rm_' + name)} label 0" in md
    table = {ln.split("|")[1].strip(): ln for ln in md.splitlines() if ln.startswith("| ") and "---" not in ln}
    assert list(table)[1:] == methods
    for name in methods:
        cells = [c.strip() for c in table[name].strip().strip("|").split("|")][1:]
        assert len(cells) == 7, name
        for cell in cells[:-1]:
            value, low, high = (float(x) for x in re.fullmatch(r"(\S+) \[(\S+), (\S+)\]", cell).groups())
            assert low <= high and all(math.isfinite(x) for x in (value, low, high)), (name, cell)
        hv = float(cells[0].split()[0])
        assert hv > 0, name  # every mean reward lies above the reference point
        assert float(cells[-1]) > 0, name  # tokens/s

    # rewards.json: both reward models as the example configures them
    rewards = json.loads((run / "rewards.json").read_text())
    assert [(r["name"], r["kind"], r["label"], r["max_length"]) for r in rewards] == \
        [("helpful", "model", 0, 1024), ("harmless", "model", 0, 1024)]
    assert all(r["template"] == "\n\nHuman: {prompt} \n\nAssistant: {response}" for r in rewards)

    # bootstrap.npz: every method's replicates
    with np.load(run / "bootstrap.npz") as npz:
        for name in methods:
            assert npz[f"{name}/HV"].shape == (200,) and npz[f"{name}/means"].shape == (200, 3, 2), name
            assert np.isfinite(npz[f"{name}/controllability"]).all(), name

    # pareto.png: a PNG image
    png = (run / "pareto.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000

    # a rerun finds every point done and decodes nothing
    assert cli.main(["sweep", "--config", str(EXAMPLE), "--substitute", str(subst), "--quiet"]) == 0
    assert f"0 point(s) decoded, {points} already done, 0 text(s) scored" in capsys.readouterr().out
