"""K1, K2 and K3 on one GPU against the HBM roofline measured in the same run (``make gpu-check``).

Run: ``PYTHONPATH=python python benchmarks/gpu_kernels.py [--device cuda] [--shapes full|tiny] [--no-write]``

The roofline is this GPU's device-to-device copy bandwidth, measured first on a
2 GiB copy (bytes read + bytes written per second). Every row states the bytes
the op cannot avoid (its inputs read once, its output written once) and reports:

- ``kernel us``: median of the compiled op, timed with CUDA events after a warm-up;
- ``eager us`` and ``speedup``: the same result in plain PyTorch ops;
- ``GB/s`` and ``% HBM``: those bytes over the kernel time, and that over the copy bandwidth;
- ``copy us`` and ``vs copy``: one copy moving the same number of bytes (half read,
  half written), timed the same way: the least any single launch of that size costs,
  launch overhead and caches included (small cases sit in L2 like the kernel's inputs).

Cases:

- K1 ``fused_log_ratio``: V_b = 151936 (Qwen2), 2 guides in bf16, B in {1, 8, 64},
  shared vocabulary or the last guide through a 128256-token map; and the greedy
  ``fused_log_ratio_topk(k=1)`` (its output is [B]: the bytes are the inputs only);
- K2 ``topk_value_scores``: a bf16 [151936, 4096] head, B in {1, 8, 64}, k = 50 (and
  200 at B = 64), L2 flushed before each call (a decoding step streams the model's
  weights between two calls); eager is the full head then a gather;
- K3 ``merge_tensors``: the merge kernel alone, 3 device tensors of 128M elements
  into one (bf16 and fp32); eager is the fp32 weighted sum in torch ops. And the
  whole CUDA merge path, ``merge_to_tensor`` from a checkpoint in the page cache into a
  device tensor, against the pinned host-to-device copy of the same bytes (its bound
  is the host link, not HBM: the kernel's own HBM traffic is small next to it).

``--shapes tiny --device cpu`` runs every case at toy sizes with ``perf_counter``
(the test suite's smoke run); rows that need the CUDA kernels say so there.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "python") not in sys.path:
    sys.path.insert(0, str(ROOT / "python"))

from mogen import ops, reference  # noqa: E402
from mogen.bench import (eager_value_bytes, eager_value_scores, fusion_bytes, fusion_inputs,  # noqa: E402
                         markdown_table, value_bytes)


@dataclass(frozen=True)
class KernelShapes:
    """Sizes of every case; ``FULL`` on a GPU, ``TINY`` for the CPU smoke run."""
    vocab: int
    guide_vocab: int
    batches: tuple
    hidden: int
    value_cases: tuple  # (B, k)
    merge_numel: int
    merge_file_numel: int
    copy_bytes: int
    flush_bytes: int
    iters: int


FULL = KernelShapes(vocab=151936, guide_vocab=128256, batches=(1, 8, 64), hidden=4096,
                    value_cases=((1, 50), (8, 50), (64, 50), (64, 200)), merge_numel=128 << 20,
                    merge_file_numel=64 << 20, copy_bytes=2 << 30, flush_bytes=256 << 20, iters=20)
TINY = KernelShapes(vocab=1000, guide_vocab=900, batches=(1, 3), hidden=64, value_cases=((2, 5),),
                    merge_numel=10_000, merge_file_numel=10_000, copy_bytes=1 << 20, flush_bytes=1 << 20, iters=3)
SHAPES = {"full": FULL, "tiny": TINY}


def fmt(x: float) -> str:
    """A rate or time with about three significant digits (tiny CPU cases and 4 TB/s alike)."""
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"


def elements(n: int) -> str:
    """An element count as 128M / 10k / 7."""
    return f"{n >> 20}M" if n >= 1 << 20 else f"{n // 1000}k" if n >= 1000 else str(n)


def median_time(fn: Callable[[], object], device: torch.device, iters: int, warmup: int = 2,
                before: Optional[Callable[[], object]] = None) -> float:
    """Median seconds of one ``fn()`` over ``iters`` calls after ``warmup`` calls.

    On CUDA each call sits between two events on the current stream, so the host's
    launch overhead is counted only where it stalls the GPU; ``before`` (a cache
    flush) runs ahead of the start event, untimed. On CPU: ``perf_counter``.
    """
    for _ in range(warmup):
        fn()
    times = []
    cuda = device.type == "cuda"
    for _ in range(iters):
        if before is not None:
            before()
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


class Roofline:
    """The copy bandwidth of this device (measured once) and copies of a given byte count."""

    def __init__(self, device: torch.device, copy_bytes: int, iters: int) -> None:
        self.device, self.iters = device, iters
        self._src = torch.empty(copy_bytes // 2, dtype=torch.uint8, device=device).fill_(1)
        self._dst = torch.empty_like(self._src)
        t = median_time(lambda: self._dst.copy_(self._src), device, iters)
        self.gbs = copy_bytes / t / 1e9  # bytes read + bytes written

    def copy_time(self, nbytes: int, before: Optional[Callable[[], object]] = None) -> float:
        """Seconds of one copy that reads ``nbytes / 2`` and writes ``nbytes / 2``."""
        n = max(1, min(nbytes // 2, self._src.numel()))
        src, dst = self._src[:n], self._dst[:n]
        return median_time(lambda: dst.copy_(src), self.device, self.iters, before=before)

    def row(self, case: str, nbytes: int, t_kernel: float, t_eager: Optional[float],
            before: Optional[Callable[[], object]] = None) -> dict:
        """One table row: the kernel's time and bytes against the roofline and a copy of the same bytes."""
        gbs = nbytes / t_kernel / 1e9
        t_copy = self.copy_time(nbytes, before)
        return {"case": case, "MB": f"{nbytes / 1e6:.2f}", "kernel us": f"{t_kernel * 1e6:.1f}",
                "eager us": "-" if t_eager is None else f"{t_eager * 1e6:.1f}",
                "speedup": "-" if t_eager is None else f"{t_eager / t_kernel:.1f}x",
                "GB/s": fmt(gbs), "% HBM": f"{gbs / self.gbs:.0%}", "copy us": f"{t_copy * 1e6:.1f}",
                "vs copy": f"{t_kernel / t_copy:.2f}x"}


