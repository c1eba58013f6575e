"""Chunk-level beam search: mogen.search against a naive search that re-scores every candidate from scratch.

Run: ``PYTHONPATH=python:. python benchmarks/bench_search.py [--quick] [--no-medium] [--no-demo]``

Both searches run the same algorithm (MPAW Alg. 1 with mogen's pool rules,
:func:`mogen.decoding.beams.select_beams`) with the same models, the same
per-prompt generator and the same proposal code, so they draw the same
candidates; they differ in how the work is done:

- ``mogen.search``: all beams x expansions in one batch, every model keeps a
  KV cache per row across rounds (reordered by index when beams are kept),
  every candidate is scored from the forward passes that produced it;
- ``naive``: the approach of the public weak-to-strong search implementation:
  every round the base re-reads each row's whole prefix to sample its chunk
  (a KV cache only within the chunk), then every scorer (base, experts,
  references) re-reads every candidate's whole text, one batched forward
  per model; guides with their own tokenizer re-tokenize the whole text.

Each measurement runs in a child process (``--child``) so peak memory
(``ru_maxrss``) belongs to it alone; the parent checks that both searches
returned the same best sequence and prints / writes the table
(``benchmarks/results/search_cpu.md``).

Models: a medium random-init Llama base (~58M parameters, vocabulary 32000)
with two proxy guides of small Llamas sharing its ids; and the demo models
(byte-level base, guides with their own metaspace tokenizer).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_decode import llama, n_params  # noqa: E402
from results_file import write_results  # noqa: E402


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> bool:
    """Reset this process's peak RSS (VmHWM) so the search's own peak is measured, not the loading's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------- #
# models
# --------------------------------------------------------------------------- #


def medium_models():
    """A ~58M base and two guides (2 x expert/reference of ~8.6M) sharing its 32000 ids; no eos."""
    import mogen

    base = llama(32000, 512, 8, 8, 0, "cpu")
    guides = [mogen.ProxyGuide(llama(32000, 128, 2, 4, 10 + 2 * i, "cpu"), llama(32000, 128, 2, 4, 11 + 2 * i, "cpu"))
              for i in range(2)]
    for m in [base] + [x for g in guides for x in (g.expert, g.reference)]:
        m.generation_config.eos_token_id = None  # random init: every beam runs to max_new_tokens
    return base, None, guides


def demo_models():
    import mogen
    from mogen.demo import corpus, load_demo_models

    models = load_demo_models()
    models.base.generation_config.eos_token_id = None  # every beam runs to max_new_tokens, as for the medium model
    guides = [mogen.ProxyGuide(models.experts[name], models.reference, tokenizer=models.guide_tokenizer)
              for name, _ in corpus.OBJECTIVES]
    return models.base, models.base_tokenizer, guides


# --------------------------------------------------------------------------- #
# the naive search
# --------------------------------------------------------------------------- #


def _batch_logprobs(model, seqs: list[list[int]], starts: list[int], width: int, temperature: float = 1.0):
    """Per sequence, ``sum_{t >= start} log p(seq_t | seq_<t)`` from one right-padded forward, no cache."""
    longest = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), longest, dtype=torch.long)
    mask = torch.zeros(len(seqs), longest, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1, :width].double()
    lp = torch.log_softmax(logits / temperature, dim=-1).gather(2, ids[:, 1:].unsqueeze(2)).squeeze(2)
    pos = torch.arange(1, longest).unsqueeze(0)
    keep = (pos >= torch.tensor(starts).unsqueeze(1)) & (mask[:, 1:] == 1)
    return (lp * keep).sum(dim=1)


def _complete_text(tok, ids: list[int]) -> str:
    for k in range(len(ids), -1, -1):
        text = tok.decode(ids[:k], skip_special_tokens=True, clean_up_tokenization_spaces=False)
        if not text.endswith("\ufffd"):
            return text
    return ""


