"""GrowingLayer (in-place KV appends) holds exactly what transformers' DynamicLayer holds."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from mogen.decoding.kvcache import GrowingLayer, new_cache

from tiny_models import tiny_llama


def test_growing_cache_equals_dynamic_cache_through_growth_reorder_and_crop():
    model = tiny_llama(97, 0, max_positions=512)
    ours, plain = new_cache(model), DynamicCache(config=model.config)
    assert all(isinstance(layer, GrowingLayer) for layer in ours.layers)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 97, (3, 5), generator=gen)
    plan = [(ids, None)] + [(torch.randint(0, 97, (3, 1), generator=gen), None) for _ in range(70)]
    plan[40] = (plan[40][0], torch.tensor([2, 0, 0]))  # beam selection: rows repeat and drop
    plan[60] = (torch.randint(0, 97, (3, 4), generator=gen), torch.tensor([1, 2, 1]))
    with torch.no_grad():
        for step, (x, index) in enumerate(plan):
            if index is not None:
                ours.reorder_cache(index)
                plain.reorder_cache(index)
            if step == 50:  # an operation GrowingLayer does not override: picked up on the next update
                ours.crop(-3)
                plain.crop(-3)
            a = model(input_ids=x, cache=ours, use_cache=True).logits
            b = model(input_ids=x, cache=plain, use_cache=True).logits
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
            assert ours.get_seq_length() == plain.get_seq_length()
    for mine, theirs in zip(ours.layers, plain.layers):
        torch.testing.assert_close(mine.keys, theirs.keys)
        assert mine._k.shape[-2] > mine.keys.shape[-2]  # spare room: the next step appends in place
