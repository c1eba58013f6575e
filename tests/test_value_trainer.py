"""Value training on transformers' Trainer (mogen.value.trainer), its sampled datasets and `mogen value sample|train`.

The distributed test launches `torchrun --nproc_per_node 2` (CPU, gloo) through the CLI and checks that two
ranks with batch b equal one process with batch b and two accumulation steps, parameter by parameter. SGD
without clipping: Adam's update hardly changes when every gradient is scaled by one factor, so a loss
normalised wrongly by a constant (a missing world-size or accumulation factor) would pass under Adam.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import mogen
from mogen.cli import main
from mogen.configs import ConfigError
from mogen.value import Example, train_value_model
from mogen.value import dataset as value_dataset
from mogen.value.data import encode_example
from mogen.value.dataset import read_dataset, read_rows, sample_dataset, write_rows

from tiny_models import char_tokenizer, metaspace_tokenizer, tiny_llama

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["the cat", "a dog", "one day", "the model", "a new text", "all good", "two dogs", "the city"]
# SGD, no clipping: see the module docstring. 24 training rows = 3 steps of 8 rows an epoch, on 2 x 4 or 1 x 4 x 2.
SGD = {"use_cpu": True, "optim": "sgd", "learning_rate": 0.1, "max_grad_norm": 0.0, "num_train_epochs": 2,
       "per_device_train_batch_size": 4}


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny Llama with its tokenizer (the policy and the model value models start from), prompts, a sample
    config with two rewards."""
    root = tmp_path_factory.mktemp("value-world")
    tok = metaspace_tokenizer()
    lm = tiny_llama(len(tok), 3, hidden=32, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    lm.save_pretrained(root / "ref")
    tok.save_pretrained(root / "ref")
    (root / "prompts.txt").write_text("\n".join(PROMPTS))
    _write(root / "sample.yaml", {"policy": "ref", "prompts": "prompts.txt", "output": "data", "seed": 3,
                                  "rewards": ["tests_sweep_rewards:count_e",
                                              {"function": "tests_sweep_rewards:count_a", "name": "a"}],
                                  "samples_per_prompt": 4, "max_new_tokens": 8, "batch_size": 8})
    return root


def _train_config(root: Path, name: str, **training_args) -> Path:
    return _write(root / f"{name}.yaml", {"dataset": "data", "model": "ref", "objective": "count_e", "output": name,
                                          "heldout": 0.25, "seed": 1, "training_args": {**SGD, **training_args}})


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "python"), str(ROOT), str(ROOT / "tests"),
                                         env.get("PYTHONPATH", "")])
    return env


@pytest.mark.distributed
def test_two_ranks_equal_accumulation_and_the_model_guides(world):
    t0 = time.perf_counter()
    assert main(["value", "sample", "--config", str(world / "sample.yaml"), "--quiet"]) == 0
    assert len(read_dataset(world / "data").rows) == 32
    ddp = _train_config(world, "value_ddp", gradient_accumulation_steps=1)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "mogen.cli",
                          "value", "train", "--config", str(ddp), "--quiet"], cwd=world, env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "value model in" in run.stdout and run.stdout.count("mogen value train:") == 1  # rank 0 alone prints
    one = _train_config(world, "value_one", gradient_accumulation_steps=2)
    assert main(["value", "train", "--config", str(one), "--quiet"]) == 0
    a = mogen.ValueGuide.from_pretrained(world / "value_ddp").model.state_dict()
    b = mogen.ValueGuide.from_pretrained(world / "value_one").model.state_dict()
    start = tiny_llama(len(metaspace_tokenizer()), 3, hidden=32).state_dict()
    assert a.keys() == b.keys()
    diff = {k: (a[k] - b[k]).abs().max().item() for k in a}
    moved = max((a[k] - start[k]).abs().max().item() if k in start else 0.0 for k in a)  # what training changed
    worst = max(diff, key=diff.get)
    print(f"\n2 ranks x batch 4 vs 1 rank x batch 4 x 2 steps: max |diff| {diff[worst]:.3g} ({worst}) over "
          f"{len(diff)} tensors; training moved a weight by up to {moved:.3g}; {time.perf_counter() - t0:.1f}s")
    # float32 sums in another order, amplified by the learning rate: a normalisation error would differ by ~ `moved`
    assert diff[worst] < 1e-4 and diff[worst] < 1e-3 * moved, (worst, diff[worst], moved)
    assert a["lm_head.weight"].abs().max() > 1e-2  # the value head trained (it starts at zero)
    _guides(world / "value_ddp")


