"""mogen.search with model.generate's processors and stopping criteria.

Greedy chunks (``top_k=1``) make the search a greedy decoder, so with the processors it must give
``base.generate(do_sample=False, same arguments)`` (zero weights) or ``mogen.generate`` (guided proposal) token for
token; sampled searches are checked against what each processor promises on every candidate, and against the
ids each processor must read (every row's padded prompt and its own beam, through reordering).
"""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig, LogitsProcessor, StoppingCriteria
from transformers.generation.stopping_criteria import StopStringCriteria

import mogen
from tiny_models import byte_level_tokenizer, pad_rows, proxy_guide, tiny_llama

EOS, PAD = 2, 3
TEXTS = ["The cat sees", "A naïve café in 日本", "One"]
# Ids this base emits early in greedy decoding of the prompts below (row 1 repeats "234 93 114", row 2 emits 156,
# row 0 starts with 175), so that each processor below changes the output.
FREQUENT = 156


@pytest.fixture(scope="module")
def tok():
    return byte_level_tokenizer()


@pytest.fixture(scope="module")
def base(tok):
    return tiny_llama(len(tok), 0, hidden=48, eos_token_id=EOS, pad_token_id=PAD)


@pytest.fixture(scope="module")
def prompts(tok, base):
    """``(ids, mask)``, left padded; the last prompt holds the start of its own greedy continuation, whose rest
    repeats one of its ids (so that the processors reading the prompt change the output)."""
    rows = [tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    start = base.generate(torch.tensor([rows[-1]]), do_sample=False, max_new_tokens=4, pad_token_id=PAD)
    rows[-1] = start[0].tolist()
    return pad_rows(rows, PAD)


class NoRecentRepeat(LogitsProcessor):
    """Bans each row's last 4 tokens (reads the ids, so it needs them per row)."""

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return scores.scatter(1, input_ids[:, -4:], float("-inf"))


class StopAt(StoppingCriteria):
    """Stops a row whose last token is ``token``."""

    def __init__(self, token: int) -> None:
        self.token = token

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        return input_ids[:, -1] == self.token


def _allowed(batch_id: int, ids: torch.Tensor) -> list[int]:
    """A different constraint per prompt: prompt b never gets ids that are b mod 3."""
    return [v for v in range(400) if v % 3 != batch_id]


#: Cases that change nothing here (no NaN to remove; a normalised row draws the same), checked all the same.
NEUTRAL = {"remove_invalid_values"}
# Each case alone, then a combination; "eos" makes FREQUENT an eos too (rows end early: min_new_tokens bites).
CASES = {
    "repetition_penalty": dict(repetition_penalty=1.3),
    "no_repeat_ngram_size": dict(no_repeat_ngram_size=2),
    "bad_words_ids": dict(bad_words_ids=[[175], [234, 93]]),
    "min_new_tokens": dict(min_new_tokens=6, eos_token_id=[EOS, FREQUENT]),
    "min_length": dict(min_length=24, eos_token_id=[EOS, FREQUENT]),
    "stop_strings": dict(stop_strings=["ous", "the", "CW"]),
    "suppress_tokens": dict(suppress_tokens=[234, FREQUENT]),
    "begin_suppress_tokens": dict(begin_suppress_tokens=[175, 190, 273]),
    "sequence_bias": dict(sequence_bias={(175,): -30.0, (234, 93): -30.0}),
    "encoder_repetition_penalty": dict(encoder_repetition_penalty=2.0),
    "encoder_no_repeat_ngram_size": dict(encoder_no_repeat_ngram_size=1),
    "forced_eos_token_id": dict(forced_eos_token_id=EOS),
    "exponential_decay_length_penalty": dict(exponential_decay_length_penalty=(4, 1.8)),
    "remove_invalid_values": dict(remove_invalid_values=True, renormalize_logits=True),
    "max_length": dict(max_length=31),
    "logits_processor": dict(logits_processor=[NoRecentRepeat()]),
    "stopping_criteria": dict(stopping_criteria=[StopAt(93)]),
    "prefix_allowed_tokens_fn": dict(prefix_allowed_tokens_fn=_allowed),
    "combination": dict(repetition_penalty=1.3, no_repeat_ngram_size=3, bad_words_ids=[[175]], min_new_tokens=4,
                        eos_token_id=[EOS, FREQUENT], stop_strings=["the"], logits_processor=[NoRecentRepeat()]),
}


def _greedy_search(base, tok, prompts, *, proposal="base", guides=(), weights=None, width=1, expansion=1, **kw):
    ids, mask = prompts
    if "max_length" not in kw:
        kw.setdefault("max_new_tokens", 16)
    kw.setdefault("eos_token_id", EOS)
    return mogen.search(base, ids, mask, guides=list(guides), tokenizer=tok, weights=weights, beam_width=width,
                        expansion=expansion, chunk_length=5, top_k=1, proposal=proposal, pad_token_id=PAD,
                        generator=torch.Generator().manual_seed(0), **kw)


def _greedy_generate(base, tok, prompts, **kw):
    ids, mask = prompts
    if "max_length" not in kw:
        kw.setdefault("max_new_tokens", 16)
    kw.setdefault("eos_token_id", EOS)
    return base.generate(ids, attention_mask=mask, do_sample=False, pad_token_id=PAD, tokenizer=tok, **kw)


@pytest.mark.parametrize("proposal", ["base", "guided"])
@pytest.mark.parametrize("case", list(CASES))
def test_greedy_chunks_equal_base_generate(base, tok, prompts, proposal, case):
    """One beam, one expansion, greedy chunks, zero weights: base.generate's greedy tokens, processors included."""
    guides = [proxy_guide(len(tok), 10)]
    plain = _greedy_search(base, tok, prompts, proposal=proposal, guides=guides, weights=[0.0])
    want = _greedy_generate(base, tok, prompts, **CASES[case])
    got = _greedy_search(base, tok, prompts, proposal=proposal, guides=guides, weights=[0.0], **CASES[case])
    assert torch.equal(got, want)
    if case not in NEUTRAL:
        assert not torch.equal(got, plain), f"{case} does not change this greedy output: the case checks nothing"


@pytest.mark.parametrize("case", ["repetition_penalty", "no_repeat_ngram_size", "min_new_tokens", "stop_strings",
                                  "logits_processor", "combination"])
def test_greedy_guided_chunks_equal_mogen_generate(base, tok, prompts, case):
    """The guided proposal is mogen.generate's fused distribution: with greedy chunks and one beam, the search
    gives mogen.generate's greedy tokens, processors before the fusion and logits_processor after it."""
    guides = [proxy_guide(len(tok), 10), proxy_guide(len(tok), 20)]
    ids, mask = prompts
    kw = dict(CASES[case])
    want = mogen.generate(base, ids, mask, guides=guides, tokenizer=tok, weights=[1.5, -0.5], do_sample=False,
                          max_new_tokens=16, pad_token_id=PAD, **{"eos_token_id": EOS, **kw})
    got = _greedy_search(base, tok, prompts, proposal="guided", guides=guides, weights=[1.5, -0.5], **kw)
    assert torch.equal(got, want)


@pytest.mark.parametrize("proposal", ["base", "guided"])
def test_warpers_run_on_the_full_fused_row(base, tok, prompts, proposal):
    """min_p / typical_p / epsilon / eta / top_h are transformers' warpers on the proposal's full row: min_p=1 keeps
    only the best token, so a search sampling with it (and one beam) is greedy decoding; the others run."""
    ids, mask = prompts
    args = dict(guides=[proxy_guide(len(tok), 10)], tokenizer=tok, weights=[0.0], beam_width=1, expansion=1,
                chunk_length=5, max_new_tokens=16, proposal=proposal, eos_token_id=EOS, pad_token_id=PAD,
                generator=torch.Generator().manual_seed(1), repetition_penalty=1.3)
    want = _greedy_generate(base, tok, prompts, repetition_penalty=1.3)
    assert torch.equal(mogen.search(base, ids, mask, min_p=1.0, temperature=0.7, **args), want)
    out = mogen.search(base, ids, mask, typical_p=0.9, epsilon_cutoff=3e-4, eta_cutoff=3e-4, top_h=0.9, top_k=20,
                       **{**args, "beam_width": 2, "expansion": 2})
    assert out.shape[0] == ids.shape[0]


@pytest.mark.parametrize("proposal", ["base", "guided"])
def test_per_row_state_follows_uneven_rows(base, tok, prompts, proposal):
    """Greedy chunks with W = 2, kappa = 2 are still greedy decoding, but rows are duplicated and, once a
    prompt's beam ends, unevenly spread over the prompts: the processors that keep state per row (the repetition
    penalty's prompt padding, the encoder processors' prompt ids) and prefix_allowed_tokens_fn's batch id must
    follow them."""
    kw = dict(repetition_penalty=1.3, encoder_repetition_penalty=1.5, encoder_no_repeat_ngram_size=2,
              prefix_allowed_tokens_fn=_allowed, eos_token_id=[EOS, FREQUENT])
    want = _greedy_generate(base, tok, prompts, **kw)
    lengths = (want[:, prompts[0].shape[1]:] != PAD).sum(dim=1)
    assert len(set(lengths.tolist())) > 1, "every row ends together: the rows stay even"
    reports = []
    got = _greedy_search(base, tok, prompts, proposal=proposal, guides=[proxy_guide(len(tok), 10)], weights=[0.0],
                         width=2, expansion=2, on_round=reports.append, **kw)
    assert torch.equal(got, want)
    assert any(len({len(c) for c in r.candidates}) > 1 for r in reports)  # uneven rows did occur


def _rounds(reports):
    """``(report, first step, steps)`` of every round."""
    done = 0
    for r in reports:
        yield r, done, r.new_tokens - done
        done = r.new_tokens


@pytest.mark.parametrize("proposal", ["base", "guided"])
def test_processors_read_each_rows_prompt_and_beam(base, tok, prompts, proposal):
    """A sampled search with W = 2, kappa = 3: at every token, the ids a processor reads are, row by row, the
    padded prompt of the row's prompt and that row's own tokens; prefix_allowed_tokens_fn gets the prompt's index."""
    ids, mask = prompts
    width = ids.shape[1]
    seen: list[torch.Tensor] = []
    prefix_calls: list[tuple[int, torch.Tensor]] = []

    class Record(LogitsProcessor):
        def __call__(self, input_ids, scores):
            seen.append(input_ids.clone())
            return scores

    def allowed(batch_id, sent):
        prefix_calls.append((batch_id, sent.clone()))
        return _allowed(batch_id, sent)

    reports = []
    guides = [proxy_guide(len(tok), 10)]
    out = mogen.search(base, ids, mask, guides=guides, tokenizer=tok, weights=[0.8], beam_width=2, expansion=3,
                       chunk_length=3, max_new_tokens=12, temperature=1.5, proposal=proposal,
                       eos_token_id=[EOS, FREQUENT], pad_token_id=PAD, generator=torch.Generator().manual_seed(5),
                       logits_processor=[Record()], prefix_allowed_tokens_fn=allowed, on_round=reports.append,
                       return_scores=True)
    assert len(seen) == reports[-1].new_tokens
    for report, first, steps in _rounds(reports):
        for s in range(steps):
            got = seen[first + s]
            assert got.shape[1] == width + first + s
            rows = []
            for b, cands in enumerate(report.candidates):
                for c in cands:
                    rows.append(c.row)
                    assert torch.equal(got[c.row, :width], ids[b])
                    n = min(first + s, len(c.tokens))
                    assert got[c.row, width:width + n].tolist() == list(c.tokens[:n])
            assert sorted(rows) == list(range(got.shape[0]))
    for batch_id, sent in prefix_calls:
        assert torch.equal(sent[:width], ids[batch_id])
    for b, beams in enumerate(out.beams):
        for beam in beams:
            assert all(v % 3 != b for v in beam.tokens)


def _repeats_a_bigram(seq: list[int], start: int) -> bool:
    """Whether a bigram ending at or after ``start`` occurred earlier in ``seq``."""
    for t in range(max(start, 1), len(seq)):
        earlier = {tuple(seq[i - 1:i + 1]) for i in range(1, t)}
        if tuple(seq[t - 1:t + 1]) in earlier:
            return True
    return False


def _sampled(base, tok, prompts, proposal, **kw):
    """A sampled search (W = 3, kappa = 2, L = 4) and every candidate of every round as ``(prompt, beam)``."""
    ids, mask = prompts
    reports = []
    args = dict(beam_width=3, expansion=2, chunk_length=4, max_new_tokens=16, temperature=1.5, proposal=proposal,
                pad_token_id=PAD, generator=torch.Generator().manual_seed(11), on_round=reports.append,
                return_scores=True)
    args.update(kw)
    out = mogen.search(base, ids, mask, guides=[proxy_guide(len(tok), 10)], tokenizer=tok, weights=[0.8], **args)
    return out, [(b, c) for r in reports for b, cands in enumerate(r.candidates) for c in cands]


@pytest.mark.parametrize("proposal", ["base", "guided"])
def test_sampled_candidates_keep_every_promise(base, tok, prompts, proposal):
    """Every candidate of every round of a sampled search: no repeated bigram over prompt and beam, no banned
    sequence, no eos before min_new_tokens (while without them a bigram repeats and some beam ends earlier)."""
    ids, _ = prompts
    width = ids.shape[1]
    # top-2 sampling repeats itself; one id in ~9 is an eos, so beams end early
    args = dict(temperature=1.0, top_k=2, eos_token_id=list(range(300, 360)))
    _, free = _sampled(base, tok, prompts, proposal, **args)
    assert any(c.finished and len(c.tokens) < 5 for _, c in free), "no early eos: min_new_tokens checks nothing"
    assert any(_repeats_a_bigram(ids[b].tolist() + list(c.tokens), width) for b, c in free)
    _, cands = _sampled(base, tok, prompts, proposal, min_new_tokens=5, no_repeat_ngram_size=2,
                        bad_words_ids=[[234, 93], [114]], **args)
    for b, c in cands:
        seq = ids[b].tolist() + list(c.tokens)
        assert not _repeats_a_bigram(seq, width), c.tokens
        assert 114 not in c.tokens and all(seq[t - 1:t + 1] != [234, 93] for t in range(width, len(seq)))
        if c.finished:
            assert len(c.tokens) >= 5
    assert any(c.finished for _, c in cands)


@pytest.mark.parametrize("proposal", ["base", "guided"])
def test_a_stopped_candidate_ends_where_the_criterion_first_fires(base, tok, prompts, proposal):
    """Stop strings and a stopping criterion of one's own end a candidate as eos does: finished, its tokens cut at
    the token where the criterion first fired, never extended afterwards."""
    ids, _ = prompts
    width = ids.shape[1]
    stops = ["e", "a"]
    _, cands = _sampled(base, tok, prompts, proposal, eos_token_id=EOS, stop_strings=stops,
                        stopping_criteria=[StopAt(93)])
    oracle = StopStringCriteria(tok, stops)
    stopped = 0
    for b, c in cands:
        seq = ids[b].tolist() + list(c.tokens)
        fires = [bool(oracle(torch.tensor([seq[:t]]), None)[0]) or seq[t - 1] in (93, EOS)
                 for t in range(width + 1, len(seq) + 1)]
        assert not any(fires[:-1]), c.tokens  # never went on past a stop
        assert c.finished == fires[-1]
        stopped += c.finished and seq[-1] != EOS
    assert stopped > 0
    # a finished candidate is never extended: no candidate of its prompt, in any round, goes on from it
    finished = {(b, c.tokens) for b, c in cands if c.finished}
    for b, c in cands:
        assert not any((b, c.tokens[:n]) in finished for n in range(1, len(c.tokens)))


def test_max_time_ends_every_beam_at_once(base, tok, prompts):
    ids, mask = prompts
    out = mogen.search(base, ids, mask, guides=[], tokenizer=tok, beam_width=2, expansion=2, chunk_length=4,
                       max_new_tokens=12, max_time=0.0, return_scores=True)
    assert all(len(b.tokens) == 1 and b.finished for beams in out.beams for b in beams)


def test_max_length_is_max_new_tokens_from_the_prompt(base, tok, prompts):
    ids, mask = prompts
    args = dict(guides=[], tokenizer=tok, beam_width=2, expansion=2, chunk_length=4, eos_token_id=EOS)
    a = mogen.search(base, ids, mask, max_length=ids.shape[1] + 7, generator=torch.Generator().manual_seed(2), **args)
    b = mogen.search(base, ids, mask, max_new_tokens=7, generator=torch.Generator().manual_seed(2), **args)
    assert torch.equal(a, b) and a.shape[1] <= ids.shape[1] + 7
    with pytest.raises(ValueError, match="max_length"):
        mogen.search(base, ids, mask, max_length=ids.shape[1], **args)


def test_neutral_arguments_keep_the_plain_search(base, tok, prompts):
    """Arguments that build no processor (transformers' neutral values) leave the search exactly as it was."""
    ids, mask = prompts
    args = dict(guides=[proxy_guide(len(tok), 10)], tokenizer=tok, weights=[0.7], beam_width=2, expansion=2,
                chunk_length=3, max_new_tokens=9, top_p=0.9)
    plain = mogen.search(base, ids, mask, generator=torch.Generator().manual_seed(3), **args)
    same = mogen.search(base, ids, mask, generator=torch.Generator().manual_seed(3), repetition_penalty=1.0,
                        no_repeat_ngram_size=0, do_sample=True, num_return_sequences=1, output_scores=False, **args)
    assert torch.equal(plain, same)


@pytest.mark.parametrize("kw,match", [
    (dict(num_beams=4), "num_beams.*beam_width"),
    (dict(num_beams=1), "num_beams.*beam_width"),
    (dict(num_return_sequences=2), "num_return_sequences.*return_scores=True"),
    (dict(return_dict_in_generate=True), "return_dict_in_generate.*return_scores=True"),
    (dict(output_scores=True), "output_scores.*return_scores=True"),
    (dict(output_logits=True), "output_logits.*return_scores=True"),
    (dict(do_sample=False), "do_sample.*top_k=1"),
    (dict(generation_config=GenerationConfig(max_new_tokens=3)), "generation_config.*keyword arguments"),
    (dict(guidance_scale=1.5), "guidance_scale.*mogen.generate"),
    (dict(negative_prompt_ids=torch.ones(1, 2, dtype=torch.long)), "negative_prompt_ids"),
    (dict(streamer=object()), "streamer.*on_round"),
    (dict(watermarking_config={"bias": 2.0}), "watermarking_config.*mogen.generate"),
    (dict(length_penalty=2.0), "length_penalty"),
    (dict(early_stopping=True), "early_stopping"),
    (dict(num_beam_groups=2), "num_beam_groups"),
    (dict(diversity_penalty=0.5), "diversity_penalty"),
    (dict(force_words_ids=[[5]]), "force_words_ids.*bad_words_ids"),
    (dict(penalty_alpha=0.6), "penalty_alpha"),
    (dict(use_cache=False), "use_cache"),
    (dict(assistant_model=object()), "assistant_model"),
    (dict(synced_gpus=True), "synced_gpus"),
    (dict(output_attentions=True), "output_attentions"),
    (dict(token_healing=True), "token_healing"),
    (dict(cache_implementation="static"), "cache_implementation"),
    (dict(stop_strings=["x"], tokenizer=None), "tokenizer"),
    (dict(repetiton_penalty=1.2), "repetiton_penalty"),
])
def test_refused_arguments_are_named_with_the_alternative(base, tok, prompts, kw, match):
    ids, mask = prompts
    kw = {"tokenizer": tok, **kw}
    with pytest.raises((ValueError, TypeError), match=match):
        mogen.search(base, ids, mask, guides=[], max_new_tokens=4, **kw)


def test_unknown_kwargs_are_a_type_error(base, tok, prompts):
    ids, mask = prompts
    with pytest.raises(TypeError, match=r"\['foo'\].*mogen.search"):
        mogen.search(base, ids, mask, guides=[], tokenizer=tok, max_new_tokens=4, foo=1)


def test_search_support_table_covers_every_field():
    """Every GenerationConfig field and model.generate argument has a row for mogen.search (the README's table)."""
    from mogen.decoding.argument_support import (CALL_ARGUMENTS, FIELDS, SEARCH_CALL_ARGUMENTS, SEARCH_FIELDS,
                                                 support_markdown)

    assert set(GenerationConfig().to_dict()) <= set(SEARCH_FIELDS) == set(FIELDS)
    assert set(SEARCH_CALL_ARGUMENTS) == set(CALL_ARGUMENTS)
    table = support_markdown("search")
    assert table.startswith("| argument | in mogen.search |")
    assert "| `num_beams` | refused |" in table and "| `repetition_penalty` | honoured |" in table
    assert support_markdown() != table