def k1_rows(roof: Roofline, shapes: KernelShapes) -> List[dict]:
    """K1 fused_log_ratio (bf16, 2 guides, shared or mapped vocabulary) and its greedy k = 1 selection."""
    dev, rows = roof.device, []
    for batch in shapes.batches:
        for vocab in ("shared", "mapped"):
            gv = shapes.guide_vocab if vocab == "mapped" else None
            base, experts, refs, maps, w = fusion_inputs(batch, shapes.vocab, 2, gv, "bf16", str(dev), seed=batch)
            kernel = lambda: ops.fused_log_ratio(base, experts, refs, w, vocab_maps=maps)  # noqa: E731
            eager = lambda: reference.fused_log_ratio(base, experts, refs, w, vocab_maps=maps)  # noqa: E731
            torch.testing.assert_close(kernel(), eager(), atol=2e-4, rtol=1e-4)
            t_k, t_e = median_time(kernel, dev, shapes.iters), median_time(eager, dev, shapes.iters)
            rows.append(roof.row(f"K1 B={batch} {vocab}", fusion_bytes(base, experts, refs, maps), t_k, t_e))
        top1 = lambda: ops.fused_log_ratio_topk(base, experts, refs, w, 1, vocab_maps=maps)  # noqa: E731
        eager1 = lambda: reference.fused_log_ratio(base, experts, refs, w, vocab_maps=maps).argmax(-1)  # noqa: E731
        t_k, t_e = median_time(top1, dev, shapes.iters), median_time(eager1, dev, shapes.iters)
        rows.append(roof.row(f"K1 k=1 B={batch} mapped", fusion_bytes(base, experts, refs, maps, output=False),
                             t_k, t_e))
    return rows


