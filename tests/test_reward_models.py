"""Reward models as rewards (mogen.evaluation.reward_models, .rewards): in sweeps, in value training, in the demo.

The reward model is a tiny random sequence classifier with a tokenizer of its own (byte-level BPE, while the
decoding models read a metaspace one); the tests score the texts themselves, one at a time with plain
``transformers``, and compare.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mogen import tiny
from mogen.configs import ConfigError
from mogen.evaluation import load_sweep_config, run_sweep
from mogen.evaluation import reward_models
from mogen.evaluation.reward_models import RewardModel

import tests_sweep_rewards
from tiny_models import metaspace_tokenizer, tiny_llama

CHAT = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}" \
       "{% if add_generation_prompt %}assistant:{% endif %}"


def _classifier(kind: str, tok, num_labels: int, seed: int):
    from transformers import GPT2Config, GPT2ForSequenceClassification, LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(seed)
    if kind == "llama":
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=4, num_labels=num_labels,
                          pad_token_id=tok.pad_token_id)
        model = LlamaForSequenceClassification(cfg)
    else:
        cfg = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=128, num_labels=num_labels,
                         pad_token_id=tok.pad_token_id)
        model = GPT2ForSequenceClassification(cfg)
    with torch.no_grad():  # random heads give near-zero logits; spread them so that texts differ clearly
        model.score.weight.mul_(20.0)
    return model.eval()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Folders: a base (metaspace tokenizer), two reward models (byte-level tokenizers; rm has a chat template
    and two labels, rm_gpt2 one label and no chat template), a causal LM folder; prompts.txt."""
    root = tmp_path_factory.mktemp("rewards")
    tok = metaspace_tokenizer()
    base = tiny_llama(len(tok), 1)
    base.generation_config.pad_token_id = tok.pad_token_id
    base.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    rm_tok = tiny.byte_level_bpe()
    _classifier("llama", rm_tok, 2, 5).save_pretrained(root / "rm")
    rm_tok.chat_template = CHAT
    rm_tok.save_pretrained(root / "rm")
    plain_tok = tiny.byte_level_bpe()
    _classifier("gpt2", plain_tok, 1, 6).save_pretrained(root / "rm_gpt2")
    plain_tok.save_pretrained(root / "rm_gpt2")
    tiny_llama(len(plain_tok), 7).save_pretrained(root / "causal")
    plain_tok.save_pretrained(root / "causal")
    (root / "prompts.txt").write_text("the river\na busy street in the city\n")
    cfg = {"output": "run", "prompts": "prompts.txt", "preferences": 2, "samples": 2, "reference_point": [-100, -100],
           "bootstrap": {"resamples": 50},
           "rewards": ["tests_sweep_rewards:count_e",
                       {"model": "rm", "label": 1, "batch_size": 3, "max_length": 12, "offset": 0.5, "scale": 2.0}],
           "decoding": {"max_new_tokens": 6, "do_sample": True, "seed": 0},
           "models": {"base": "base"}, "methods": [{"name": "base", "kind": "base"}]}
    return root, cfg