def _guides(folder: Path) -> None:
    """The trained value model changes what the base decodes."""
    guide = mogen.ValueGuide.from_pretrained(folder)
    assert guide.model.config.mogen_value_model["objectives"] == ["count_e"]
    tok = metaspace_tokenizer()
    base = tiny_llama(len(tok), 3, hidden=32)
    enc = tok(PROMPTS[:4], return_tensors="pt", padding=True)
    plain = mogen.generate(base, enc["input_ids"], enc["attention_mask"], guides=None, max_new_tokens=8,
                           pad_token_id=3)
    guided = mogen.generate(base, enc["input_ids"], enc["attention_mask"], guides=[guide], gamma=50.0,
                            tokenizer=tok, max_new_tokens=8, pad_token_id=3)
    assert not torch.equal(plain, guided)


def test_accumulation_equals_a_bigger_batch():
    """One process: batch 4 with 2 accumulation steps is batch 8 (one step's rows averaged, not its
    micro-batches' means summed)."""
    tok = metaspace_tokenizer()
    lm = tiny_llama(len(tok), 5, hidden=32)
    texts = [" the cat", " a tree", " big red", " many old", " the tall tower", " all around", " no more", " dog"]
    data = [Example("so", t, float(len(t)), ended=i % 2 == 0) for i, t in enumerate(texts)] * 2
    kw = dict(data=data, heldout=0.0, epochs=2, progress=False)
    sgd = {"optim": "sgd", "learning_rate": 0.5, "max_grad_norm": 0.0}
    acc = train_value_model(lm, tok, batch_size=4, training_args={**sgd, "gradient_accumulation_steps": 2}, **kw)
    big = train_value_model(lm, tok, batch_size=8, training_args=sgd, **kw)
    diff = max((v - big.model.state_dict()[k]).abs().max().item() for k, v in acc.model.state_dict().items())
    assert diff < 1e-5, diff
    assert acc.losses == pytest.approx(big.losses, rel=1e-5)


def test_loss_is_eq16_by_hand():
    """compute_loss of a batch, against eq. 16 written out at the positions each response token is valued."""
    from mogen.value.trainer import RowCollator, ValueTrainer, training_arguments

    tok = char_tokenizer("abcdxy")
    tok.add_special_tokens({"eos_token": "</s>", "pad_token": "<pad>"})
    model = tiny_llama(len(tok), 2, hidden=16)
    rows = [(*encode_example(tok, "ab", "cd"), 0.5), (*encode_example(tok, "abc", "d", ended=False), -1.0)]
    batch = RowCollator(tok.pad_token_id)(rows)
    args = training_arguments({"use_cpu": True}, {"output_dir": "unused", "disable_tqdm": True})
    trainer = ValueTrainer(model=model, args=args, data_collator=RowCollator(tok.pad_token_id), shuffle_seed=0)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"]).logits
        ids = batch["input_ids"]
        # row 0: a b | c d eos -> c, d, eos valued at positions 1, 2, 3; row 1: a b c | d (cut) -> d at 2
        row0 = sum((logits[0, t, ids[0, t + 1]] - 0.5) ** 2 for t in (1, 2, 3)) / 3 * 0.5
        row1 = (logits[1, 2, ids[1, 3]] + 1.0) ** 2 * 0.5
        mean = (row0 + row1) / 2
        assert trainer.compute_loss(model, batch).item() == pytest.approx(mean.item(), rel=1e-5)
        # in training, one step's rows are N = 5 (these 2 and 3 elsewhere): this micro-batch adds its share
        share = trainer.compute_loss(model, batch, num_items_in_batch=torch.tensor([5.0])).item()
        assert share == pytest.approx((row0 + row1).item() / 5, rel=1e-5)


def _reward_e(prompt: str, response: str) -> float:
    return float(response.count("e"))


