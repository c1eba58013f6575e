"""Real tokenizer pairs for the cross-tokenizer checks (tests/test_real_pairs.py, benchmarks/cross_tokenizer_pairs.py).

Nothing here uses mogen's own reading of tokens: what a token's bytes are is worked out below from
each tokenizer's scheme (the GPT-2 byte-level alphabet, metaspace '▁' = space, '<0xNN>' byte tokens,
added tokens by content, special tokens without text), and checked against the tokenizers' own
decoders by the tests.

    vocab_report("llama-spm", "gpt-2")     # checks build_vocab_map for the pair, returns its coverage
    oddify(model, "qwen2")                 # a random model that often emits byte pieces, specials, spaces
    reference_generate(...)                # uncached greedy reference of mogen.generate, with its events
    generate_vs_reference(pair, ...)       # both, on tiny models sized to the pair; asserts they agree
    search_vs_reference(pair, ...)         # mogen.search's beams against tests/search_reference.py
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import Optional, Sequence

import torch

from real_tokenizers import NAMES, real_tokenizer, vocab_tests

# How each tokenizer spells bytes (from its tokenizer.json: a ByteLevel decoder, or Replace('▁', ' ') with
# ByteFallback).
SCHEME = {
    "llama-spm": "metaspace", "phi-3": "metaspace",
    "llama-bpe": "byte-level", "qwen2": "byte-level", "gpt-2": "byte-level", "falcon": "byte-level",
    "starcoder": "byte-level",
}

# Ordered (base, guide) pairs of the end-to-end checks: sentencepiece <-> byte-level BPE both ways, two
# byte-level BPEs of different eras, the two sentencepiece conversions (Metaspace pre-tokenizer vs Prepend
# normalizer), and Falcon <-> StarCoder.
PAIRS = [
    ("llama-spm", "llama-bpe"), ("llama-bpe", "llama-spm"),
    ("llama-spm", "gpt-2"), ("gpt-2", "llama-spm"),
    ("llama-bpe", "qwen2"), ("qwen2", "llama-bpe"),
    ("gpt-2", "phi-3"), ("phi-3", "gpt-2"),
    ("falcon", "starcoder"), ("starcoder", "falcon"),
    ("phi-3", "llama-spm"), ("qwen2", "phi-3"),
]
ALL_PAIRS = [(b, g) for b in NAMES for g in NAMES if b != g]

REPLACEMENT = "\ufffd"


# --------------------------------------------------------------------------- #
# Token bytes, independent of mogen.vocab
# --------------------------------------------------------------------------- #


def gpt2_bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> character table (openai/gpt-2 encoder.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


_BYTE_DECODER = {c: b for b, c in gpt2_bytes_to_unicode().items()}
_BYTE_TOKEN = re.compile(r"<0x([0-9A-F]{2})>")


@dataclass(frozen=True)
class TokenBytes:
    """Per id of one tokenizer: ``data[i]`` the bytes token ``i`` stands for (None for a special token), and
    ``kind[i]``: "normal", "byte" ('<0xNN>'), "added" (an added, non-special token: its content) or
    "special" (an added special token: no text)."""

    name: str
    data: tuple
    kind: tuple

    def index(self) -> dict[bytes, int]:
        """bytes -> the lowest id standing for them (special tokens left out)."""
        out: dict[bytes, int] = {}
        for i, b in enumerate(self.data):
            if b is not None:
                out.setdefault(b, i)
        return out


@lru_cache(maxsize=None)
def token_bytes(name: str) -> TokenBytes:
    """Every token's bytes of the real tokenizer ``name``, from its scheme (:data:`SCHEME`)."""
    tok = real_tokenizer(name)
    added = tok.added_tokens_decoder
    data: list = [None] * len(tok)
    kind = ["normal"] * len(tok)
    for s, i in tok.get_vocab().items():
        if i in added:
            if added[i].special:
                kind[i] = "special"
            else:
                data[i], kind[i] = added[i].content.encode("utf-8"), "added"
        elif SCHEME[name] == "byte-level":
            data[i] = bytes(_BYTE_DECODER[c] for c in s)
        else:
            m = _BYTE_TOKEN.fullmatch(s)
            if m:
                data[i], kind[i] = bytes([int(m.group(1), 16)]), "byte"
            else:
                data[i] = s.replace("\u2581", " ").encode("utf-8")
    assert all(k == "special" for b, k in zip(data, kind) if b is None), name  # no holes
    return TokenBytes(name, tuple(data), tuple(kind))


