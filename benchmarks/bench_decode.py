"""End-to-end decode benchmark: mogen.generate vs base-only generate vs a naive loop.

Run: ``PYTHONPATH=python:. python benchmarks/bench_decode.py [--quick] [--device cpu]``

For a tiny and a medium (~60M parameters) random-init Llama base on the same
prompts (greedy, no eos, so every run decodes the same number of tokens):

- ``base.generate``: the base alone (transformers' own loop);
- ``mogen.generate``: the base steered by 2 proxy guides (4 small models);
- ``naive loop``: the same 5 models called one by one each step with their
  own KV caches, the fusion written in Python with torch ops
  (``log_softmax`` per model, weighted sum, ``argmax``), and a host check per
  step - what one writes without mogen;
- for the tiny base also ``mogen.generate`` with guides that have their own
  (metaspace) tokenizer while the base is byte-level.

It reports tokens/s (new tokens over wall time, prefill included) and, for
the two mogen rows and base.generate, the share of wall time spent outside the
models' forward passes (forward time measured with hooks on each model; CPU
execution is synchronous, on CUDA the hooks synchronise). The table is printed
and written to ``benchmarks/results/decode_<device>.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT))

import mogen  # noqa: E402
from mogen import _backend  # noqa: E402
from mogen.bench import markdown_table  # noqa: E402
from results_file import write_results  # noqa: E402


def llama(vocab: int, hidden: int, layers: int, heads: int, seed: int, device: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=int(hidden * 2.75) // 16 * 16,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      max_position_embeddings=1024, tie_word_embeddings=False)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval().to(device)


def n_params(model) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


class ForwardTimer:
    """Wall time spent inside the forward of the given models (hooks on each)."""

    def __init__(self, models, device: str):
        self.total = 0.0
        self._start: dict[int, float] = {}
        sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        self._handles = []
        for m in {id(m): m for m in models}.values():
            def pre(mod, *a, _sync=sync, **k):
                _sync()
                self._start[id(mod)] = time.perf_counter()

            def post(mod, *a, _sync=sync, **k):
                _sync()
                self.total += time.perf_counter() - self._start.pop(id(mod))

            self._handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]

    def remove(self):
        for h in self._handles:
            h.remove()


def naive_loop(base, guides, ids, weights, steps: int, beta: float = 1.0):
    """Per step: every model separately with its own cache, fusion in Python."""
    from transformers import DynamicCache

    models = [base] + [m for g in guides for m in (g.expert, g.reference)]
    caches = [DynamicCache(config=m.config) for m in models]
    batch, length = ids.shape
    tokens = ids
    step_in = ids
    positions = torch.arange(length, device=ids.device).unsqueeze(0).expand(batch, -1)
    out = []
    with torch.no_grad():
        for _ in range(steps):
            logits = [m(input_ids=step_in, position_ids=positions, cache=c, use_cache=True).logits[:, -1].float()
                      for m, c in zip(models, caches)]
            s = torch.log_softmax(logits[0], dim=-1)
            for i in range(len(guides)):
                s = s + beta * weights[i] * (torch.log_softmax(logits[1 + 2 * i], -1)
                                             - torch.log_softmax(logits[2 + 2 * i], -1))
            nxt = s.argmax(dim=-1)
            if int(nxt.max()) < 0:  # the per-step host check a naive loop does (e.g. eos)
                break
            out.append(nxt)
            step_in = nxt.unsqueeze(1)
            positions = positions[:, -1:] + 1
    return torch.cat([tokens, torch.stack(out, 1)], 1)


def best_of(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def timed_share(fn: Callable[[], object], models, device: str, repeat: int) -> tuple[float, float]:
    """(best wall time, share of that run's time outside the models' forward passes) of one decoder."""
    best, share, _ = timed_rounds({"run": (fn, models)}, device, repeat)["run"]
    return best, share


def timed_rounds(runs: dict[str, tuple[Callable[[], object], list]], device: str,
                 rounds: int) -> dict[str, tuple[float, float, float]]:
    """Per decoder: (best wall time, share of that run's time outside the models' forward passes, slowest wall
    time). Every round runs each decoder once, in an order that turns each round, so that all of them see the
    same drift of a shared machine; the first call of each is a warm-up."""
    for fn, _ in runs.values():
        fn()
    names = list(runs)
    best: dict[str, tuple[float, float, float]] = {n: (float("inf"), 0.0, 0.0) for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn, models = runs[name]
            timer = ForwardTimer(models, device)
            t0 = time.perf_counter()
            fn()
            wall = time.perf_counter() - t0
            timer.remove()
            low, share, high = best[name]
            best[name] = (wall, 1.0 - timer.total / wall, max(high, wall)) if wall < low else \
                (low, share, max(high, wall))
    return best


def bench_case(name: str, vocab: int, hidden: int, layers: int, heads: int, g_hidden: int, g_layers: int,
               batch: int, prompt: int, steps: int, repeat: int, device: str, rows: list, cross: bool) -> None:
    base = llama(vocab, hidden, layers, heads, 0, device)
    guides = [mogen.ProxyGuide(llama(vocab, g_hidden, g_layers, 4, 10 + 2 * i, device),
                               llama(vocab, g_hidden, g_layers, 4, 11 + 2 * i, device)) for i in range(2)]
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (batch, prompt), generator=gen).to(device)
    weights = [0.5, 0.5]
    all_models = [base] + [m for g in guides for m in (g.expert, g.reference)]
    new = batch * steps
    label = f"{name} (base {n_params(base):.1f}M, guides 2x2x{n_params(guides[0].expert):.1f}M)"
    print(f"\n{label}: batch {batch}, prompt {prompt}, {steps} new tokens per row", flush=True)

    def run_base():
        with torch.no_grad():
            return base.generate(ids, do_sample=False, max_new_tokens=steps, min_new_tokens=steps, pad_token_id=0)

    def run_mogen():
        return mogen.generate(base, ids, guides=guides, weights=weights, max_new_tokens=steps)

    def run_naive():
        return naive_loop(base, guides, ids, weights, steps)

    assert torch.equal(run_mogen(), run_naive()), "naive loop and mogen.generate disagree"
    runs = {"base.generate (base only)": (run_base, [base]),
            "mogen.generate, 2 guides": (run_mogen, all_models),
            "naive loop, 2 guides": (run_naive, all_models)}
    if cross:
        from mogen import tiny

        bl = tiny.byte_level_bpe(vocab_size=vocab)
        ms = tiny.metaspace_bpe()
        bl.padding_side = "left"
        cbase = llama(len(bl), hidden, layers, heads, 0, device)
        cguides = [mogen.ProxyGuide(llama(len(ms), g_hidden, g_layers, 4, 10 + 2 * i, device),
                                    llama(len(ms), g_hidden, g_layers, 4, 11 + 2 * i, device), tokenizer=ms)
                   for i in range(2)]
        text = tiny.synthetic_corpus(batch, seed=1)
        enc = bl([t[:prompt * 3] for t in text], return_tensors="pt", padding=True, truncation=True,
                 max_length=prompt)
        cids, cmask = enc["input_ids"].to(device), enc["attention_mask"].to(device)

        def run_cross():
            return mogen.generate(cbase, cids, cmask, guides=cguides, tokenizer=bl, weights=weights,
                                  max_new_tokens=steps)

        runs["mogen.generate, 2 own-tokenizer guides"] = (
            run_cross, [cbase] + [m for g in cguides for m in (g.expert, g.reference)])
    for what, (t, share, slowest) in timed_rounds(runs, device, repeat).items():
        rows.append({"model": name, "decoder": what, "tokens/s": f"{new / t:.1f}",
                     "ms/step": f"{1e3 * t / steps:.2f}", "slowest round": f"{1e3 * slowest / steps:.2f}",
                     "outside forward": f"{100 * share:.1f}%"})
        print(f"  {what:<40} {new / t:9.1f} tokens/s  {1e3 * t / steps:8.2f} ms/step (slowest round "
              f"{1e3 * slowest / steps:.2f})  outside forward {100 * share:5.1f}%", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="fewer tokens and repeats (smoke run)")
    ap.add_argument("--no-medium", action="store_true")
    args = ap.parse_args()
    repeat = 1 if args.quick else 5
    kernels = "compiled kernels" if _backend.has_kernels_for(torch.device(args.device)) else "pure-PyTorch reference"
    header = f"setup: device {args.device}, mogen.ops: {kernels}"
    print(header)
    rows: list[dict] = []
    bench_case("tiny", vocab=512, hidden=64, layers=2, heads=4, g_hidden=32, g_layers=2, batch=4, prompt=16,
               steps=16 if args.quick else 64, repeat=repeat, device=args.device, rows=rows, cross=True)
    if not args.no_medium:
        bench_case("medium", vocab=32000, hidden=512, layers=8, heads=8, g_hidden=128, g_layers=2, batch=4,
                   prompt=32, steps=8 if args.quick else 32, repeat=repeat, device=args.device, rows=rows,
                   cross=False)
    table = markdown_table(rows)
    speed = {(r["model"], r["decoder"]): float(r["tokens/s"]) for r in rows}
    ratios = ", ".join(f"{m} {speed[m, 'mogen.generate, 2 guides'] / speed[m, 'naive loop, 2 guides']:.2f}x"
                       for m in dict.fromkeys(r["model"] for r in rows))
    body = [header, "", *table, "", f"mogen.generate vs the naive loop (tokens/s, best rounds): {ratios}.", "",
            "tokens/s counts new tokens over wall time (prefill included), from the best of "
            f"{repeat} rounds; each round runs every",
            "decoder of a model once, in turning order, so that all see the same drift of the shared machine;",
            "'slowest round' shows that drift. 'outside forward' is the share of the best run's wall time not",
            "spent inside a model's forward (measured with hooks)."]
    print("\n" + "\n".join(body))
    if not args.quick:
        print("wrote", write_results(f"decode_{args.device.split(':')[0]}", "## decode", body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