def test_sampling_resumes_where_it_stopped(world, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(world / "ref")
    tok = metaspace_tokenizer()
    kw = dict(samples_per_prompt=2, max_new_tokens=6, seed=5, batch_size=4, progress=False)  # 2 prompts a shard
    whole = sample_dataset(policy, tok, PROMPTS, {"e": _reward_e}, tmp_path / "whole", **kw)
    calls = []
    real_sample, real_write = value_dataset.sample_responses, value_dataset.write_rows
    monkeypatch.setattr(value_dataset, "sample_responses", lambda *a, **k: calls.append(a[2]) or real_sample(*a, **k))

    def dies_at_the_third(path, rows, format):
        if len(calls) == 3:
            path.with_name(f".{path.name}.tmp-1").write_text("half a shard")  # what a killed write leaves
            raise KeyboardInterrupt
        real_write(path, rows, format)

    monkeypatch.setattr(value_dataset, "write_rows", dies_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        sample_dataset(policy, tok, PROMPTS, {"e": _reward_e}, tmp_path / "part", **kw)
    with pytest.raises(ValueError, match=r"incomplete: 2 of 4 shards are missing \(the first: 00002.jsonl\)"):
        read_dataset(tmp_path / "part")
    monkeypatch.setattr(value_dataset, "write_rows", real_write)
    calls.clear()
    sample_dataset(policy, tok, PROMPTS, {"e": _reward_e}, tmp_path / "part", **kw)
    assert calls == [PROMPTS[4:6], PROMPTS[6:8]]  # only the shards the killed run had not finished
    assert read_dataset(tmp_path / "part").rows == read_dataset(whole).rows
    with pytest.raises(ValueError, match=r"sampled with seed=5, this run asks seed=6"):
        sample_dataset(policy, tok, PROMPTS, {"e": _reward_e}, tmp_path / "part", **{**kw, "seed": 6})


@pytest.mark.parametrize("format", ["jsonl", "parquet"])
def test_dataset_round_trip(tmp_path, format):
    rows = [{"prompt": "the cat", "response": " naïve café 🙂\n", "rewards": {"e": 1.5, "a": -0.25}, "ended": True},
            {"prompt": "a dog", "response": "", "rewards": {"e": 0.0, "a": 3.0}, "ended": False}]
    path = tmp_path / f"00000.{format}"
    write_rows(path, rows, format)
    assert read_rows(path) == rows
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
    data = value_dataset.ValueDataset({"objectives": ["e", "a"]}, rows)
    assert data.examples("a") == [Example("the cat", " naïve café 🙂\n", -0.25, True), Example("a dog", "", 3.0, False)]
    with pytest.raises(ValueError, match=r"objectives \['e', 'a'\]: name the one"):
        data.examples()


@pytest.mark.parametrize("which, change, message", [
    ("sample", {"bogus": 1}, r"bogus: unknown key"),
    ("sample", {"format": "csv"}, r"format: must be one of \['jsonl', 'parquet'\]"),
    ("sample", {"samples_per_prompt": 0}, r"samples_per_prompt: must be an int >= 1"),
    ("sample", {"rewards": ["nomodule:nothing"]}, r"rewards\[0\]: cannot import reward"),
    ("sample", {"rewards": ["tests_sweep_rewards:count_e", "tests_sweep_rewards:count_e"]},
     r"rewards\[1\]: a second reward named 'count_e'"),
    ("train", {"training_args": {"learning_rat": 0.1}},
     r"training_args.learning_rat: is not a transformers.TrainingArguments field; did you mean 'learning_rate'"),
    ("train", {"heldout": 1.5}, r"heldout: must be in \[0, 1\)"),
    ("train", {"objective": "helpful"}, r"objective: the dataset has no objective 'helpful'"),
    ("train", {"model": None}, r"model: expected a string"),
])
def test_config_errors_name_the_file_and_key(tmp_path, which, change, message):
    meta = {"version": 1, "format": "jsonl", "objectives": ["e"], "shards": 0}
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "meta.json").write_text(json.dumps(meta))  # an empty dataset of one objective
    base = ({"policy": "ref", "prompts": ["x"], "rewards": ["tests_sweep_rewards:count_e"], "output": "out"}
            if which == "sample" else {"dataset": "data", "model": "ref", "output": "out"})
    file = _write(tmp_path / "c.yaml", {**base, **change})
    with pytest.raises(ConfigError, match=message) as info:
        from mogen.value.config import load_sample_config, run_train

        load_sample_config(file) if which == "sample" else run_train(file)
    assert str(info.value).startswith(f"{file}: ")