# --------------------------------------------------------------------------- #
# Vocabulary map check and coverage
# --------------------------------------------------------------------------- #


@dataclass
class Coverage:
    """One (base, guide) map: ``mapped`` of ``size`` base ids map somewhere; ``specials_mapped`` of them are
    special tokens mapped to guide special tokens (by role or content); ``exact`` base tokens with text have
    a guide token with the same bytes, ``exact_mapped`` of them are mapped."""

    base: str
    guide: str
    size: int
    mapped: int
    specials: int
    specials_mapped: int
    exact: int
    exact_mapped: int
    unmapped_exact: list = field(default_factory=list)  # base ids with a same-bytes counterpart left at -1


def vocab_report(base: str, guide: str) -> Coverage:
    """Checks ``mogen.vocab.build_vocab_map`` for the pair against :func:`token_bytes`: every mapped base token
    with text maps to a guide token with the same bytes, every mapped special token to a special token
    (AssertionError naming the entries otherwise). Returns the pair's :class:`Coverage`."""
    from mogen.vocab import build_vocab_map

    tb, tg = token_bytes(base), token_bytes(guide)
    vmap = build_vocab_map(real_tokenizer(base), real_tokenizer(guide)).tolist()
    assert len(vmap) == len(tb.data)
    g_index = tg.index()
    bad = []
    cov = Coverage(base, guide, len(vmap), 0, 0, 0, 0, 0)
    for i, j in enumerate(vmap):
        b = tb.data[i]
        special = tb.kind[i] == "special"
        cov.specials += special
        if j != -1:
            cov.mapped += 1
            if not 0 <= j < len(tg.data):
                bad.append((i, j, "out of range"))
            elif special or tg.kind[j] == "special":
                if not (special and tg.kind[j] == "special"):
                    bad.append((i, j, "special with text"))
                cov.specials_mapped += 1
            elif tg.data[j] != b:
                bad.append((i, j, f"{b!r} != {tg.data[j]!r}"))
        if b is not None and b in g_index:
            cov.exact += 1
            if j != -1:
                cov.exact_mapped += 1
            else:
                cov.unmapped_exact.append(i)
    assert not bad, f"{base} -> {guide}: {len(bad)} entries join different bytes, e.g. {bad[:5]}"
    return cov


# --------------------------------------------------------------------------- #
# Models that emit odd tokens
# --------------------------------------------------------------------------- #


def odd_ids(name: str) -> list[int]:
    """Ids of ``name`` a text reader finds hard: special and added tokens, byte tokens, tokens whose bytes are
    not valid UTF-8 (part of a character), whitespace-only tokens, and tokens with characters beyond U+2000
    (CJK, emoji, symbols)."""
    tb = token_bytes(name)
    out = []
    for i, (b, k) in enumerate(zip(tb.data, tb.kind)):
        if k != "normal":
            out.append(i)
            continue
        try:
            s = b.decode("utf-8")
        except UnicodeDecodeError:
            out.append(i)
            continue
        if s.isspace() or any(ord(c) > 0x2000 for c in s):
            out.append(i)
    return out


def oddify(model, name: str, factor: float = 3.0, keep: Sequence[int] = ()) -> None:
    """Scales the LM-head rows of :func:`odd_ids` (not ``keep``, e.g. eos) by ``factor`` in place, so a random
    model picks them often: its logits for them spread ``factor`` times wider."""
    ids = sorted(set(odd_ids(name)) - set(keep))
    with torch.no_grad():
        model.lm_head.weight[ids] *= factor


def prompts(indices: Sequence[int]) -> list[str]:
    """llama.cpp's tokenizer test texts (the same for every tokenizer) at ``indices``."""
    texts = [t for t, _ in vocab_tests("gpt-2")]
    return [texts[i] for i in indices]


