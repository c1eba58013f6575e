"""Value models: training (MAGE eq. 16), determinism, errors, and merging them like any checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

import mogen
from mogen.value import Example, predict_final_values, spearman, train_value_model

from tiny_models import metaspace_tokenizer, tiny_llama, value_llama


def _reward(prompt: str, response: str) -> float:
    words = response.split()
    return sum(w.startswith(("t", "a")) for w in words) / max(len(words), 1)


@pytest.fixture(scope="module")
def lm_and_tok():
    tok = metaspace_tokenizer()
    return tiny_llama(len(tok), 3, hidden=32), tok


def test_training_is_seeded_and_lowers_the_loss(lm_and_tok, tmp_path):
    lm, tok = lm_and_tok
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    kwargs = dict(prompts=["the cat", "a dog", "one day"], reward=_reward, samples_per_prompt=6, max_new_tokens=8,
                  epochs=4, lr=3e-3, batch_size=8, heldout=0.25, seed=7, progress=False)
    a = train_value_model(lm, tok, save_to=tmp_path / "v", **kwargs)
    b = train_value_model(lm, tok, **kwargs)
    assert all(torch.equal(v, lm.state_dict()[k]) for k, v in before.items())  # the input model is untouched
    assert a.losses == b.losses and a.losses[-1] < a.losses[0]
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
    assert a.train_examples + a.heldout_examples == 18 and a.heldout_spearman is not None
    entry = json.loads((tmp_path / "v" / "config.json").read_text())["mogen_value_model"]
    assert entry["reward_offset"] == pytest.approx(a.reward_offset) and entry["reward_scale"] == pytest.approx(a.reward_scale)
    guide = mogen.ValueGuide.from_pretrained(tmp_path / "v")
    assert guide.tokenizer is not None and len(guide.tokenizer) == len(tok)


def test_training_from_data_fits_the_rewards(lm_and_tok):
    lm, tok = lm_and_tok
    texts = ["tall trees", "a tree", "big red", "many old", "the tall tower", "all around", "no more", "red dog"]
    data = [Example("so", " " + t, _reward("so", " " + t)) for t in texts] * 4
    res = train_value_model(lm, tok, data=data, epochs=20, lr=1e-2, batch_size=8, heldout=0.0, progress=False)
    pred = predict_final_values(res.model, tok, data[: len(texts)])
    truth = [e.reward for e in data[: len(texts)]]
    assert max(abs(p - r) for p, r in zip(pred, truth)) < 0.1, (pred, truth)


def test_training_errors(lm_and_tok):
    lm, tok = lm_and_tok
    with pytest.raises(ValueError, match="prompts= and reward=.*data="):
        train_value_model(lm, tok, progress=False)
    with pytest.raises(ValueError, match=r"prompt='the cat'.*nan"):
        train_value_model(lm, tok, prompts=["the cat"], reward=lambda p, r: float("nan"), samples_per_prompt=2,
                          max_new_tokens=3, progress=False)
    with pytest.raises(TypeError, match="not a number"):
        train_value_model(lm, tok, data=[("a", "b", "high")], progress=False)


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)  # ties share ranks


def test_merged_value_models_on_disk_equal_merge_into(tmp_path):
    tok = metaspace_tokenizer()
    folders = []
    for seed in (1, 2):
        v = value_llama(len(tok), seed)
        v.save_pretrained(tmp_path / f"v{seed}")
        tok.save_pretrained(tmp_path / f"v{seed}")
        folders.append(tmp_path / f"v{seed}")
    coef = [0.3, 0.7]
    mogen.merge(folders, coef, tmp_path / "merged", progress=False)
    on_disk = mogen.ValueGuide.from_pretrained(tmp_path / "merged").model
    live = mogen.ValueGuide.from_pretrained(folders[0]).model
    mogen.merge_into(live, folders, coef)
    ids = torch.tensor([[1, 5, 9, 14, 30, 2]])
    with torch.no_grad():
        a, b = on_disk(ids).logits, live(ids).logits
    assert torch.equal(a, b)
    assert on_disk.config.mogen_value_model == live.config.mogen_value_model
    # the merge of one value model with coefficient 1 is that model
    mogen.merge_into(live, folders[:1], [1.0])
    original = mogen.ValueGuide.from_pretrained(folders[0]).model
    for (name, p), q in zip(live.state_dict().items(), original.state_dict().values()):
        assert torch.equal(p, q), name
