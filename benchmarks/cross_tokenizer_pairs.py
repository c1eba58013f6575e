"""Cross-tokenizer decoding on the real tokenizers: checks it and writes what it measured (#18 item 2).

Run: ``PYTHONPATH=python:. python benchmarks/cross_tokenizer_pairs.py [--no-decode]``

Needs the real tokenizers (``make tokenizers``). Two results files, each written only when every check behind
it passed (an AssertionError stops the script first):

- ``benchmarks/results/vocab_coverage.md``: for all 42 ordered pairs of the seven tokenizers,
  ``mogen.vocab.build_vocab_map`` is checked against the bytes each token stands for, read by
  tests/real_pairs.py's own code (no map entry may join different bytes; special tokens only join special
  tokens), and its coverage is counted.
- ``benchmarks/results/cross_tokenizer_pairs.md`` (skipped by ``--no-decode``): for the pairs of
  tests/real_pairs.PAIRS, greedy ``mogen.generate`` with two proxy guides reading text through their own
  tokenizer must equal the uncached reference (tests/real_pairs.reference_generate) token for token, and
  ``mogen.search`` beams must score as tests/search_reference.py does; the table counts how often the
  documented approximations applied. The same checks, smaller, are tests/test_real_pairs.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for sub in ("python", "tests", "benchmarks"):
    if str(ROOT / sub) not in sys.path:
        sys.path.insert(0, str(ROOT / sub))

import torch  # noqa: E402

from real_pairs import (ALL_PAIRS, MORE_PROMPTS, PAIRS, SCHEME, Events, generate_vs_reference,  # noqa: E402
                        search_vs_reference, vocab_report)
from real_tokenizers import NAMES, real_tokenizer  # noqa: E402
from results_file import write_results  # noqa: E402


def coverage_body() -> list[str]:
    reports = {pair: vocab_report(*pair) for pair in ALL_PAIRS}
    for (b, g), c in reports.items():
        assert c.exact_mapped == c.exact, f"{b} -> {g}: {c.exact - c.exact_mapped} same-bytes tokens unmapped"
        assert c.mapped == c.exact_mapped + c.specials_mapped
    head = "| base \\ guide | " + " | ".join(NAMES) + " |"
    lines = ["Share of the base's vocabulary that `build_vocab_map(base, guide)` maps (row: base, column: guide).",
             "", head, "|---|" + "---:|" * len(NAMES)]
    for b in NAMES:
        cells = ["—" if b == g else f"{100 * reports[b, g].mapped / reports[b, g].size:.1f}%" for g in NAMES]
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    lines += ["", "| tokenizer | scheme | vocabulary (`len`) | special tokens | non-special added tokens |",
              "|---|---|---:|---:|---:|"]
    for n in NAMES:
        tok = real_tokenizer(n)
        added = tok.added_tokens_decoder.values()
        lines.append(f"| {n} | {SCHEME[n]} | {len(tok)} | {sum(a.special for a in added)} | "
                     f"{sum(not a.special for a in added)} |")
    specials = sum(c.specials_mapped for c in reports.values())
    lines += ["", f"In all {len(reports)} ordered pairs, every entry joins two tokens with the same bytes (read by "
              "the test's own code: the GPT-2 byte table, metaspace `▁` as a space, `<0xNN>` byte tokens, added "
              "tokens by content) or two special tokens (bos, eos, pad, unk by role, other specials by name; "
              f"{specials} entries over all pairs), and every base token with a same-bytes guide token is mapped: "
              "100% in every pair. The rest of each vocabulary has no single guide token with its bytes (a word "
              "the guide's merges never built, part of a UTF-8 character that a byte-fallback guide can only "
              "spell with several byte tokens, a special token without counterpart); `fallback=\"first_subtoken\"` "
              "maps those to the first token of the guide's encoding instead."]
    return lines


def decode_body() -> list[str]:
    lines = ["| base | guide | row-steps | guide term 0: partial character | guide term 0: after a token without "
             "text | chosen token unmapped | chosen token re-tokenized | exact | eos | byte runs rewritten | "
             "guide ids retracted | full re-encodings | beams rescored | largest score difference |",
             "|---|---|" + "---:|" * 12]
    total = Events()
    for pair in PAIRS:
        t0 = time.perf_counter()
        ev = generate_vs_reference(pair, MORE_PROMPTS, 24, factor=4.0)
        total.add(ev)
        beams, worst = search_vs_reference(pair)
        lines.append(f"| {pair[0]} | {pair[1]} | {ev.steps} | {ev.partial} | {ev.textless} | {ev.unmapped} | "
                     f"{ev.merged} | {ev.exact} | {ev.eos} | {ev.rewritten} | {ev.retracted} | {ev.full_reencodes} | "
                     f"{beams} | {worst:.1e} |")
        print(f"{pair[0]} -> {pair[1]}: {ev}, {beams} beams ({time.perf_counter() - t0:.1f} s)", flush=True)
    share = lambda n: f"{100 * n / total.steps:.1f}%"  # noqa: E731
    lines += ["", f"Greedy `mogen.generate` equals the uncached reference token for token in every pair: "
              f"{len(MORE_PROMPTS)} of llama.cpp's test texts as a left-padded batch (every other one with the "
              "base's special tokens), per-row weights of two proxy guides, 24 new tokens, tiny random Llamas "
              "(hidden 16, one layer) whose LM heads are stretched 4x on odd tokens (byte pieces, special and "
              "added tokens, runs of spaces, CJK, emoji). The reference re-encodes each row's whole text for the "
              "guides every step (tests/real_pairs.py). `mogen.search` (W=2, kappa=2, L=4, base and guided "
              "proposals) scores every final beam as an uncached float64 re-scoring does.",
              "",
              f"Over all {total.steps} row-steps: no guide term because the text ended inside a character "
              f"{share(total.partial)}, after a token without text {share(total.textless)}; the chosen token had "
              f"no guide counterpart {share(total.unmapped)}; the guide scored the chosen token as m(v) but then "
              f"read its text as other tokens {share(total.merged)}; exact {share(total.exact)}. Byte-fallback "
              f"runs rewritten: {total.rewritten}. The guides' look-behind windows retracted {total.retracted} ids "
              f"and fell back to re-encoding a whole text {total.full_reencodes} times (still exact: no word boundary "
              "within the last 32 guide tokens, as in Khmer, CJK and emoji runs without spaces)."]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-decode", action="store_true", help="only the vocabulary maps")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    body = coverage_body()
    print("wrote", write_results("vocab_coverage", "## Vocabulary maps between real tokenizers", body),
          f"({time.perf_counter() - t0:.1f} s)")
    if not args.no_decode:
        t0 = time.perf_counter()
        body = decode_body()
        print("wrote", write_results("cross_tokenizer_pairs", "## Cross-tokenizer decoding on real tokenizer pairs",
                                     body), f"({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