# --------------------------------------------------------------------------- #
# Uncached reference of mogen.generate with guides reading text
# --------------------------------------------------------------------------- #


def decode(tok, ids: Sequence[int]) -> str:
    return tok.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)


def guide_prefix(tok) -> list[int]:
    """The special ids ``tok`` puts before a text (Llama-2's ``<s>``), found by encoding "a" with and without."""
    with_sp = list(tok("a", add_special_tokens=True)["input_ids"])
    without = list(tok("a", add_special_tokens=False)["input_ids"])
    for k in range(len(with_sp) - len(without) + 1):
        if with_sp[k: k + len(without)] == without:
            return with_sp[:k]
    return []


def guide_ids(tok, text: str) -> list[int]:
    """What a guide reads for ``text``: its prefix, then its tokenizer's encoding of the whole text."""
    return guide_prefix(tok) + list(tok(text, add_special_tokens=False)["input_ids"])


def prompt_text(tok, ids: Sequence[int]) -> tuple[str, bool]:
    """``(text, pending)`` of a prompt: the decoded prompt without a character its last (up to 4) ids leave
    incomplete, and whether ids were left out."""
    for cut in range(len(ids), max(len(ids) - 4, 0) - 1, -1):
        text = decode(tok, ids[:cut])
        if not text.endswith(REPLACEMENT):
            return text, cut < len(ids)
    return decode(tok, ids), False


@dataclass
class Events:
    """What the documented approximations did in a run, in row-steps (one token chosen for one live row).

    partial: the row's text ended inside a multi-byte character: no guide term that step.
    textless: the row's last token had no text (a special token): no guide term that step.
    unmapped: the chosen token has no guide token with its bytes: the guide had no opinion on it.
    merged: the chosen token v was mapped, but the guide's encoding of the new text is not its old ids plus
        m(v) (the guide re-tokenized, e.g. merged v into its last token): it scored v as a separate token.
    exact: the chosen token v was mapped and the guide's ids grew by exactly m(v).
    eos: the chosen token was the base's eos, mapped (the row ends).
    Every row-step is one of partial, textless, unmapped, merged, exact, eos.
    rewritten (counted apart): a byte-fallback run turned invalid and text the guide had read was taken back.
    retracted, full_reencodes (mogen's side, filled by :func:`generate_vs_reference`): guide ids the
        look-behind window retracted, and steps where it re-encoded a row's whole text instead.
    """

    steps: int = 0
    partial: int = 0
    textless: int = 0
    unmapped: int = 0
    merged: int = 0
    exact: int = 0
    eos: int = 0
    rewritten: int = 0
    retracted: int = 0
    full_reencodes: int = 0

    def add(self, other: "Events") -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


def _last_logits(model, ids: Sequence[int]) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=torch.tensor([list(ids)]), use_cache=False, logits_to_keep=1)
    return out.logits[0, -1].double()


