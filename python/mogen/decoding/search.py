"""``mogen.search``: chunk-level beam search (MPAW Algorithm 1; MAGE's b/c/l lookahead), docs/design.md section 1.

Per prompt, ``W`` beams; every round each live beam is extended by ``kappa``
sampled chunks of ``L`` tokens, every candidate is scored
(:mod:`mogen.decoding.scoring`)::

    score(y) = log pi_b(y|x) + beta * sum_i w_i (log pi_ei(y|x) - log pi_ri(y|x)) + gamma * sum_j u_j Q_j(x, y)

each model reading the text in its own tokenizer, and the top ``W`` are kept
(:func:`mogen.decoding.beams.select_beams`). Chunks are drawn from the base
(``proposal="base"``, MPAW) or from the token-level fused distribution of
:func:`mogen.generate` (``proposal="guided"``, MAGE's b/c/l lookahead with
``b = W, c = kappa, l = L``), after temperature / top-k / top-p.

This module is a *driver* (layer 3 of docs/design.md section 2):

- rows are prompts x live beams x expansions, grouped by prompt; each token
  is ONE batched forward of every model for all of them;
- every model keeps a KV cache per row; keeping the top ``W`` reorders and
  duplicates rows by index (``DecodingSession.reorder``), never re-runs a prefix, so
  a round costs its own tokens whatever the prefix length;
- a finished beam (eos, or a stopping criterion such as ``stop_strings``)
  leaves the batch: it stays in its prompt's pool with its score and
  competes with later candidates, but is never fed, expanded or copied
  again; a prompt is done when its top ``W`` have all ended, the search when
  every prompt is, or at ``max_new_tokens``;
- ``model.generate``'s processors (``repetition_penalty``, ``min_new_tokens``,
  ``logits_processor``, ...) shape the token-level proposal exactly as in
  :func:`mogen.generate` (:mod:`mogen.decoding.arguments` builds them with
  transformers); they read each row's ``[padded prompt | beam | chunk so far]``,
  which follows the rows through selection, as does the per-row state some of
  them keep. Without them the proposal is the plain fused top-k path;
- guides with their own tokenizer follow each row's text with look-behind
  re-tokenization (:mod:`mogen.decoding.retokenize`, which says where it is
  exact) and keep one score per live guide token, so a retracted token takes
  its score with it and the total equals scoring the whole text afresh. A
  guide sees only complete characters: while a row's text ends inside a
  multi-byte character, its guides score the text before that character.
  With the base proposal they read each chunk's text at once (one forward
  per model per round); the guided proposal needs their outputs every token.

Seeds: prompt ``b`` draws only from its own generator
(:func:`mogen.decoding.beams.prompt_generators`), so each prompt's result in
a batch equals its result alone with that generator (up to floating-point
differences between batch shapes, which can flip a draw or an exact tie).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional, Sequence

import torch

from .arguments import GenerationPlan, plan_generation, prepare_search_config
from .beams import Beam, SearchOutput, prompt_generators, select_beams
from .checks import TokenIds, check_prompt
from .models import output_device
from .sampling import TokenSelector, sample_indices
from .scoring import SequenceScorer
from .session import DecodingSession, check_base, open_session, special_ids
from .terms import Fusion

__all__ = ["search", "SearchConfig", "RoundReport", "PROPOSALS"]

PROPOSALS = ("base", "guided")


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


@dataclass(frozen=True)
class SearchConfig:
    """The shape of the search: ``beam_width`` W, ``expansion`` kappa, ``chunk_length`` L, and the proposal."""

    beam_width: int = 4
    expansion: int = 4
    chunk_length: int = 10
    max_new_tokens: int = 128
    proposal: str = "base"

    def __post_init__(self) -> None:
        for name in ("beam_width", "expansion", "chunk_length", "max_new_tokens"):
            _count(getattr(self, name), name)
        if self.proposal not in PROPOSALS:
            raise ValueError(f"proposal must be one of {PROPOSALS}, got {self.proposal!r}")


@dataclass
class RoundReport:
    """What one chunk round did (for progress lines, streaming and tests).

    Attributes:
        round: 0-based round number.
        new_tokens: tokens per beam generated so far (the chunk boundary).
        candidates: per prompt, this round's candidates.
        kept: per prompt, the top W after selection, best first.
        tokens: candidate tokens generated so far, all rows (the search's work).
        seconds: wall time since the search started.
    """

    round: int
    new_tokens: int
    candidates: list[list[Beam]]
    kept: list[list[Beam]]
    tokens: int
    seconds: float

    @property
    def live(self) -> int:
        """Live beams kept, all prompts."""
        return sum(not b.finished for beams in self.kept for b in beams)


class _PromptOfRow:
    """``prefix_allowed_tokens_fn`` for transformers' processor built with one row per "batch id": it calls the
    user's function with the row's prompt index, as ``model.generate`` does with its beams."""

    def __init__(self, fn: Callable[[int, torch.Tensor], list]) -> None:
        self.fn = fn
        self.search: Optional["_Search"] = None

    def __call__(self, row: int, ids: torch.Tensor) -> list:
        return self.fn(self.search.owner[row] if self.search is not None else row, ids)


class _Search:
    """One ``search`` call: the base's runner, the bound guides, the scorer, the rows and the pools."""

    def __init__(self, session: DecodingSession, config: SearchConfig, plan: GenerationPlan, generator: Any) -> None:
        self.session = s = session
        self.config = config
        self.plan = plan
        self.device = s.device
        self.input_ids = s.input_ids
        self.guidance = s.guidance
        self.eos = s.eos
        self.pad_token_id = s.pad_token_id if s.pad_token_id is not None else 0
        batch = self.input_ids.shape[0]
        self.selectors = [TokenSelector(s.vocab_size, do_sample=True, device=self.device, generator=g,
                                        **plan.selector)
                          for g in prompt_generators(generator, batch, self.device)]
        # Each row's prompt as transformers' processors read it (left padded), following the rows.
        self.prompt_rows = self.input_ids
        self.runners = s.runners
        self.scorer = SequenceScorer(self.guidance, batch, self.device)
        f = self.guidance.fusion
        self.proposal = f if config.proposal == "guided" else Fusion(
            [], torch.zeros(0, device=self.device), beta=f.beta, gamma=f.gamma, value_top_k=None)
        # The guided proposal reads text readers' outputs every token; the base proposal only needs their
        # scores at the chunk's end, so they read each chunk at once (one forward per model per round).
        self.text_per_token = config.proposal == "guided" and not f.empty
        self.owner = list(range(batch))  # the prompt of each row
        self.kept: list[list[Beam]] = [[] for _ in range(batch)]
        self.tokens = 0
        s.register(self.scorer.reorder)
        s.register(self._reorder_rows)

    # -- rows ------------------------------------------------------------------------------------------------

    @property
    def base_logits(self) -> torch.Tensor:
        return self.session.base_logits

    @property
    def produced(self) -> int:
        return self.session.produced

    def _prefill(self) -> None:
        self.session.prefill()
        self.scorer.start()
        self.gen = torch.zeros(self.input_ids.shape[0], 0, dtype=torch.long, device=self.device)

    def _reorder(self, index: list[int]) -> None:
        """Row ``r`` becomes old row ``index[r]`` everywhere (every holder registered with the session)."""
        self.session.reorder(index)

    def _reorder_rows(self, index: torch.Tensor) -> None:
        self.gen = self.gen.index_select(0, index)
        self.owner = [self.owner[i] for i in index.tolist()]
        if self.plan.needs_ids:
            self.prompt_rows = self.prompt_rows.index_select(0, index)
            self.plan.reorder(index)

    def _ranges(self) -> list[tuple[int, int]]:
        """Per prompt, its rows ``[start, end)`` (rows are grouped by prompt, in prompt order)."""
        out, start = [], 0
        for b in range(len(self.selectors)):
            end = start
            while end < len(self.owner) and self.owner[end] == b:
                end += 1
            out.append((start, end))
            start = end
        return out

    # -- one chunk -------------------------------------------------------------------------------------------

    def _propose(self, ranges: list[tuple[int, int]], ids: Optional[torch.Tensor]) -> torch.Tensor:
        """One token per row: each prompt's rows drawn with its own generator.

        ``ids [R, T + n]`` (each row's prompt, its beam's tokens and the chunk so far) are what transformers'
        processors read, as in :func:`mogen.generate`: ``pre`` on the base's logits, the proposal's fusion,
        ``post`` on the full fused row when it has anything the selector cannot do on the fused top-k.
        """
        plan = self.plan
        logits = plan.process_base(ids, self.base_logits) if plan.pre else self.base_logits
        step = self.proposal.step(logits)
        out = torch.empty(len(self.owner), dtype=torch.long, device=self.device)
        if plan.full_row:
            scores = plan.process_fused(ids, step.full())
            for b, (s, e) in enumerate(ranges):
                if s < e:
                    out[s:e] = sample_indices(scores[s:e], self.selectors[b].generator)
            return out
        memo: dict[Any, Any] = {}

        def full() -> torch.Tensor:
            if "full" not in memo:
                memo["full"] = step.full()
            return memo["full"]

        def topk(k: int) -> tuple[torch.Tensor, torch.Tensor]:
            if k not in memo:
                memo[k] = step.topk(k)
            return memo[k]

        for b, (s, e) in enumerate(ranges):
            if s < e:
                out[s:e] = self.selectors[b](lambda s=s, e=e: full()[s:e],
                                             lambda k, s=s, e=e: tuple(t[s:e] for t in topk(k)))
        return out

    def _advance(self, tokens: torch.Tensor, was_alive: torch.Tensor, more: bool) -> None:
        """Feed ``tokens [R]`` to the base and lockstep guides when more tokens follow, and to text readers
        when the proposal needs their outputs token by token (else :meth:`_chunk` gives them the chunk at once)."""
        self.session.advance(tokens, was_alive, lockstep=more, text=self.text_per_token)

    def _chunk(self, steps: int, last_round: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample and score up to ``steps`` tokens for every row; returns them ``[R, n]`` (pad after the end) and
        where each row ended ``[R]`` (``k`` > 0: at its k-th token, by eos or a stopping criterion; 0: alive)."""
        ranges = self._ranges()
        rows = len(self.owner)
        alive = torch.ones(rows, dtype=torch.bool, device=self.device)
        ends = torch.zeros(rows, dtype=torch.long, device=self.device)
        seq, start = None, 0
        if self.plan.needs_ids:  # [prompt | beam | chunk so far] per row, as model.generate's ids would be
            head = torch.cat([self.prompt_rows, self.gen], dim=1)
            start = head.shape[1]
            seq = torch.empty(rows, start + steps, dtype=torch.long, device=self.device)
            seq[:, :start] = head
        out, fed = [], []
        for s in range(steps):
            ids = None if seq is None else seq[:, :start + s]
            tokens = self._propose(ranges, ids).masked_fill(~alive, self.pad_token_id)
            self.scorer.on_tokens(self.base_logits, tokens, alive)
            was_alive = alive
            if seq is not None:
                seq[:, start + s] = tokens
            if self.eos is not None:
                alive = alive & ~torch.isin(tokens, self.eos)
            if self.plan.criteria:
                alive = alive & ~self.plan.stopped(seq[:, :start + s + 1])
            ends = torch.where(was_alive & ~alive, s + 1, ends)
            out.append(tokens)
            fed.append(was_alive)
            more = not (last_round and s == steps - 1) and bool(alive.any())
            self._advance(tokens, was_alive, more)
            if not more:
                break
        self.tokens += len(self.owner) * len(out)
        chunk = torch.stack(out, dim=1)
        if not self.text_per_token:  # guides reading text score the whole chunk in one forward each
            self.runners.push_text(chunk, torch.stack(fed, dim=1))
        return chunk, ends

    # -- selection -------------------------------------------------------------------------------------------

    def _candidates(self, chunk: torch.Tensor, ends: torch.Tensor) -> list[list[Beam]]:
        """This round's rows as beams, per prompt (``ends`` as :meth:`_chunk` returns it)."""
        before = self.gen.shape[1]
        self.gen = torch.cat([self.gen, chunk], dim=1)
        ended = ends > 0
        lengths = torch.where(ended, before + ends, before + chunk.shape[1])
        terms = self.scorer.terms()
        scores = self.scorer.scores(terms)
        guides, active = len(self.guidance.guides), self.guidance.active
        per_guide = torch.full((terms.shape[0], guides), float("nan"), dtype=torch.float64, device=self.device)
        per_guide[:, active] = terms
        rows = zip(self.gen.tolist(), lengths.tolist(), ended.tolist(), scores.tolist(), self.scorer.base.tolist(),
                   per_guide.tolist())
        out: list[list[Beam]] = [[] for _ in self.selectors]
        for r, (ids, length, fin, score, base, t) in enumerate(rows):
            out[self.owner[r]].append(Beam(tuple(ids[:length]), score, base, tuple(t), bool(fin), r))
        return out

    def _select(self, candidates: list[list[Beam]]) -> list[int]:
        """Keep each prompt's top W; returns the next round's rows (each live kept beam ``kappa`` times)."""
        index: list[int] = []
        for b, cands in enumerate(candidates):
            pool = [beam for beam in self.kept[b] if beam.finished]
            self.kept[b] = select_beams(pool, cands, self.config.beam_width)
            index += [beam.row for beam in self.kept[b] if not beam.finished for _ in range(self.config.expansion)]
        return index

    def run(self, on_round: Optional[Callable[[RoundReport], None]] = None) -> list[list[Beam]]:
        """The search; per prompt its final beams, best first."""
        cfg = self.config
        t0 = time.perf_counter()
        self._prefill()
        self._reorder([b for b in range(len(self.selectors)) for _ in range(cfg.beam_width * cfg.expansion)])
        rnd = 0
        while True:
            steps = min(cfg.chunk_length, cfg.max_new_tokens - self.produced)
            last = self.produced + steps >= cfg.max_new_tokens
            candidates = self._candidates(*self._chunk(steps, last))
            index = self._select(candidates)
            if on_round is not None:
                on_round(RoundReport(rnd, self.produced, candidates, [list(k) for k in self.kept], self.tokens,
                                     time.perf_counter() - t0))
            if last or not index:
                return self.kept
            self._reorder(index)
            rnd += 1

    def sequences(self, beams: Sequence[Sequence[Beam]]) -> torch.Tensor:
        """``[B, T + n]``: each prompt and its best beam, right-padded with the pad id."""
        best = [list(b[0].tokens) for b in beams]
        width = max(len(t) for t in best)
        new = torch.full((len(best), width), self.pad_token_id, dtype=torch.long)
        for b, t in enumerate(best):
            new[b, : len(t)] = torch.tensor(t, dtype=torch.long)
        return torch.cat([self.input_ids, new.to(self.device)], dim=1)


def search(
    base: Any,
    input_ids: torch.Tensor,
    attention_mask: Optional[torch.Tensor] = None,
    *,
    guides: Any,
    tokenizer: Any = None,
    weights: Any = None,
    beam_width: int = 4,
    expansion: int = 4,
    chunk_length: int = 10,
    max_new_tokens: Optional[int] = None,
    proposal: str = "base",
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    beta: float = 1.0,
    gamma: float = 1.0,
    eos_token_id: TokenIds = None,
    pad_token_id: Optional[int] = None,
    generator: Any = None,
    return_scores: bool = False,
    on_round: Optional[Callable[[RoundReport], None]] = None,
    logits_processor: Optional[list] = None,
    stopping_criteria: Optional[list] = None,
    prefix_allowed_tokens_fn: Optional[Callable[[int, torch.Tensor], list]] = None,
    **kwargs: Any,
) -> Any:
    """Chunk-level beam search steered by weighted guides; the best sequence per prompt ``[B, T + new]``.

    Conventions as :func:`mogen.generate`: left-padded prompts, ``weights``
    ``[M]`` or ``[B, M]`` (one row per prompt), guides with their own
    tokenizers (then ``tokenizer`` is required), eos / pad defaults from the
    base's generation config.

    ``model.generate``'s arguments, where they mean something for chunks, act on
    the token-level *proposal* the chunks are drawn from, through transformers'
    own processors and stopping criteria, as in :func:`mogen.generate`; every token::

        scores = transformers' processors (repetition_penalty, min_new_tokens, ...)(base logits)
        scores = the proposal's fusion(scores)      # the base alone, or the guided fusion
        scores = logits_processor(scores), then temperature / top-k / top-p / min_p / ...
        token  = a draw from softmax(scores), each prompt with its own generator

    Processors read each row's ids ``[prompt (left padded) | its beam's tokens | the chunk so far]``, rows
    following their beams through selection. A candidate that a stopping criterion stops (``stop_strings``,
    ``max_time``, ``stopping_criteria``) ends there as at eos: it stays in its prompt's pool with its score and
    is never extended; its tokens end at the one where it stopped. The beams' scores stay the models' own
    log-probabilities and guide terms (docs/design.md section 1.5): the processors shape which chunks are
    proposed, not how they rank. With none of these arguments the search is exactly the plain one.

    Honoured (:data:`mogen.decoding.argument_support.SEARCH_FIELDS` says how, field by field): ``logits_processor``,
    ``stopping_criteria``, ``prefix_allowed_tokens_fn`` (``batch_id`` is the row's prompt),
    ``repetition_penalty``, ``encoder_repetition_penalty``, ``no_repeat_ngram_size``,
    ``encoder_no_repeat_ngram_size``, ``bad_words_ids``, ``sequence_bias``, ``suppress_tokens``,
    ``begin_suppress_tokens``, ``min_new_tokens`` / ``min_length`` (eos banned until reached),
    ``forced_bos_token_id``, ``forced_eos_token_id``, ``exponential_decay_length_penalty``,
    ``remove_invalid_values``, ``renormalize_logits``, ``min_p`` / ``typical_p`` / ``epsilon_cutoff`` /
    ``eta_cutoff`` / ``top_h`` (warpers on the full fused row), ``max_length`` (instead of ``max_new_tokens``),
    ``stop_strings`` (with ``tokenizer``), ``max_time``.

    Refused, with the alternative in the error: ``num_beams`` (``beam_width``), ``do_sample=False``
    (``top_k=1`` gives greedy chunks), ``num_return_sequences`` > 1, ``return_dict_in_generate``,
    ``output_scores``, ``output_logits`` (``return_scores=True`` returns every final beam), ``generation_config``
    (pass its fields), ``guidance_scale`` / ``negative_prompt_ids``, ``watermarking_config``, ``streamer``
    (``on_round``), token beam search's ``length_penalty`` / ``early_stopping`` / ``num_beam_groups`` /
    ``diversity_penalty`` / ``low_memory``, and everything :func:`mogen.generate` refuses.

    Unlike :func:`mogen.generate`, the search reads no sampling defaults from the base's ``generation_config``
    (only eos and pad): its proposal is ``temperature`` / ``top_k`` / ``top_p`` as given here, and
    ``max_new_tokens`` defaults to 128.

    Args:
        beam_width: W, beams kept per prompt.
        expansion: kappa, chunks sampled from each live beam per round.
        chunk_length: L, tokens per chunk (the last round may be shorter).
        max_new_tokens: at most this many tokens per beam (default 128, or what ``max_length`` leaves).
        proposal: ``"base"`` (chunks from the base, MPAW) or ``"guided"`` (from the fused token-level
            distribution of :func:`mogen.generate`, MAGE's b/c/l lookahead).
        temperature, top_k, top_p: applied to the proposal before each draw (``top_k=1``: greedy chunks).
        beta, gamma: scales of the proxy and value terms, in the proposal (guided) and in the score.
        generator: a ``torch.Generator`` (split into one per prompt) or a list of one per prompt; see
            :func:`mogen.decoding.beams.prompt_generators` for how seeds map to prompts.
        return_scores: also return every final beam with its score and per-guide terms.
        on_round: called with a :class:`RoundReport` after every chunk round.
        logits_processor, stopping_criteria, prefix_allowed_tokens_fn: as in ``model.generate``, on the
            proposal; ``logits_processor`` sees the fused scores ``[R, V]`` of every live row, ``stopping_criteria``
            is called with ``scores=None``. A processor or criterion of your own that keeps per-row state must
            not assume rows stay in place: beam selection reorders and duplicates them.
        **kwargs: ``GenerationConfig`` fields, as listed above.

    Returns:
        LongTensor ``[B, T + n]`` (prompt as given, then the best beam, right-padded with ``pad_token_id``),
        or a :class:`~mogen.decoding.beams.SearchOutput` with ``return_scores=True``.

    Raises:
        ValueError / TypeError naming the argument: ``beam_width``, ``expansion``, ``chunk_length`` or
        ``max_new_tokens`` < 1, an unknown ``proposal``, a refused argument (with its alternative), an unknown
        kwarg, transformers' own errors for the processors' arguments, and everything :func:`mogen.generate`
        rejects.
    """
    shape = SearchConfig(beam_width, expansion, chunk_length, 128 if max_new_tokens is None else max_new_tokens,
                         proposal)
    if max_new_tokens is None and kwargs.get("max_length") is None:
        max_new_tokens = shape.max_new_tokens
    if not isinstance(return_scores, bool):
        raise TypeError(f"return_scores must be a bool, got {type(return_scores).__name__}")
    with torch.no_grad():
        check_base(base)
        device = output_device(base)
        ids, mask, padded = check_prompt(input_ids, attention_mask, device)
        eos, pad = special_ids(base, eos_token_id, pad_token_id, device)
        config, default_min = prepare_search_config(kwargs, temperature=temperature, top_k=top_k, top_p=top_p,
                                                    max_new_tokens=max_new_tokens, eos=eos, pad_token_id=pad)
        prefix = None if prefix_allowed_tokens_fn is None else _PromptOfRow(prefix_allowed_tokens_fn)
        plan = plan_generation(
            base, config, ids, mask if padded else None, default_max_length=False, default_min_length=default_min,
            prompt_ids=ids, logits_processor=logits_processor, stopping_criteria=stopping_criteria,
            prefix_allowed_tokens_fn=prefix, tokenizer=tokenizer, mask_given=attention_mask is not None)
        shape = replace(shape, max_new_tokens=plan.max_new_tokens)
        session = open_session(base, ids, mask, guides=guides, tokenizer=tokenizer, weights=weights, beta=beta,
                               gamma=gamma, max_new_tokens=shape.max_new_tokens, special=(eos, pad))
        run = _Search(session, shape, plan, generator)
        if prefix is not None:
            prefix.search = run
        beams = run.run(on_round)
        sequences = run.sequences(beams)
    return SearchOutput(sequences, beams) if return_scores else sequences
