"""Sweep prompts as users have them (mogen.evaluation.prompts): .txt, JSONL, CSV, parquet, a datasets folder;
field, split, limit, shuffle_seed, the chat template; errors that name the file and the key."""

from __future__ import annotations

import copy
import csv
import json
import re
import sys

import pytest
import yaml

from mogen.configs import ConfigError
from mogen.evaluation import load_sweep_config, run_sweep

from tiny_models import metaspace_tokenizer, tiny_llama

datasets = pytest.importorskip("datasets")
pytestmark = pytest.mark.usefixtures("datasets_cache")

ROWS = [{"question": f"question number {i} about the river", "id": i} for i in range(10)]
CHAT = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}" \
       "{% if add_generation_prompt %}assistant:{% endif %}"
BASE = {"output": "run", "rewards": ["tests_sweep_rewards:count_e", "tests_sweep_rewards:count_a"],
        "reference_point": [-1, -1], "preferences": [[1.0, 0.0], [0.0, 1.0]], "bootstrap": {"resamples": 20},
        "decoding": {"max_new_tokens": 4, "do_sample": False, "seed": 0},
        "models": {"base": "base"}, "methods": [{"name": "base", "kind": "base"}]}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The same rows as .txt, .jsonl, .csv, .parquet, a save_to_disk Dataset and a DatasetDict folder."""
    root = tmp_path_factory.mktemp("prompts")
    (root / "p.txt").write_text("\n".join(r["question"] for r in ROWS) + "\n\n")
    (root / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    with open(root / "p.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["question", "id"])
        writer.writeheader()
        writer.writerows(ROWS)
    ds = datasets.Dataset.from_list(ROWS)
    ds.to_parquet(str(root / "p.parquet"))
    ds.save_to_disk(str(root / "saved"))
    other = datasets.Dataset.from_list([{"question": f"held out {i}", "id": i} for i in range(4)])
    datasets.DatasetDict({"train": ds, "test": other}).save_to_disk(str(root / "splits"))
    datasets.DatasetDict({"dev": other, "test": other}).save_to_disk(str(root / "no_train"))
    return root


def _prompts(root, prompts):
    return load_sweep_config({**BASE, "prompts": prompts}, root).prompts


def _error(root, prompts, name="sweep.yaml"):
    path = root / name
    path.write_text(yaml.safe_dump({**BASE, "prompts": prompts}))
    with pytest.raises(ConfigError) as info:
        load_sweep_config(path)
    return path, str(info.value)


@pytest.mark.parametrize("name", ["p.jsonl", "p.csv", "p.parquet", "saved", "splits", "p.txt"])
def test_every_source_gives_the_expected_prompts(files, name):
    questions = [r["question"] for r in ROWS]
    field = {} if name == "p.txt" else {"field": "question"}
    assert _prompts(files, {"path": name, **field}) == questions
    assert _prompts(files, {"path": name, **field, "limit": 3}) == questions[:3]
    # shuffle_seed: the order datasets' own Dataset.shuffle(seed) gives, then limit
    own = datasets.Dataset.from_list(ROWS).shuffle(seed=7)["question"]
    assert own != questions
    assert _prompts(files, {"path": name, **field, "shuffle_seed": 7}) == own
    assert _prompts(files, {"path": name, **field, "shuffle_seed": 7, "limit": 4}) == own[:4]
    assert _prompts(files, {"path": name, **field, "shuffle_seed": 7, "limit": 40}) == own


def test_splits_and_the_default_field(files, tmp_path):
    held = [f"held out {i}" for i in range(4)]
    assert _prompts(files, {"path": "splits", "field": "question", "split": "test"}) == held
    assert _prompts(files, {"path": "p.jsonl", "field": "question", "split": "train"})[0] == ROWS[0]["question"]
    (tmp_path / "d.jsonl").write_text(json.dumps({"prompt": "the default field"}) + "\n")
    assert _prompts(tmp_path, {"path": "d.jsonl"}) == ["the default field"]
    assert _prompts(files, "p.txt") == [r["question"] for r in ROWS]  # a plain .txt path, as before


@pytest.mark.parametrize("prompts, key, message", [
    ({"path": "p.jsonl", "field": "text"}, "prompts.field",
     r"p.jsonl' has no field 'text'; its fields: \['question', 'id'\]"),
    ({"path": "p.parquet"}, "prompts.field", r"no field 'prompt' \(the default; set prompts.field\); its fields"),
    ({"path": "saved", "field": "nope"}, "prompts.field", r"has no field 'nope'; its fields: \['question', 'id'\]"),
    ({"path": "p.jsonl", "field": "id"}, "prompts.field", "holds 0: every prompt must be a non-empty string"),
    ({"path": "splits", "field": "question", "split": "dev"}, "prompts.split",
     r"has no split 'dev'; its splits: \['train', 'test'\]"),
    ({"path": "no_train", "field": "question"}, "prompts.split", r"has the splits \['dev', 'test'\]: choose one"),
    ({"path": "p.csv", "field": "question", "split": "test"}, "prompts.split", "has no split 'test'"),
    ({"path": "missing.jsonl"}, "prompts.path", "does not exist"),
    ({"path": "sweep.yaml"}, "prompts.path", r"prompts come from a .txt, .jsonl"),
    ({"path": "p.txt", "field": "question"}, "prompts.field", "a .txt file has one prompt per line"),
    ({"path": "p.jsonl", "limit": 0}, "prompts.limit", "must be an int >= 1"),
    ({"path": "p.jsonl", "colour": 1}, "prompts.colour", r"unknown key\(s\) \['colour'\]"),
    ({"field": "question"}, "prompts.path", "is required"),
    ({"path": "p.jsonl", "field": "question", "chat_template": True}, "prompts.chat_template",
     "has no chat template"),
])
def test_errors_name_the_file_and_key(files, prompts, key, message):
    (files / "base").mkdir(exist_ok=True)
    metaspace_tokenizer().save_pretrained(files / "base")  # no chat template
    path, text = _error(files, prompts)
    assert text.startswith(f"{path}: {key}: ") and re.search(message, text), text


def test_without_datasets_a_data_file_names_the_extra(files, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets raises ImportError
    path, text = _error(files, {"path": "p.jsonl", "field": "question"})
    assert text.startswith(f"{path}: prompts.path: ") and "pip install 'mogen[data]'" in text, text
    assert _prompts(files, {"path": "p.txt", "limit": 2}) == [r["question"] for r in ROWS[:2]]  # .txt needs nothing


def test_chat_template_decodes_the_templated_prompt(tmp_path, monkeypatch):
    """chat_template: the base reads the prompt through its tokenizer's chat template (greedy: the same tokens as
    transformers' generate on the templated ids); samples.jsonl and the rewards keep the raw prompt."""
    import torch

    from tokenizers import processors

    tok = copy.deepcopy(metaspace_tokenizer())
    tok.chat_template = CHAT
    # The tokenizer adds <s> itself, as most do: the template's text has it already, so it must not come twice.
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)])
    assert tok("x")["input_ids"][0] == tok.bos_token_id
    base = tiny_llama(len(tok), 1)
    base.generation_config.pad_token_id = tok.pad_token_id
    base.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "the river"}) + "\n")
    cfg = {**BASE, "prompts": {"path": "p.jsonl", "chat_template": True}}
    assert load_sweep_config(cfg, tmp_path).chat_template
    from mogen.evaluation import methods

    read = []
    generate = methods.generate

    def recorded(model, ids, *args, **kwargs):
        read.append(ids)
        return generate(model, ids, *args, **kwargs)

    monkeypatch.setattr(methods, "generate", recorded)
    run_sweep(cfg, root=tmp_path, progress=False)
    line, _ = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert line["prompt"] == "the river"
    text = tok.apply_chat_template([{"role": "user", "content": "the river"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text == "<s>user: the river\nassistant:"
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert read and all(r.tolist() == ids.tolist() for r in read)  # the template's <s>, once
    with torch.no_grad():
        out = base.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                            pad_token_id=tok.pad_token_id)
    assert line["response"] == tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert "prompts (decoded through the chat template)" in (tmp_path / "run" / "metrics.md").read_text()
    plain = run_sweep({**cfg, "prompts": {"path": "p.jsonl"}}, root=tmp_path, progress=False)
    assert plain.decoded == 2  # the prompt as written is another input: decoded again, not taken from the chat run