def reference_generate(base, base_tok, guides, prompt_ids: Sequence[Sequence[int]], weights, steps: int, *,
                       beta: float = 1.0, eos: Optional[int] = None, pad: int = 0,
                       events: Optional[Events] = None) -> list[list[int]]:
    """Greedy decoding with proxy guides that read text through their own tokenizer (one tokenizer for all
    guides), every model re-run on the whole sequence each step, float64 scores.

    The contract of mogen.decoding.retokenize, written out: each step a row's text is ``decode(ids)``
    (``skip_special_tokens=True``, no clean-up) and its guide reads ``prefix + encode(text)``; when the row's
    last token left the text ending inside a character, or added no text, the guide term is 0 for the step
    (at the first step: when the prompt's last ids end inside a character). A guide scores base token ``v``
    through ``m = build_vocab_map(base, guide)``, 0 where ``m(v) = -1``::

        s(v) = log_softmax(z_b)(v) + beta * sum_i w_i * (log_softmax(z_ei) - log_softmax(z_ri))(m(v))

    Rows end at ``eos`` and are then padded with ``pad``. Returns the rows, prompts included.
    """
    from mogen.vocab import build_vocab_map

    gtok = guides[0].tokenizer
    assert all(g.tokenizer is gtok for g in guides)
    vmap = build_vocab_map(base_tok, gtok).long()
    mapped = vmap >= 0
    w = torch.as_tensor(weights, dtype=torch.float64)
    if w.dim() == 1:
        w = w.unsqueeze(0).expand(len(prompt_ids), -1)
    rows = [list(p) for p in prompt_ids]
    batch = len(rows)
    state = [prompt_text(base_tok, r) for r in rows]
    text = [t for t, _ in state]
    why = ["partial" if pending else None for _, pending in state]  # why a row has no guide term
    done = [False] * batch
    ev = events if events is not None else Events()
    for _ in range(steps):
        nxt = []
        before = {}
        for b in range(batch):
            if done[b]:
                nxt.append(pad)
                continue
            s = torch.log_softmax(_last_logits(base, rows[b])[: len(base_tok)], dim=-1)
            if why[b] is None:
                ids = guide_ids(gtok, text[b])
                before[b] = ids
                for i, g in enumerate(guides):
                    if float(w[b, i]) == 0.0:
                        continue
                    le = torch.log_softmax(_last_logits(g.expert, ids)[: len(gtok)] / g.temperature, dim=-1)
                    lr = torch.log_softmax(_last_logits(g.reference, ids)[: len(gtok)] / g.temperature, dim=-1)
                    diff = (le - lr)[vmap.clamp(min=0)]
                    s = s + beta * float(w[b, i]) * torch.where(mapped, diff, torch.zeros_like(diff))
            nxt.append(int(s.argmax()))
        for b in range(batch):
            if done[b]:
                rows[b].append(pad)
                continue
            v = nxt[b]
            scored = why[b] is None and int(vmap[v]) != -1  # the guide's term for v was its score of m(v)
            ev.steps += 1
            if why[b] is not None:
                setattr(ev, why[b], getattr(ev, why[b]) + 1)
            elif not scored:
                ev.unmapped += 1
            rows[b].append(v)
            if eos is not None and v == eos:
                done[b] = True
                ev.eos += scored
                continue
            full = decode(base_tok, rows[b])
            if full == decode(base_tok, rows[b][:-1]):
                why[b] = "textless"
            elif full.endswith(REPLACEMENT):
                why[b] = "partial"
            else:
                if not full.startswith(text[b]):
                    ev.rewritten += 1
                text[b], why[b] = full, None
            if scored:
                exact = why[b] is None and guide_ids(gtok, full) == before[b] + [int(vmap[v])]
                ev.exact += exact
                ev.merged += not exact
        if all(done):
            break
    return rows


# --------------------------------------------------------------------------- #
# Runs on tiny models sized to a pair
# --------------------------------------------------------------------------- #

MODEL = dict(hidden=16, layers=1, heads=2, max_positions=512)
# llama.cpp test texts: "Hello, y'all! How are you 😁 ?我想在apple工作1314151天～", " this is 🦙.cpp", "Cửa Việt",
# a run of newlines, spaces and tabs then emoji, Khmer, "ied 4 ½ months"; then "Äpfel" and an emoji ZWJ sequence.
PROMPTS = [32, 18, 43, 45, 21, 0]
MORE_PROMPTS = PROMPTS + [1, 22]
WEIGHTS = [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [2.0, -1.0], [1.0, 1.0], [3.0, 0.5], [0.5, 2.0], [-1.0, 2.0]]


def pair_models(base_name: str, guide_name: str, factor: float = 3.0):
    """``(base tokenizer, guide tokenizer, base, [two proxy guides])``: tiny random Llamas sized to each
    vocabulary, the base :func:`oddify`-ed (eos left alone) and with the base's eos."""
    from tiny_models import proxy_guide, tiny_llama

    bt, gt = real_tokenizer(base_name), real_tokenizer(guide_name)
    base = tiny_llama(len(bt), 0, eos_token_id=bt.eos_token_id, **MODEL)
    oddify(base, base_name, factor, keep=[bt.eos_token_id])
    guides = [proxy_guide(len(gt), 10, tokenizer=gt, **MODEL), proxy_guide(len(gt), 20, tokenizer=gt, **MODEL)]
    return bt, gt, base, guides