def _guide_term(g, prompt: list[int], cands: list[tuple], base_tok, vocab: int) -> torch.Tensor:
    """``log pi_e(y|x) - log pi_r(y|x)`` of every candidate, each model re-reading the whole text."""
    if g.tokenizer is None:
        seqs = [prompt + list(c) for c in cands]
        starts = [len(prompt)] * len(seqs)
        width = vocab
    else:
        from mogen.decoding.retokenize import special_prefix

        pre = special_prefix(g.tokenizer)
        enc = lambda ids: pre + g.tokenizer(_complete_text(base_tok, ids), add_special_tokens=False)["input_ids"]  # noqa: E731
        gx = enc(prompt)
        seqs = [enc(prompt + list(c)) for c in cands]
        # log pi(y|x) = LP(ids(x + y)) - LP(ids(x)): score everything and subtract the prompt's own total
        starts = [1] * len(seqs)
        width = len(g.tokenizer)
    out = []
    for model in (g.expert, g.reference):
        lp = _batch_logprobs(model, seqs, starts, width, g.temperature)
        if g.tokenizer is not None:
            lp = lp - _batch_logprobs(model, [gx], [1], width, g.temperature)
        out.append(lp)
    return out[0] - out[1]


def _sample_chunk(base, prompt, rows, steps, selector, proposal, eos, vocab):
    """Every row re-reads its whole prefix (no cache across rounds), then samples ``steps`` tokens."""
    from transformers import DynamicCache

    ids = torch.tensor([prompt + list(r) for r in rows])
    cache = DynamicCache(config=base.config)
    logits = base(input_ids=ids, cache=cache, use_cache=True).logits[:, -1, :vocab]
    alive = torch.ones(len(rows), dtype=torch.bool)
    out = []
    for s in range(steps):
        step = proposal.step(logits)
        tok = selector(step.full, step.topk).masked_fill(~alive, 0)
        if eos is not None:
            alive = alive & ~torch.isin(tok, eos)
        out.append(tok)
        if s == steps - 1 or not bool(alive.any()):
            break
        logits = base(input_ids=tok.unsqueeze(1), cache=cache, use_cache=True).logits[:, -1, :vocab]
    chunk = torch.stack(out, 1).tolist()
    cands = []
    for r, c in zip(rows, chunk):
        if eos is not None and any(t in eos.tolist() for t in c):
            c = c[: next(i for i, t in enumerate(c) if t in eos.tolist()) + 1]
        cands.append((tuple(r) + tuple(c), eos is not None and c[-1] in eos.tolist()))
    return cands


def naive_search(base, prompt: list[int], guides, weights, *, tokenizer, beam_width, expansion, chunk_length,
                 max_new_tokens, seed, temperature=1.0, on_round=None):
    """MPAW Alg. 1 for one prompt with no cache across rounds; returns the final beams (best first)."""
    from mogen.decoding.beams import Beam, prompt_generators, select_beams
    from mogen.decoding.session import base_vocab_size, special_ids
    from mogen.decoding.sampling import TokenSelector
    from mogen.decoding.terms import Fusion

    vocab = base_vocab_size(base, tokenizer)
    eos, _ = special_ids(base, None, None, torch.device("cpu"))
    gen = prompt_generators(torch.Generator().manual_seed(seed), 1, torch.device("cpu"))[0]
    selector = TokenSelector(vocab, do_sample=True, temperature=temperature, generator=gen)
    proposal = Fusion([], torch.zeros(0), beta=1.0, gamma=1.0, value_top_k=None)
    live, kept, produced, sampled = [()] * (beam_width * expansion), [], 0, 0
    while True:
        steps = min(chunk_length, max_new_tokens - produced)
        cands = _sample_chunk(base, prompt, live, steps, selector, proposal, eos, vocab)
        done = max(len(c) for c, _ in cands) - produced  # steps actually run (all rows may end early)
        produced += steps
        sampled += len(cands) * done
        seqs = [prompt + list(c) for c, _ in cands]
        base_lp = _batch_logprobs(base, seqs, [len(prompt)] * len(seqs), vocab)
        terms = [_guide_term(g, prompt, [c for c, _ in cands], tokenizer, vocab) for g in guides]
        score = base_lp + sum(w * t for w, t in zip(weights, terms))
        beams = [Beam(c, float(score[r]), float(base_lp[r]), tuple(float(t[r]) for t in terms), fin, r)
                 for r, (c, fin) in enumerate(cands)]
        kept = select_beams([b for b in kept if b.finished], beams, beam_width)
        if on_round is not None:
            on_round(sampled)
        live = [b.tokens for b in kept if not b.finished for _ in range(expansion)]
        if produced >= max_new_tokens or not live:
            return kept


