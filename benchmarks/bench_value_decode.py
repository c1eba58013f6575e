"""End-to-end decode with an explicit value guide: full head vs top-k (kernel K2).

Run: ``PYTHONPATH=python:. python benchmarks/bench_value_decode.py [--quick] [--device cpu]``

A random-init Llama base and a value model sharing a Qwen-sized vocabulary
(V = 151936), greedy, no eos, so every run decodes the same number of tokens:

- ``base.generate``: the base alone;
- value guide, full head: every step runs the value model's |V|-wide head
  (``gamma * Q`` added to every token, MAGE eq. 25 exactly);
- value guide, ``top_k=k``: the value model runs its backbone only and K2
  values the k best candidates of the base (ARGS-style top-k decoding).

It reports tokens/s and ms per step (new tokens over wall time, prefill
included) and the share of wall time outside the models' forward passes, in
``benchmarks/results/value_decode_<device>.md``.
"""

from __future__ import annotations

import argparse
import sys

import torch

from bench_decode import llama, n_params, timed_share

import mogen  # noqa: E402
from mogen import _backend  # noqa: E402
from mogen.bench import markdown_table  # noqa: E402
from mogen.value import make_value_model  # noqa: E402
from results_file import write_results  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="fewer tokens and repeats (smoke run)")
    args = ap.parse_args()
    device, repeat = args.device, 1 if args.quick else 3
    vocab, batch, prompt, steps = 151936, 4, 16, 8 if args.quick else 32
    base = llama(vocab, 256, 4, 4, 0, device)
    value = make_value_model(llama(vocab, 512, 2, 8, 1, device), reset_head=False)
    ids = torch.randint(5, vocab, (batch, prompt), generator=torch.Generator().manual_seed(0)).to(device)
    kernels = "compiled kernels" if _backend.has_kernels_for(torch.device(device)) else "pure-PyTorch reference"
    header = (f"setup: device {device}, mogen.ops: {kernels}; base {n_params(base):.1f}M, "
              f"value model {n_params(value):.1f}M (head {vocab} x 512), V = {vocab}, batch {batch}, prompt {prompt}, "
              f"{steps} new tokens per row")
    print(header, flush=True)

    def run_base():
        with torch.no_grad():
            return base.generate(ids, do_sample=False, max_new_tokens=steps, min_new_tokens=steps, pad_token_id=0)

    def run_value(top_k):
        guide = mogen.ValueGuide(value, top_k=top_k)
        return lambda: mogen.generate(base, ids, guides=[guide], max_new_tokens=steps, gamma=1.0)

    cases = [("base.generate (base only)", run_base, [base]),
             ("value guide, full head", run_value(None), [base, value]),
             # top-k mode runs the value model's backbone (value.model) and never its head
             ("value guide, top_k=20 (K2)", run_value(20), [base, value.model]),
             ("value guide, top_k=200 (K2)", run_value(200), [base, value.model])]
    rows, tps = [], {}
    for what, fn, models in cases:
        t, share = timed_share(fn, models, device, repeat)
        new = batch * steps
        tps[what] = new / t
        rows.append({"decoder": what, "tokens/s": f"{new / t:.1f}", "ms/step": f"{1e3 * t / steps:.2f}",
                     "outside forward": f"{100 * share:.1f}%"})
        print(f"  {what:<32} {new / t:8.1f} tokens/s  {1e3 * t / steps:8.2f} ms/step  outside forward "
              f"{100 * share:5.1f}%", flush=True)
    table = markdown_table(rows)
    body = [header, "", *table, "",
            "tokens/s counts new tokens over wall time (prefill included); 'outside forward' is the share",
            "of wall time not spent inside a model's forward (top-k: the value model's backbone), which",
            "includes K2 and the fusion.", "",
            f"- value guide top_k=20 vs full head: {tps[cases[2][0]] / tps[cases[1][0]]:.2f}x the tokens/s; "
            f"top_k=20 vs base.generate: {tps[cases[2][0]] / tps[cases[0][0]]:.2f}x."]
    print("\n" + "\n".join(body))
    if not args.quick:
        print("wrote", write_results(f"value_decode_{device.split(':')[0]}", "## value-guided decode", body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
