"""Layer 1 (runners): reordering and duplicating rows by index equals running those rows from scratch."""

from __future__ import annotations

import torch

import mogen
from mogen.decoding.binding import bind_guides

from tiny_models import byte_level_tokenizer, metaspace_tokenizer, pad_rows, tiny_llama, value_llama


def _guides(bl, ms):
    shared = mogen.ProxyGuide(tiny_llama(len(bl), 1), tiny_llama(len(bl), 2))
    own = mogen.ProxyGuide(tiny_llama(len(ms), 3), tiny_llama(len(ms), 4), tokenizer=ms)
    value_hidden = mogen.ValueGuide(value_llama(len(ms), 5), tokenizer=ms, top_k=4)
    value_full = mogen.ValueGuide(value_llama(len(bl), 6))
    return [shared, own, value_hidden, value_full]


def _bind(guides, bl, batch):
    return bind_guides(guides, None, batch=batch, tokenizer=bl, vocab_size=len(bl), device=torch.device("cpu"),
                       beta=1.0, gamma=1.0).runners


def _prefill(runners, rows):
    ids, mask = pad_rows(rows)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    runners.prefill(ids, mask, positions, mask)
    return mask, positions[:, -1:] + 1


def _outputs(runners):
    return [g.output(i) for g in runners.groups for i in range(len(g.runners))]


def test_reorder_and_duplicate_rows_equal_a_fresh_prefill():
    bl, ms = byte_level_tokenizer(), metaspace_tokenizer()
    guides = _guides(bl, ms)
    texts = ["the river", "a busy street at", "quiet"]
    prompts = [bl(t, add_special_tokens=False)["input_ids"] for t in texts]
    runners = _bind(guides, bl, len(prompts))
    assert runners.lockstep.runners and runners.cross
    mask, pos = _prefill(runners, prompts)
    rows = [list(p) for p in prompts]
    steps = [bl(" and the", add_special_tokens=False)["input_ids"], bl(" old trees", add_special_tokens=False)["input_ids"]]
    plan = [(steps[0][:3], None), (steps[1][:2], torch.tensor([2, 0, 0, 1])), (steps[1][:3], torch.tensor([3, 1, 1, 0]))]
    for toks, index in plan:
        if index is not None:  # beam selection between steps: caches, text state and the driver's mask follow
            runners.reorder(index)
            mask, pos = mask[index], pos[index]
            rows = [list(rows[i]) for i in index.tolist()]
        for t in toks:
            tokens = torch.full((len(rows),), t, dtype=torch.long)
            mask = torch.cat([mask, torch.ones(len(rows), 1, dtype=torch.long)], dim=1)
            runners.step(tokens, mask, pos)
            pos = pos + 1
            for r in rows:
                r.append(t)
    fresh = _bind(guides, bl, len(rows))
    _prefill(fresh, rows)
    got, want = _outputs(runners), _outputs(fresh)
    assert len(got) == len(want) == 6
    for a, b in zip(got, want):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)
    assert [c.text for c in runners.cross[0].contexts] == [bl.decode(r) for r in rows]
    # the duplicated rows are independent copies: they agree now...
    torch.testing.assert_close(got[0][1], got[0][2])
    # ...and diverge when fed different tokens
    mask = torch.cat([mask, torch.ones(len(rows), 1, dtype=torch.long)], dim=1)
    runners.step(torch.tensor([5, 6, 7, 8]), mask, pos)
    assert not torch.allclose(runners.groups[0].output(0)[1], runners.groups[0].output(0)[2])