def k2_rows(roof: Roofline, shapes: KernelShapes) -> List[dict]:
    """K2 topk_value_scores on a bf16 head built on the device, L2 flushed before each timed call."""
    dev, rows = roof.device, []
    g = torch.Generator(device=dev).manual_seed(0)
    weight = torch.randn(shapes.vocab, shapes.hidden, device=dev, dtype=torch.bfloat16, generator=g)
    bias = torch.randn(shapes.vocab, device=dev, dtype=torch.bfloat16, generator=g)
    flush_buf = torch.empty(shapes.flush_bytes, dtype=torch.uint8, device=dev)
    flush = lambda: flush_buf.fill_(0)  # noqa: E731  (writes more than the L2 holds)
    for batch, k in shapes.value_cases:
        hidden = torch.randn(batch, shapes.hidden, device=dev, dtype=torch.bfloat16, generator=g)
        ids = torch.rand(batch, shapes.vocab, device=dev, generator=g).topk(k, dim=-1).indices  # k distinct ids
        kernel = lambda: ops.topk_value_scores(hidden, weight, ids, bias)  # noqa: E731
        eager = lambda: eager_value_scores(hidden, weight, ids, bias)  # noqa: E731
        torch.testing.assert_close(kernel(), eager(), atol=0.05, rtol=0.02)  # eager rounds logits to bf16
        t_k = median_time(kernel, dev, shapes.iters, before=flush)
        t_e = median_time(eager, dev, shapes.iters, before=flush)
        row = roof.row(f"K2 B={batch} k={k}", value_bytes(hidden, weight, ids, bias), t_k, t_e, before=flush)
        row["case"] += f" (eager moves {eager_value_bytes(hidden, weight, ids, bias) / 1e6:.0f} MB)"
        rows.append(row)
    return rows


def k3_rows(roof: Roofline, shapes: KernelShapes) -> List[dict]:
    """K3's kernel alone on device tensors (3 sources into 1), bf16 and fp32; needs the CUDA build."""
    import mogen_ext

    if roof.device.type != "cuda" or not mogen_ext.has_cuda_kernels:
        return [{"case": "K3 merge_tensors", "MB": "-", "kernel us": "skipped: needs a GPU and the CUDA build",
                 "eager us": "-", "speedup": "-", "GB/s": "-", "% HBM": "-", "copy us": "-", "vs copy": "-"}]
    return [k3_case(roof, shapes, dtype) for dtype in (torch.bfloat16, torch.float32)]


def k3_case(roof: Roofline, shapes: KernelShapes, dtype: torch.dtype) -> dict:
    """One K3 row: ``merge_tensors`` of 3 random ``dtype`` tensors into a fourth (its buffers freed on return)."""
    import mogen_ext

    dev, coef = roof.device, [0.5, 0.3, 0.2]
    g = torch.Generator(device=dev).manual_seed(1)
    srcs = [torch.randn(shapes.merge_numel, device=dev, generator=g).to(dtype) for _ in coef]
    dst = torch.empty(shapes.merge_numel, device=dev, dtype=dtype)
    kernel = lambda: mogen_ext._C.merge_tensors(srcs, coef, dst)  # noqa: E731
    eager = lambda: sum(c * s.float() for c, s in zip(coef, srcs)).to(dtype)  # noqa: E731
    kernel()
    torch.testing.assert_close(dst.float(), eager().float(), atol=1e-2, rtol=1e-2)
    t_k, t_e = median_time(kernel, dev, shapes.iters), median_time(eager, dev, shapes.iters)
    nbytes = (len(srcs) + 1) * dst.numel() * dst.element_size()
    return roof.row(f"K3 3->1 {str(dtype).split('.')[-1]} {elements(shapes.merge_numel)}", nbytes, t_k, t_e)


