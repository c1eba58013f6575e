"""One decoding step of a 7B-shaped base with two 0.5B-shaped guide pairs, against the base alone (``make gpu-check``).

Run: ``PYTHONPATH=python python benchmarks/gpu_decode.py [--device cuda] [--shapes full|tiny] [--no-write]``

Models are random (no download): the base has Llama-2-7B's shape (hidden 4096,
32 layers, 32 heads, MLP 11008, vocabulary 32000), each guide model Qwen2-0.5B's
(hidden 896, 24 layers, 14 query and 2 key/value heads, MLP 4864, tied
embeddings) with the base's vocabulary, so the guides' log-ratios fuse with the
base's logits in K1 with no vocabulary map. All are bf16, built on the device.

Step time: greedy decoding of a fixed number of tokens (no eos), timed at two
lengths; (t(long) - t(short)) / (long - short) removes the prefill and the
set-up. Each length is timed ``repeat`` times after a warm-up and the medians
are used. Rows: ``base.generate`` (the base alone), ``mogen.generate`` with the
two guide pairs (2 x expert + reference, weights 0.5 / 0.5), and one guide
model alone, whose step time shows what each of the four adds. The ratio
guided / base is compared with the design's goal: at most 1.35x.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "python") not in sys.path:
    sys.path.insert(0, str(ROOT / "python"))

import mogen  # noqa: E402
from mogen import _backend  # noqa: E402
from mogen.bench import markdown_table  # noqa: E402

GOAL = 1.35  # guided step time over base-only step time (the design's goal)


@dataclass(frozen=True)
class DecodeShapes:
    """Model sizes and run lengths; ``FULL`` on a GPU, ``TINY`` for the CPU smoke run."""
    base: dict
    guide: dict
    batches: tuple
    prompt: int
    short: int
    long: int
    repeat: int


LLAMA2_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=32, tie_word_embeddings=False)
QWEN2_05B = dict(vocab_size=32000, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True)
FULL = DecodeShapes(base=LLAMA2_7B, guide=QWEN2_05B, batches=(1, 8), prompt=128, short=4, long=36, repeat=3)
TINY = DecodeShapes(base=dict(LLAMA2_7B, vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=4),
                    guide=dict(QWEN2_05B, vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=2, num_key_value_heads=1),
                    batches=(2,), prompt=8, short=2, long=6, repeat=1)
SHAPES = {"full": FULL, "tiny": TINY}


def random_model(kind: str, sizes: dict, device: torch.device, seed: int) -> Any:
    """A random-init bf16 causal LM (``llama`` or ``qwen2``) built directly on ``device``; no eos, so
    greedy decoding always runs to its length."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    config = (LlamaConfig if kind == "llama" else Qwen2Config)(**sizes, max_position_embeddings=4096,
                                                              bos_token_id=None, eos_token_id=None, pad_token_id=0)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model.eval()


def n_params(model: Any) -> str:
    """Parameter count as '6.74B' / '494M'."""
    n = sum(p.numel() for p in model.parameters())
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def seconds(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of ``fn()``, the device drained before and after."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def step_seconds(generate: Callable[[int], object], device: torch.device, shapes: DecodeShapes) -> float:
    """Seconds per decoded token: the medians of ``generate(long)`` and ``generate(short)``, their
    difference over the tokens between (prefill and set-up cancel)."""
    generate(shapes.short)  # warm-up: kernels loaded, allocator grown
    short, long = [], []
    for _ in range(shapes.repeat):
        short.append(seconds(lambda: generate(shapes.short), device))
        long.append(seconds(lambda: generate(shapes.long), device))
    return max(statistics.median(long) - statistics.median(short), 1e-9) / (shapes.long - shapes.short)


def decoders(base: Any, guides: List[Any], lone: Any, ids: torch.Tensor) -> dict:
    """name -> generate(n): greedy, exactly n new tokens."""
    fixed = lambda n: dict(do_sample=False, max_new_tokens=n, min_new_tokens=n, pad_token_id=0)  # noqa: E731

    def base_only(n: int) -> Any:
        with torch.no_grad():
            return base.generate(ids, **fixed(n))

    def guided(n: int) -> Any:
        return mogen.generate(base, ids, guides=guides, weights=[0.5, 0.5], **fixed(n))

    def one_guide_model(n: int) -> Any:
        with torch.no_grad():
            return lone.generate(ids, **fixed(n))

    return {"base.generate (base only)": base_only, "mogen.generate, 2 guide pairs": guided,
            "one guide model alone": one_guide_model}


def run(device: torch.device, shapes: DecodeShapes) -> List[str]:
    """Builds the models on ``device``, times every decoder at every batch size; the results file's body."""
    t0 = time.perf_counter()
    base = random_model("llama", shapes.base, device, 0)
    guides = [mogen.ProxyGuide(random_model("qwen2", shapes.guide, device, 10 + 2 * i),
                               random_model("qwen2", shapes.guide, device, 11 + 2 * i)) for i in range(2)]
    built = time.perf_counter() - t0
    rows = []
    for batch in shapes.batches:
        ids = torch.randint(5, shapes.base["vocab_size"], (batch, shapes.prompt),
                            generator=torch.Generator().manual_seed(batch)).to(device)
        times = {name: step_seconds(gen, device, shapes)
                 for name, gen in decoders(base, guides, guides[0].expert, ids).items()}
        t_base = times["base.generate (base only)"]
        for name, t in times.items():
            ratio = t / t_base
            verdict = "" if "2 guide" not in name else (" (goal met)" if ratio <= GOAL else " (goal not met)")
            rows.append({"batch": batch, "decoder": name, "ms/step": f"{t * 1e3:.2f}",
                         "tokens/s": f"{batch / t:.0f}", "vs base": f"{ratio:.2f}x{verdict}"})
    kernels = "compiled" if _backend.has_kernels_for(device) else "pure-PyTorch reference"
    return [device_line(device),
            f"base: Llama-shaped, {n_params(base)} parameters; guides: 2 pairs of Qwen2-shaped models, "
            f"{n_params(guides[0].expert)} each; bf16, random weights built on the device in {built:.0f} s; "
            f"K1 (mogen.ops): {kernels}",
            f"prompt {shapes.prompt} tokens; step time = (t({shapes.long}) - t({shapes.short})) / "
            f"{shapes.long - shapes.short} new tokens, medians of {shapes.repeat}; goal: guided <= {GOAL}x base",
            "", *markdown_table(rows), "", f"({time.perf_counter() - t0:.0f} s in all.)"]


def device_line(device: torch.device) -> str:
    """The device, and on CUDA the GPU's name and driver, with torch's version and its CUDA's."""
    from gpu_kernels import driver_version

    gpu = f" ({torch.cuda.get_device_name(device)}, driver {driver_version()})" if device.type == "cuda" else ""
    return f"device: {device}{gpu}; torch {torch.__version__}, CUDA {torch.version.cuda}"


def main(argv: Optional[List[str]] = None) -> int:
    from gpu_kernels import bench_main

    return bench_main("gpu_decode", "## GPU decode step: 7B-shaped base, two 0.5B-shaped guide pairs", run, SHAPES,
                      __doc__.split("\n\n")[0], argv)


if __name__ == "__main__":
    sys.exit(main())