# --------------------------------------------------------------------------- #
# one measurement (child process) and the table (parent)
# --------------------------------------------------------------------------- #


def _prompt(spec, tokenizer) -> list[int]:
    if tokenizer is None:
        g = torch.Generator().manual_seed(1)
        return torch.randint(5, 32000, (spec["prefix"],), generator=g).tolist()
    from mogen.demo import corpus

    return tokenizer(corpus.PROMPTS[0], add_special_tokens=False)["input_ids"]


def child(spec: dict) -> dict:
    """Run one search as ``spec`` says; time every round; peak memory of this process."""
    import mogen

    torch.set_num_threads(spec["threads"])
    base, tok, guides = medium_models() if spec["model"] == "medium" else demo_models()
    prompt = _prompt(spec, tok)
    shape = dict(beam_width=spec["W"], expansion=spec["kappa"], chunk_length=spec["L"],
                 max_new_tokens=spec["new"])
    stamps: list[float] = []
    counted: list[int] = []
    reset = _reset_peak()
    rss_before = _status_mb("VmRSS")
    t0 = time.perf_counter()
    with torch.no_grad():
        if spec["method"] == "mogen":
            out = mogen.search(base, torch.tensor([prompt]), guides=guides, tokenizer=tok, weights=spec["weights"],
                               generator=torch.Generator().manual_seed(spec["seed"]), return_scores=True,
                               on_round=lambda r: (stamps.append(time.perf_counter()), counted.append(r.tokens)),
                               **shape)
            beams = out.beams[0]
        else:
            beams = naive_search(base, prompt, guides, spec["weights"], tokenizer=tok, seed=spec["seed"],
                                 on_round=lambda n: (stamps.append(time.perf_counter()), counted.append(n)),
                                 **shape)
    wall = time.perf_counter() - t0
    rounds = [b - a for a, b in zip([t0] + stamps[:-1], stamps)]
    peak = _status_mb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"wall": wall, "rounds": rounds, "candidate_tokens": counted[-1], "best": list(beams[0].tokens),
            "score": beams[0].score, "rss_before_mb": rss_before, "peak_mb": peak}