def _write_sources(folder: Path, numel: int, coef: List[float]) -> List[Path]:
    """One bf16 checkpoint (a single tensor ``w``) per coefficient, read once so the page cache holds it."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(2)
    paths = []
    for i in range(len(coef)):
        path = folder / f"s{i}.safetensors"
        save_file({"w": torch.randn(numel, generator=g).to(torch.bfloat16)}, str(path))
        path.read_bytes()
        paths.append(path)
    return paths


def k3_file_rows(roof: Roofline, shapes: KernelShapes) -> List[dict]:
    """The whole CUDA merge path: ``merge_to_tensor`` from page-cached checkpoints into a device tensor.

    Its bound is the host side (page cache read into pinned staging, then the host-to-device
    link), so the row compares it with a pinned host-to-device copy of the source bytes.
    """
    import mogen_ext
    from mogen.merging.io import open_checkpoint

    dev, coef, numel = roof.device, [0.5, 0.3, 0.2], shapes.merge_file_numel
    with tempfile.TemporaryDirectory(prefix="mogen-gpu-k3-") as tmp:
        cks = [open_checkpoint(p) for p in _write_sources(Path(tmp), numel, coef)]
        srcs = [(ck.tensors["w"].reader, ck.tensors["w"].begin, ck.tensors["w"].dtype) for ck in cks]
        dst = torch.empty(numel, dtype=torch.bfloat16, device=dev)
        staging = mogen_ext._C.MergeStaging()
        run = lambda: mogen_ext._C.merge_to_tensor(srcs, coef, dst, staging)  # noqa: E731
        t = median_time(run, dev, max(3, shapes.iters // 4), warmup=1)
        for ck in cks:
            ck.close()
    src_bytes = len(coef) * numel * 2
    host = torch.empty(src_bytes, dtype=torch.uint8, pin_memory=dev.type == "cuda")
    target = torch.empty(src_bytes, dtype=torch.uint8, device=dev)
    link = median_time(lambda: target.copy_(host, non_blocking=True), dev, max(3, shapes.iters // 4))
    gbs = src_bytes / t / 1e9
    bound = "pinned H2D" if dev.type == "cuda" else "host copy"
    return [{"case": f"K3 merge_to_tensor 3 bf16 files -> {dev.type} ({elements(numel)})",
             "source MB": fmt(src_bytes / 1e6), "ms": fmt(t * 1e3), "GB/s (sources)": fmt(gbs),
             "bound": bound, "bound GB/s": fmt(src_bytes / link / 1e9), "of bound": f"{link / t:.0%}"}]


def machine_lines(roof: Roofline) -> List[str]:
    """What the table was measured on, beyond provenance's machine line: GPU, driver, CUDA, the build."""
    import mogen_ext

    info = mogen_ext.build_info()
    lines = [f"device: {roof.device}"]
    if roof.device.type == "cuda":
        p = torch.cuda.get_device_properties(roof.device)
        lines.append(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, "
                     f"compute capability {p.major}.{p.minor}, driver {driver_version()}")
    lines.append(f"torch {torch.__version__} (CUDA {torch.version.cuda}); mogen_ext: CUDA kernels "
                 f"{'yes' if info.get('has_cuda_kernels') else 'no'}, arch list {info.get('cuda_arch_list')}")
    lines.append(f"roofline: device-to-device copy {fmt(roof.gbs)} GB/s (read + write, "
                 f"{roof._src.numel() * 2 / 2**20:.0f} MiB copied, median of {roof.iters})")
    return lines


def driver_version() -> str:
    """The NVIDIA driver's version from nvidia-smi, or 'unknown'."""
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def run(device: torch.device, shapes: KernelShapes) -> List[str]:
    """Every case on ``device``; the results file's body (machine lines, then one table per kind of row)."""
    t0 = time.perf_counter()
    roof = Roofline(device, shapes.copy_bytes, shapes.iters)
    body = machine_lines(roof) + [""]
    kernel_rows = k1_rows(roof, shapes) + k2_rows(roof, shapes)
    torch.cuda.empty_cache() if device.type == "cuda" else None
    kernel_rows += k3_rows(roof, shapes)
    body += markdown_table(kernel_rows) + [""] + markdown_table(k3_file_rows(roof, shapes))
    body += ["", "MB: the bytes the op cannot avoid (inputs read once, output written once); % HBM: their rate",
             "over the copy roofline; copy us: one copy moving as many bytes. K2 rows are timed with the L2",
             "flushed before each call. K3 merge_to_tensor is bound by the host side, not HBM.",
             f"({time.perf_counter() - t0:.0f} s for the whole table.)"]
    return body


def bench_main(stem: str, title: str, run: Callable, shapes: dict, description: str,
               argv: Optional[List[str]]) -> int:
    """The command line of a GPU benchmark: ``--device``, ``--shapes``, ``--no-write``; prints ``run``'s lines and
    writes them to ``benchmarks/results/<stem>.md`` with the machine, commit and command."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--shapes", choices=sorted(shapes), default="full")
    ap.add_argument("--no-write", action="store_true", help="print only; benchmarks/results/ is left alone")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"{stem}: --device cuda but torch sees no GPU (torch.cuda.is_available() is False)")
        return 2
    body = run(device, shapes[args.shapes])
    print("\n".join(body))
    if not args.no_write:
        from results_file import write_results

        path = write_results(stem, title, body, command=f"make gpu-check (benchmarks/{stem}.py --shapes {args.shapes})")
        print("wrote", path)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    return bench_main("gpu_kernels", "## GPU kernels: K1, K2, K3 against the HBM roofline", run, SHAPES,
                      __doc__.split("\n\n")[0], argv)


if __name__ == "__main__":
    sys.exit(main())
