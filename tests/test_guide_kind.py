"""A guide kind defined in this file, without editing ``mogen``: a fixed per-token bias.

``BiasGuide(token_id, b)`` adds ``b`` to token ``token_id`` at every step (its
term is a one-hot row times ``b``, scaled by ``gamma * w``) and, in chunk
search, ``b`` per occurrence of the token in the continuation. One class and
one :func:`register_guide_kind` call make ``generate``, ``search`` and the
logits processor take it; the tests check it against hand computations.
"""

from __future__ import annotations

import pytest
import torch

import mogen
from mogen.decoding import GuideTerm, register_guide_kind

from tiny_models import pad_rows, proxy_guide, tiny_llama

V = 53
TOKEN = 17


class BiasGuide:
    """Add ``bias`` to token ``token_id`` (a guide object needs ``weight`` and ``tokenizer``)."""

    def __init__(self, token_id: int, bias: float, weight: float = 1.0) -> None:
        self.token_id, self.bias, self.weight, self.tokenizer = token_id, float(bias), weight, None


class BiasTerm(GuideTerm):
    scale = "gamma"

    @classmethod
    def bind(cls, binder, index, column, guide, shared):
        term = cls(guide, column)
        term.row = torch.zeros(1, binder.vocab_size, device=binder.device)
        term.row[0, guide.token_id] = guide.bias
        return term

    def full(self):
        return self.row

    def track(self, tracking):
        g = self.guide
        return tracking.add_base(("bias", g.token_id, g.bias),
                                 lambda _logits, ids: torch.where(ids == g.token_id, g.bias, 0.0).double())

    def sequence(self, tracking, handle):
        return tracking.sum(handle)


register_guide_kind(BiasGuide, BiasTerm)


@pytest.fixture(scope="module")
def base():
    return tiny_llama(V, 0, hidden=48)


def _prompts():
    return pad_rows([[4, 5, 6, 7, 8], [9, 8], [3, 3, 3]], pad_id=0)


def _hand_greedy(base, rows, steps, coef):
    """Greedy decoding by full forwards: ``argmax(log_softmax(z) + coef * onehot(TOKEN))``."""
    out = []
    for row in rows:
        seq = list(row)
        for _ in range(steps):
            with torch.no_grad():
                z = base(torch.tensor([seq])).logits[0, -1, :V].float()
            s = torch.log_softmax(z, dim=-1)
            s[TOKEN] += coef
            seq.append(int(torch.argmax(s)))
        out.append(seq[len(row):])
    return out


def test_generate_zero_bias_is_unguided_and_large_bias_forces_the_token(base):
    ids, mask = _prompts()
    plain = mogen.generate(base, ids, mask, guides=[], max_new_tokens=8)
    zero = mogen.generate(base, ids, mask, guides=[BiasGuide(TOKEN, 0.0)], max_new_tokens=8)
    assert torch.equal(zero, plain)
    forced = mogen.generate(base, ids, mask, guides=BiasGuide(TOKEN, 1e4), max_new_tokens=8)
    assert (forced[:, ids.shape[1]:] == TOKEN).all()
    assert not (plain[:, ids.shape[1]:] == TOKEN).all()


def test_generate_matches_the_hand_computation_next_to_a_proxy_guide(base):
    ids = torch.tensor([[4, 5, 6, 7], [9, 8, 7, 6]])
    proxy = proxy_guide(V, 10)
    # gamma * w * b = 0.5 * 1.5 * 4 = 3: enough to change some choices, not all
    got = mogen.generate(base, ids, guides=[BiasGuide(TOKEN, 4.0)], weights=[1.5], gamma=0.5, max_new_tokens=8)
    assert got[:, 4:].tolist() == _hand_greedy(base, ids.tolist(), 8, 3.0)
    # with a proxy guide (fused by K1): a zero bias changes nothing
    both = mogen.generate(base, ids, guides=[proxy, BiasGuide(TOKEN, 0.0)], weights=[0.8, 1.0], max_new_tokens=8)
    alone = mogen.generate(base, ids, guides=[proxy], weights=[0.8], max_new_tokens=8)
    assert torch.equal(both, alone)


def test_processor_adds_the_bias_and_equals_generate(base):
    ids, mask = _prompts()
    proc = mogen.MultiObjectiveLogitsProcessor([BiasGuide(TOKEN, 4.0)], weights=[1.5], gamma=0.5, pad_token_id=0)
    scores = torch.randn(3, V)
    fused = proc(ids, scores)
    want = torch.log_softmax(scores, dim=-1)
    want[:, TOKEN] += 3.0
    assert torch.allclose(fused, want, atol=1e-6)
    proc.reset()
    out = base.generate(ids, attention_mask=mask, logits_processor=[proc], do_sample=False, max_new_tokens=8,
                        pad_token_id=0)
    expected = mogen.generate(base, ids, mask, guides=[BiasGuide(TOKEN, 4.0)], weights=[1.5], gamma=0.5,
                              max_new_tokens=8)
    assert torch.equal(out, expected)


def test_search_scores_each_occurrence_and_follows_the_bias(base):
    ids, mask = _prompts()
    args = dict(beam_width=2, expansion=2, chunk_length=3, max_new_tokens=7, top_k=5, gamma=0.5)
    gen = torch.Generator().manual_seed(3)
    res = mogen.search(base, ids, mask, guides=[BiasGuide(TOKEN, 4.0)], weights=[1.5], generator=gen,
                       return_scores=True, **args)
    for beams in res.beams:
        for beam in beams:
            count = sum(t == TOKEN for t in beam.tokens)
            assert beam.terms == (4.0 * count,)
            assert beam.score == pytest.approx(beam.base_logprob + 0.5 * 1.5 * 4.0 * count, abs=1e-9)
    # zero bias: the search the same draws make without guides
    zero = mogen.search(base, ids, mask, guides=[BiasGuide(TOKEN, 0.0)], generator=torch.Generator().manual_seed(3),
                        **args)
    plain = mogen.search(base, ids, mask, guides=[], generator=torch.Generator().manual_seed(3), **args)
    assert torch.equal(zero, plain)
    # a large bias in the guided proposal: every chunk is the token
    forced = mogen.search(base, ids, mask, guides=[BiasGuide(TOKEN, 1e4)], proposal="guided",
                          generator=torch.Generator().manual_seed(3), **args)
    assert (forced[:, ids.shape[1]:] == TOKEN).all()