def _own_scores(folder: Path, label: int, texts: list, *, chat: bool = False, max_length: int = 512) -> list:
    """Each (prompt, response) scored alone (no padding, no batching) with plain transformers."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    out = []
    with torch.no_grad():
        for prompt, response in texts:
            if chat:
                text = tok.apply_chat_template([{"role": "user", "content": prompt},
                                                {"role": "assistant", "content": response}], tokenize=False)
                enc = tok(text, add_special_tokens=False, truncation=True, max_length=max_length, return_tensors="pt")
            else:
                enc = tok(prompt + response, truncation=True, max_length=max_length, return_tensors="pt")
            out.append(float(model(**enc).logits[0, label]))
    return out


def _lines(folder: Path) -> list:
    return [json.loads(x) for x in (folder / "samples.jsonl").read_text().splitlines()]


def _means_csv(folder: Path) -> dict:
    with open(folder / "means.csv", newline="") as f:
        return {(r["method"], float(r["mu_1"])): r for r in csv.DictReader(f)}


def test_sweep_means_equal_own_scoring_of_the_texts(world):
    """Acceptance: the reported means are the test's own scoring of samples.jsonl's texts with the model,
    normalised as configured; the raw scores and the normalisation are recorded."""
    root, cfg = world
    chat = {"model": "rm", "template": "chat", "name": "rm_chat"}
    run = dict(cfg, output="run_means", rewards=[*cfg["rewards"], chat], reference_point=[-100, -100, -100],
               preferences=[[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])
    res = run_sweep(run, root=root, progress=False)
    folder = root / "run_means"
    lines = _lines(folder)
    assert res.decoded == 2 and len(lines) == 2 * 2 * 2
    texts = [(ln["prompt"], ln["response"]) for ln in lines]
    assert {p for p, _ in texts} == {"the river", "a busy street in the city"}
    plain = _own_scores(root / "rm", 1, texts, max_length=12)
    chats = _own_scores(root / "rm", 0, texts, chat=True)
    assert np.ptp(plain) > 0.01 and np.ptp(chats) > 0.01  # the texts differ, so the scores do
    for ln, a, b in zip(lines, plain, chats):
        assert ln["raw_rewards"] == pytest.approx([ln["response"].count("e"), a, b], abs=1e-5)
        assert ln["rewards"] == pytest.approx([ln["response"].count("e"), (a - 0.5) * 2.0, b], abs=1e-5)
    means = _means_csv(folder)
    for mu in (1.0, 0.0):
        idx = [i for i, ln in enumerate(lines) if ln["preference"][0] == mu]
        row = means[("base", mu)]
        assert float(row["count_e"]) == pytest.approx(np.mean([lines[i]["response"].count("e") for i in idx]))
        assert float(row["rm_1"]) == pytest.approx(np.mean([(plain[i] - 0.5) * 2.0 for i in idx]), abs=1e-5)
        assert float(row["rm_chat"]) == pytest.approx(np.mean([chats[i] for i in idx]), abs=1e-5)
    described = json.loads((folder / "rewards.json").read_text())
    assert [d["name"] for d in described] == ["count_e", "rm_1", "rm_chat"]
    assert described[1]["offset"] == 0.5 and described[1]["scale"] == 2.0 and described[1]["label"] == 1
    assert described[2]["template"] == "chat" and described[1]["kind"] == "model"
    md = (folder / "metrics.md").read_text()
    assert "rm_1 = reward model" in md and "reward = (raw - 0.5) * 2" in md


def test_resumed_sweep_does_not_score_twice(world, monkeypatch):
    root, cfg = world
    calls = {"texts": 0}
    score = RewardModel.score

    def counted(self, prompts, responses, **kw):
        calls["texts"] += len(prompts)
        return score(self, prompts, responses, **kw)

    monkeypatch.setattr(RewardModel, "score", counted)
    counted_fn = tests_sweep_rewards.CALLS
    run = dict(cfg, output="run_resume", rewards=["tests_sweep_rewards:counted_e", cfg["rewards"][1]])
    folder = root / "run_resume"
    texts = 2 * 2 * 2  # preferences x prompts x samples
    start = counted_fn["counted_e"]
    first = run_sweep(run, root=root, progress=False)
    assert (first.decoded, first.scored, calls["texts"]) == (2, 2 * texts, texts)
    assert counted_fn["counted_e"] - start == texts
    texts_before = (folder / "samples.jsonl").read_text()

    again = run_sweep(run, root=root, progress=False)  # everything cached
    assert (again.decoded, again.skipped, again.scored, calls["texts"]) == (0, 2, 0, texts)
    assert counted_fn["counted_e"] - start == texts and (folder / "samples.jsonl").read_text() == texts_before

    points = sorted((folder / "points" / "base").glob("*.json"))
    points[0].unlink()  # killed before this point was decoded
    point = json.loads(points[1].read_text())
    key = next(k for k in point["scores"] if k.startswith("model:"))
    del point["scores"][key]  # killed after decoding, before the reward model scored it
    points[1].write_text(json.dumps(point))
    resumed = run_sweep(run, root=root, progress=False)
    assert (resumed.decoded, resumed.scored) == (1, texts // 2 * 3)  # 1 point x 2 rewards + 1 point x 1 reward
    assert calls["texts"] == texts * 2 and counted_fn["counted_e"] - start == texts * 3 // 2
    assert (folder / "samples.jsonl").read_text() == texts_before  # seeded per point: the same texts and scores

    renormed = dict(run, rewards=[run["rewards"][0], {**run["rewards"][1], "offset": 0.0, "scale": -1.0}])
    other = run_sweep(renormed, root=root, progress=False)  # a new normalisation rescales the cached scores
    assert (other.decoded, other.scored, calls["texts"]) == (0, 0, texts * 2)
    lines = _lines(folder)
    assert all(ln["rewards"][1] == -ln["raw_rewards"][1] for ln in lines)

    o10 = {"function": "tests_sweep_rewards:count_o", "offset": 0.5, "scale": 10.0, "name": "o10"}
    swapped = dict(run, rewards=[o10, run["rewards"][1]])
    new = run_sweep(swapped, root=root, progress=False)  # another reward: the texts stay, only it is scored
    assert (new.decoded, new.scored, calls["texts"]) == (0, texts, texts * 2)
    assert all(ln["rewards"][0] == (ln["response"].count("o") - 0.5) * 10.0 for ln in _lines(folder))
    assert (folder / "means.csv").read_text().startswith("method,mu_1,mu_2,o10,rm_1,")


def test_runs_from_before_the_score_cache_are_not_decoded_again(world):
    """A point written when the fingerprint held the reward specs and the scores only each sample's rewards
    is finished: its rewards are the cached scores."""
    from mogen.evaluation import sweep as sweep_mod

    root, cfg = world
    run = dict(cfg, output="run_legacy", rewards=["tests_sweep_rewards:count_e", "tests_sweep_rewards:count_a"])
    first = run_sweep(run, root=root, progress=False)
    loaded = load_sweep_config(run, root)
    for path in (root / "run_legacy" / "points").rglob("*.json"):
        point = json.loads(path.read_text())
        seed = point["seed"]
        point["fingerprint"] = sweep_mod._legacy_fingerprint(loaded, loaded.methods[0], seed)
        del point["scores"]
        for s in point["samples"]:
            s["rewards"] = [s["rewards"][0] + 100.0, s["rewards"][1]]  # as recorded then, kept
        path.write_text(json.dumps(point))
    again = run_sweep(run, root=root, progress=False)
    assert (first.decoded, again.decoded, again.scored) == (2, 0, 0)
    assert all(ln["rewards"][0] == ln["response"].count("e") + 100.0 for ln in _lines(root / "run_legacy"))
    for path in (root / "run_legacy" / "points").rglob("*.json"):  # rewritten in today's form
        point = json.loads(path.read_text())
        assert len(point["scores"]["tests_sweep_rewards:count_a"]) == len(point["samples"])
        assert point["fingerprint"] == sweep_mod._fingerprint(loaded, loaded.methods[0], point["seed"])


@pytest.mark.parametrize("kind, labels", [("llama", 2), ("gpt2", 1)])
def test_batches_score_as_texts_alone(world, tmp_path, kind, labels):
    """Right padding in length-sorted batches gives each text's own score; a RewardModel is also a
    reward(prompt, response)."""
    tok = tiny.byte_level_bpe()
    _classifier(kind, tok, labels, 11).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    pairs = [("the cat", " sat on the mat"), ("a", " dog"), ("one day", ""), ("x", " naïve café 日本 and more"),
             ("the model", " is good"), ("hello", " world")]
    rm = RewardModel(tmp_path / "m", label=labels - 1, batch_size=4, max_length=64)
    got = rm.score([p for p, _ in pairs], [r for _, r in pairs])
    own = _own_scores(tmp_path / "m", labels - 1, pairs, max_length=64)
    np.testing.assert_allclose(got, own, rtol=0, atol=1e-5)
    assert rm(*pairs[3]) == pytest.approx(own[3], abs=1e-5)


# -- errors: the file and the key -----------------------------------------------------------------------------
@pytest.mark.parametrize("entry, key, message", [
    ({"model": "missing"}, "rewards[1].model", "reward model folder .*missing.* does not exist"),
    ({"model": "causal"}, "rewards[1].model", "holds LlamaForCausalLM, not a sequence classifier"),
    ({"model": "rm", "label": 2}, "rewards[1].label", "label 2 is out of range: .* has num_labels 2"),
    ({"model": "rm_gpt2", "label": -1}, "rewards[1].label", "label -1 is out of range: .* num_labels 1"),
    ({"model": "rm_gpt2", "template": "chat"}, "rewards[1].template", "has none"),
    ({"model": "rm", "template": "{prompt}{answer}"}, "rewards[1].template", "KeyError"),
    ({"model": "rm", "template": "{prompt}"}, "rewards[1].template", "with \\{response\\}"),
    ({"model": "rm", "batch_size": 0}, "rewards[1].batch_size", "must be an int >= 1"),
    ({"model": "rm", "scale": 0}, "rewards[1].scale", "must not be 0"),
    ({"model": "rm", "colour": 1}, "rewards[1].colour", r"unknown key\(s\) \['colour'\]"),
    ({"model": "rm", "function": "a:b"}, "rewards[1]", "either 'model' or 'function'"),
    ({"weights": "rm"}, "rewards[1]", "a reward is 'module:function'"),
    ({"function": "nope:f", "scale": 2.0}, "rewards[1].function", "cannot import reward 'nope:f'"),
])
def test_reward_errors_name_the_file_and_key(world, entry, key, message):
    root, cfg = world
    bad = dict(cfg, rewards=[cfg["rewards"][0], entry])
    path = root / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError) as info:
        load_sweep_config(path)
    text = str(info.value)
    assert text.startswith(f"{path}: {key}: ") and re.search(message, text), text
    with pytest.raises(ConfigError) as info:
        load_sweep_config(bad, root)
    assert str(info.value).startswith(f"sweep config: {key}: ")


# -- value training and the demo take the same entries ----------------------------------------------------------
def test_train_value_model_scores_with_a_reward_model(world):
    from mogen.value import train_value_model
    from mogen.value.data import sample_responses

    root, _ = world
    tok = metaspace_tokenizer()
    lm = tiny_llama(len(tok), 3)
    prompts = ["the cat", "a dog"]
    kwargs = dict(prompts=prompts, samples_per_prompt=3, max_new_tokens=6, epochs=1, heldout=0.0, seed=4,
                  progress=False)
    pairs = sample_responses(lm, tok, prompts, samples_per_prompt=3, max_new_tokens=6, seed=4)
    own = _own_scores(root / "rm", 1, [(p, r) for p, r, _ in pairs])
    entry = {"model": str(root / "rm"), "label": 1, "offset": 1.0, "scale": 3.0}
    res = train_value_model(lm, tok, reward=entry, **kwargs)
    assert res.reward_offset == pytest.approx(np.mean([(x - 1.0) * 3.0 for x in own]), abs=1e-5)
    loaded = RewardModel(root / "rm", label=1)
    res = train_value_model(lm, tok, reward=loaded, **kwargs)
    assert res.reward_offset == pytest.approx(np.mean(own), abs=1e-5)
    res = train_value_model(lm, tok, reward="tests_sweep_rewards:count_e", **kwargs)
    assert res.reward_offset == pytest.approx(np.mean([r.count("e") for _, r, _ in pairs]))
    with pytest.raises(ConfigError, match=r"^train_value_model: reward.label: label 5 is out of range"):
        train_value_model(lm, tok, reward={"model": str(root / "rm"), "label": 5}, **kwargs)
    with pytest.raises(ConfigError, match=r"^train_value_model: reward.model: .*not a sequence classifier"):
        train_value_model(lm, tok, reward={"model": str(root / "causal")}, **kwargs)


def test_demo_sweep_takes_reward_entries(tmp_path):
    from mogen.demo.sweep import demo_sweep_config

    rewards = [{"model": "rm", "label": 1}, "mogen.demo.corpus:city_rate"]
    assert demo_sweep_config(tmp_path, tmp_path / "o", rewards=rewards)["rewards"] == rewards
    assert demo_sweep_config(tmp_path, tmp_path / "o")["rewards"] == ["mogen.demo.corpus:nature_rate",
                                                                      "mogen.demo.corpus:city_rate"]
    with pytest.raises(ValueError, match="takes 2 rewards, got 1"):
        demo_sweep_config(tmp_path, tmp_path / "o", rewards=rewards[:1])


def test_check_reward_model_reads_no_weights(world, monkeypatch):
    """A config is checked before anything loads: the weights are read only when the reward scores."""
    root, cfg = world

    def refuse(*args, **kwargs):
        raise AssertionError("weights loaded while checking the config")

    monkeypatch.setattr("transformers.AutoModelForSequenceClassification.from_pretrained", refuse)
    loaded = load_sweep_config(cfg, root)
    assert [r.kind for r in loaded.rewards] == ["function", "model"] and reward_models.DEFAULT_TEMPLATE == \
        loaded.rewards[1].model["template"]