def run_child(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"child {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _round_ms(res: dict) -> float:
    """Median time of the rounds after the first (which also holds the prefill), in ms."""
    later = res["rounds"][1:] or res["rounds"]
    return 1e3 * statistics.median(later)


def _md_table(rows: list[dict]) -> list[str]:
    cols = list(rows[0])
    width = [max(len(c), *(len(str(r[c])) for r in rows)) for c in cols]
    line = lambda xs: "| " + " | ".join(str(x).rjust(w) for x, w in zip(xs, width)) + " |"  # noqa: E731
    return [line(cols), "|" + "|".join("-" * (w + 2) for w in width) + "|"] + [line([r[c] for c in cols]) for r in rows]


def medium(args, base_spec: dict, lines: list[str]) -> list[dict]:
    rows = []
    per_round = {}
    for prefix in args.prefixes:
        for method in ("mogen", "naive"):
            new = 40 if method == "mogen" else 30
            res = run_child({**base_spec, "model": "medium", "method": method, "prefix": prefix, "new": new})
            per_round[method, prefix] = _round_ms(res)
            print(f"  medium {method:<5} prefix {prefix:>4}: {per_round[method, prefix]:9.1f} ms per round "
                  f"(rounds: {', '.join(f'{1e3 * t:.0f}' for t in res['rounds'])} ms)", flush=True)
    for method in ("mogen", "naive"):
        row = {"model": "medium", "search": method}
        for prefix in args.prefixes:
            row[f"ms/round @{prefix}"] = f"{per_round[method, prefix]:.0f}"
        lo, hi = min(args.prefixes), max(args.prefixes)
        row[f"@{hi} / @{lo}"] = f"{per_round[method, hi] / per_round[method, lo]:.2f}x"
        rows.append(row)
    lines += ["", "### medium: time per chunk round as the prefix grows (W=4, kappa=4, L=10, batch 1)", "",
              *_md_table(rows), "",
              "Rounds after the first (which also holds the prefill): mogen 3 rounds (40 new tokens), naive 2 (30)."]
    return rows


def throughput(model: str, spec: dict, lines: list[str], title: str) -> None:
    results = {m: run_child({**spec, "model": model, "method": m}) for m in ("mogen", "naive")}
    rows = []
    for m, res in results.items():
        rows.append({"search": m, "tokens/s": f"{res['candidate_tokens'] / res['wall']:.1f}",
                     "wall s": f"{res['wall']:.1f}", "peak RSS MB": f"{res['peak_mb']:.0f}",
                     "peak - RSS after loading MB": f"{res['peak_mb'] - res['rss_before_mb']:.0f}"})
        print(f"  {model} {m:<5}: {rows[-1]['tokens/s']} tokens/s, {res['wall']:.1f}s, peak {res['peak_mb']:.0f} MB "
              f"(+{res['peak_mb'] - res['rss_before_mb']:.0f} MB over the loaded models)", flush=True)
    speed = results["naive"]["wall"] / results["mogen"]["wall"]
    same = results["mogen"]["best"] == results["naive"]["best"]
    lines += ["", f"### {title}", "", *_md_table(rows), "",
              f"mogen / naive tokens/s: {speed:.1f}x; same best sequence: {'yes' if same else 'NO'} "
              f"(best scores {results['mogen']['score']:.4f} vs {results['naive']['score']:.4f})."]
    print(f"  {model}: mogen {speed:.1f}x the naive search's tokens/s; same best sequence: {same}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="short runs (smoke test), nothing written")
    ap.add_argument("--no-medium", action="store_true")
    ap.add_argument("--no-demo", action="store_true")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    threads = torch.get_num_threads()
    args.prefixes = (32, 128) if args.quick else (32, 128, 512)
    lines = ["setup: CPU, fp32"]
    spec = {"W": 4, "kappa": 4, "L": 10, "seed": 0, "threads": threads, "weights": [0.5, 0.5]}
    if not args.no_medium:
        base, _, guides = medium_models()
        sizes = f"medium: base {n_params(base):.1f}M, guides 2 x (expert + reference) of {n_params(guides[0].expert):.1f}M"
        print(sizes, flush=True)
        lines += ["", sizes + "."]
        del base, guides
        medium(args, spec, lines)
        new = 40 if args.quick else 256
        throughput("medium", {**spec, "prefix": 32, "new": new}, lines,
                   f"medium: W=4, kappa=4, L=10, {new} new tokens, prompt 32 tokens")
    if not args.no_demo:
        new = 24 if args.quick else 96
        throughput("demo", {**spec, "L": 8, "prefix": 0, "new": new}, lines,
                   f"demo models (guides with their own tokenizer): W=4, kappa=4, L=8, {new} new tokens")
    lines += ["", "tokens/s counts every candidate token sampled (W x kappa rows x tokens) over the wall time of the",
              "whole search (prefill included); peak RSS is the child process's VmHWM, reset after the models are",
              "loaded (ru_maxrss where the reset is not allowed); no eos, so every beam runs to the last token."]
    print("\n" + "\n".join(lines))
    if not args.quick:
        print("wrote", write_results("search_cpu", "## chunk-level beam search: mogen.search vs a naive search", lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