def prompt_rows(tok, indices: Sequence[int]) -> list[list[int]]:
    """The test texts at ``indices`` encoded by ``tok``, every other one with its special tokens (<s>)."""
    return [list(tok(t, add_special_tokens=k % 2 == 0)["input_ids"]) for k, t in enumerate(prompts(indices))]


def generate_vs_reference(pair, indices: Sequence[int] = PROMPTS, steps: int = 12, factor: float = 3.0) -> Events:
    """Greedy ``mogen.generate`` on a left-padded batch against :func:`reference_generate`; asserts the same
    tokens in every row and returns the reference's :class:`Events`, with mogen's own window statistics."""
    import mogen
    from mogen.decoding.generation import observe_steps
    from tiny_models import pad_rows

    bt, gt, base, guides = pair_models(*pair, factor=factor)
    rows = prompt_rows(bt, indices)
    ids, mask = pad_rows(rows, 0)
    weights = WEIGHTS[: len(rows)]
    seen = {}
    with observe_steps(lambda decoding, step: seen.update(group=decoding.cross[0])):
        out = mogen.generate(base, ids, mask, guides=guides, tokenizer=bt, weights=weights, beta=2.0,
                             max_new_tokens=steps, pad_token_id=0)
    events = Events()
    ref = reference_generate(base, bt, guides, rows, weights, steps, beta=2.0, eos=bt.eos_token_id, pad=0,
                             events=events)
    events.retracted = seen["group"].retracted
    events.full_reencodes = sum(c.full_reencodes for c in seen["group"].contexts)
    new = out[:, ids.shape[1]:].tolist()
    for b, (r, p) in enumerate(zip(ref, rows)):
        want = r[len(p):]
        assert new[b] == want, (pair, b, bt.convert_ids_to_tokens(new[b]), bt.convert_ids_to_tokens(want))
    return events


def search_vs_reference(pair, indices: Sequence[int] = (32, 18, 43), factor: float = 4.0,
                        tolerance: float = 1e-4) -> tuple[int, float]:
    """``mogen.search`` (W=2, kappa=2, L=4, 10 tokens; base and guided proposals) against
    tests/search_reference.py: every final beam's score, base log-probability and guide terms within
    ``tolerance``; then greedy guided chunks of one beam equal greedy ``mogen.generate``. Returns
    ``(beams checked, largest difference)``."""
    import mogen
    from search_reference import reference_beam
    from tiny_models import pad_rows

    bt, gt, base, guides = pair_models(*pair, factor=factor)
    rows = prompt_rows(bt, indices)
    ids, mask = pad_rows(rows, 0)
    weights = [[1.0 - 0.5 * j + 0.25 * b for j in range(2)] for b in range(len(rows))]
    checked, worst = 0, 0.0
    for proposal in ("base", "guided"):
        out = mogen.search(base, ids, mask, guides=guides, tokenizer=bt, weights=weights, beam_width=2, expansion=2,
                           chunk_length=4, max_new_tokens=10, proposal=proposal, temperature=1.5, beta=0.7,
                           pad_token_id=0, generator=torch.Generator().manual_seed(1), return_scores=True)
        for b, beams in enumerate(out.beams):
            for beam in beams:
                score, base_lp, terms = reference_beam(base, guides, rows[b], beam.tokens, weights[b],
                                                       base_tokenizer=bt, beta=0.7)
                diff = max(abs(beam.score - score), abs(beam.base_logprob - base_lp),
                           *(abs(x - y) for x, y in zip(beam.terms, terms)))
                assert diff < tolerance, (pair, proposal, b, bt.convert_ids_to_tokens(beam.tokens), diff)
                checked, worst = checked + 1, max(worst, diff)
    greedy = mogen.search(base, ids, mask, guides=guides, tokenizer=bt, weights=weights, beam_width=1, expansion=1,
                          chunk_length=4, max_new_tokens=10, proposal="guided", top_k=1, beta=0.7, pad_token_id=0)
    want = mogen.generate(base, ids, mask, guides=guides, tokenizer=bt, weights=weights, beta=0.7,
                          max_new_tokens=10, pad_token_id=0)
    assert torch.equal(greedy, want), pair
    return checked, worst
