"""Value training (MAGE eq. 16) covers the whole response, the final eos included.

On a character-level tokenizer (one token per character, an eos added) the
ids, the prompt mask and the targets of a training batch are written out by
hand; then a value model is trained where stopping pays after one character
and not after another, and its eos row must have learnt that.
"""

from __future__ import annotations

import pytest
import torch

from mogen.value import Example, train_value_model
from mogen.value.data import encode_example
from mogen.value.train import batch_targets

from tiny_models import char_tokenizer, tiny_llama


@pytest.fixture(scope="module")
def tok():
    t = char_tokenizer("abcdxy")
    t.add_special_tokens({"eos_token": "</s>", "pad_token": "<pad>"})
    return t


def _ids(tok, text):
    return [tok.convert_tokens_to_ids(c) for c in text]


def test_encode_example_appends_eos_only_when_the_response_ended(tok):
    a, b, c, d = _ids(tok, "abcd")
    eos = tok.eos_token_id
    assert encode_example(tok, "ab", "cd") == ([a, b, c, d, eos], 2)
    assert encode_example(tok, "ab", "cd", ended=False) == ([a, b, c, d], 2)
    assert encode_example(tok, "ab", "", ended=True) == ([a, b, eos], 2)  # an empty response still ends


def test_batch_targets_by_hand(tok):
    a, b, c, d = _ids(tok, "abcd")
    eos, pad = tok.eos_token_id, tok.pad_token_id
    rows = [(*encode_example(tok, "ab", "cd"), 0.5), (*encode_example(tok, "abc", "d", ended=False), -1.0),
            (*encode_example(tok, "a", "", ended=True), 2.0)]
    ids, predict, target = batch_targets(rows, pad)
    assert ids.tolist() == [[a, b, c, d, eos], [a, b, c, d, pad], [a, eos, pad, pad, pad]]
    # predict[t]: position t's output is scored at token t + 1; every response token, eos included, and no
    # prompt token or padding.
    assert predict.tolist() == [[False, True, True, True],  # c, d, eos
                                [False, False, True, False],  # d (cut at the limit: no eos)
                                [True, False, False, False]]  # eos right after the prompt
    assert target.tolist() == [[0.5], [-1.0], [2.0]]


def test_eos_row_learns_where_stopping_pays(tok):
    """Reward 1 when the response stops right after an 'x', 0 when it stops after a 'y'."""
    data = [Example("a", r, float(r.endswith("x"))) for r in ("x", "y", "yx", "xy", "xx", "yy", "xyx", "yxy")]
    lm = tiny_llama(len(tok), 5, hidden=32)
    res = train_value_model(lm, tok, data=data * 4, epochs=30, lr=1e-2, batch_size=8, heldout=0.0, progress=False)
    head = res.model.get_output_embeddings().weight
    eos = tok.eos_token_id
    assert head[eos].abs().sum() > 0  # trained: the zero-initialised row moved
    assert res.head_rows == len(tok) and res.untrained_rows == len(tok) - 3  # only x, y and eos are targets
    assert res.untrained_fraction == pytest.approx((len(tok) - 3) / len(tok))
    with torch.no_grad():
        q = {s: res.model(input_ids=torch.tensor([_ids(tok, s)])).logits[0, -1, eos].item()
             for s in ("ax", "ay", "axyx", "ayxy")}
    # Q(x, y<t)[eos] is in standardised reward units: stopping after 'x' is worth more than after 'y'.
    assert q["ax"] > q["ay"] + 0.5 and q["axyx"] > q["ayxy"] + 0.5, q
