"""End-to-end merge benchmark: mogen vs mergekit vs the machine's read-and-write floor.

Generates N Llama-shaped checkpoints of about --size-gb each (random weights,
--dtype), warms the page cache, then times, each in a fresh process:

  floor     every input byte read into user space and one output of the merged
            size written (the least any merge must do), and K outputs: the best of
            a Python loop, threaded pread/pwrite, mapped inputs folded with numpy,
            and pread / XOR fold / pwrite in C++ (benchmarks/floor.cpp, built here
            with the system compiler; its two threads in two ranges or interleaved
            by block, as K3's); cp, whose copy never leaves the kernel, is
            shown beside them; for merge_into, the output a buffer in memory
  mogen     mogen.merge, linear, K = 1 (and K = 5 from one pass)
  mergekit  mergekit-yaml with the same linear config, from the PyPI package in
            its own virtual environment, created here (--mergekit-venv) with
            `pip install mergekit`; this interpreter's site-packages are visible
            to it so torch is not downloaded again

each --repeat times in interleaved rounds (each floor's ways, then the mogen row
held against it: both see the same page cache and disk; the best run counts), and prints wall time, peak RSS (the
child's high-water mark, file-backed pages included) and GB/s ((bytes read +
bytes written) / wall time) of each, then writes the table to
benchmarks/results/merge_cpu.md.

    python benchmarks/bench_merge.py --size-gb 1.0
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "python"), str(ROOT)]  # this checkout's mogen, not an installed one

from results_file import write_results  # noqa: E402


# ---------------------------------------------------------------- checkpoints


def llama_shapes(size_gb: float, itemsize: int):
    """A Llama-like config whose weights take about size_gb."""
    hidden, inter, vocab, heads, kv = 2048, 5632, 32000, 16, 4
    head = hidden // heads
    per_layer = hidden * hidden * 2 + 2 * hidden * kv * head + 3 * hidden * inter + 2 * hidden
    fixed = 2 * vocab * hidden + hidden
    layers = max(1, round((size_gb * 1e9 / itemsize - fixed) / per_layer))
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
           "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
           "num_key_value_heads": kv, "vocab_size": vocab, "rms_norm_eps": 1e-5, "max_position_embeddings": 4096,
           "tie_word_embeddings": False, "hidden_act": "silu", "rope_theta": 10000.0}
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "lm_head.weight": (vocab, hidden),
              "model.norm.weight": (hidden,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (hidden, hidden), p + "self_attn.k_proj.weight": (kv * head, hidden),
                       p + "self_attn.v_proj.weight": (kv * head, hidden), p + "self_attn.o_proj.weight": (hidden, hidden),
                       p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden),
                       p + "mlp.down_proj.weight": (hidden, inter), p + "input_layernorm.weight": (hidden,),
                       p + "post_attention_layernorm.weight": (hidden,)})
    return cfg, shapes


def write_synthetic_llama(folder: Path, shapes: dict, cfg: dict, dtype, seed: int, shard_bytes: int) -> None:
    """Random weights in safetensors shards of about shard_bytes (boundaries depend on shard_bytes)."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    names = list(shapes)
    shards, cur, used = [], [], 0
    isz = torch.empty((), dtype=dtype).element_size()
    for n in names:
        nb = isz
        for d in shapes[n]:
            nb *= d
        if cur and used + nb > shard_bytes:
            shards.append(cur)
            cur, used = [], 0
        cur.append(n)
        used += nb
    shards.append(cur)
    wm = {}
    for i, group in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        sd = {n: (torch.randn(shapes[n], generator=g) * 0.02).to(dtype) for n in group}
        save_file(sd, str(folder / fname), metadata={"format": "pt"})
        wm.update({n: fname for n in group})
        del sd
    total = sum(os.path.getsize(folder / f) for f in set(wm.values()))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                     "weight_map": wm}))
    (folder / "config.json").write_text(json.dumps({**cfg, "torch_dtype": str(dtype).split(".")[-1]}))


# ---------------------------------------------------------------- measuring


RUNNER = textwrap.dedent(r"""
    import json, os, resource, subprocess, sys, time
    cmd = json.loads(sys.argv[1])
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(json.dumps({"rc": r.returncode, "wall": wall, "peak_rss": peak, "stdout": r.stdout[-4000:],
                      "stderr": r.stderr[-4000:]}))
""")


def measure(cmd: list[str], env=None) -> dict:
    """Runs cmd in a fresh process (via a tiny runner that is its only child) and returns
    wall seconds and the child's peak RSS."""
    r = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(cmd)], capture_output=True, text=True,
                       env=env or os.environ.copy())
    out = json.loads(r.stdout.strip().splitlines()[-1])
    if out["rc"] != 0:
        raise RuntimeError(f"{cmd[:3]}... failed:\n{out['stderr']}")
    return out


FLOOR = textwrap.dedent(r"""
    import os, sys, json, time
    t0 = time.perf_counter()
    out, size, nout, fsync = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
    files = json.loads(sys.argv[5])
    buf = bytearray(16 << 20); mv = memoryview(buf)
    os.makedirs(out)
    outs = [open(os.path.join(out, str(j)), "wb") for j in range(nout)]
    written = 0
    for f in files:
        with open(f, "rb", buffering=0) as i:
            while True:
                n = i.readinto(buf)
                if not n:
                    break
                if written < size:
                    k = min(n, size - written)
                    [o.write(mv[:k]) for o in outs]; written += k
    while written < size:
        k = min(len(buf), size - written); [o.write(mv[:k]) for o in outs]; written += k
    for o in outs:
        o.flush()
        if fsync:
            os.fsync(o.fileno())
        o.close()
    if fsync:  # the folder too: the new files' entries
        d = os.open(out, os.O_RDONLY); os.fsync(d); os.close(d)
    print(json.dumps({"work_s": time.perf_counter() - t0}))
""")


# Every floor takes argv: out (a folder that gets the outputs 0 .. K-1 as files,
# as a merge writes K output folders), size (bytes per output), K, fsync, then
# its sources. The threaded floors share their set-up (sources as [[shard paths
# of source 0], ...], then threads) and their ending; each defines `streams` (per
# source: [(reader, start in the stream, length)], total; `stream_parts` builds it
# from a way to open one shard), the block size B and `work(t)`, which pwrites
# each block into every output in `fds`.
_THREADED_HEAD = textwrap.dedent(r"""
    import os, sys, json, time, threading
    t0 = time.perf_counter()
    out, size, nout, fsync = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
    sources = json.loads(sys.argv[5])
    T = int(sys.argv[6])
    def stream_parts(open_part):
        streams = []
        for files in sources:
            pos, parts = 0, []
            for f in files:
                reader, n = open_part(f)
                parts.append((reader, pos, n)); pos += n
            streams.append((parts, pos))
        return streams
""")
_THREADED_OUTPUT = textwrap.dedent(r"""
    fds = []
    if out != os.devnull:
        os.makedirs(out)
        for j in range(nout):
            fds.append(os.open(os.path.join(out, str(j)), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
            os.ftruncate(fds[-1], size)
    longest = max(total for _, total in streams)
    blocks = (max(longest, size) + B - 1) // B
""")
_THREADED_TAIL = textwrap.dedent(r"""
    ths = [threading.Thread(target=work, args=(t,)) for t in range(T)]
    [th.start() for th in ths]; [th.join() for th in ths]
    for fd in fds:
        if fsync:
            os.fsync(fd)
        os.close(fd)
    if fsync and fds:  # the folder too: the new files' entries
        d = os.open(out, os.O_RDONLY); os.fsync(d); os.close(d)
    print(json.dumps({"work_s": time.perf_counter() - t0}))
""")

# The same work with several threads: pread blocks of every source (each source's
# shards read as one stream) and pwrite the output's blocks into a pre-sized file.
FLOOR_PWRITE = _THREADED_HEAD + textwrap.dedent(r"""
    B = 16 << 20
    streams = stream_parts(lambda f: (os.open(f, os.O_RDONLY), os.path.getsize(f)))
""") + _THREADED_OUTPUT + textwrap.dedent(r"""
    def work(t):
        buf = bytearray(B); mv = memoryview(buf)
        for j in range(t, blocks, T):
            lo = j * B
            for parts, total in streams:
                for pfd, start, n in parts:
                    a, b = max(lo, start), min(lo + B, start + n)
                    if a < b:
                        os.preadv(pfd, [mv[a - lo:b - lo]], a - start)
            if lo < size:
                [os.pwrite(fd, mv[:min(B, size - lo)], lo) for fd in fds]
""") + _THREADED_TAIL

# The least a merge does, with numpy doing the byte work: every input byte mapped
# (sequential read-ahead) and brought into the CPU (the first source copied, the
# others XOR-folded into an L2-sized block with numpy, which releases the GIL),
# each block pwritten into a pre-sized output; each thread takes a contiguous
# range of blocks. benchmarks/floor.cpp does the same with pread in C++.
FLOOR_MMAP = _THREADED_HEAD + textwrap.dedent(r"""
    import mmap
    import numpy as np
    B = 256 << 10
    def mapped(f):
        with open(f, "rb") as fh:
            n = os.fstat(fh.fileno()).st_size
            mm = mmap.mmap(fh.fileno(), n, access=mmap.ACCESS_READ)
        mm.madvise(mmap.MADV_SEQUENTIAL)
        return np.frombuffer(mm, np.uint8), n
    streams = stream_parts(mapped)
""") + _THREADED_OUTPUT + textwrap.dedent(r"""
    mem = None
    if out == os.devnull:  # an output in memory (merge_into's floor), touched before the clock starts,
        mem = np.ones(size, np.uint8)  # as a loaded model's parameters are
        t0 = time.perf_counter()
    per = (blocks + T - 1) // T
    def work(t):
        acc = np.zeros(B, np.uint8)
        for j in range(t * per, min(blocks, (t + 1) * per)):
            lo = j * B
            for s, (parts, total) in enumerate(streams):
                for arr, start, n in parts:
                    a, b = max(lo, start), min(lo + B, start + n)
                    if a < b:
                        dst, src = acc[a - lo:b - lo], arr[a - start:b - start]
                        np.copyto(dst, src) if s == 0 else np.bitwise_xor(dst, src, out=dst)
            if lo < size and mem is not None:
                mem[lo:lo + B] = acc[:min(B, size - lo)]
            elif lo < size:
                [os.pwrite(fd, acc[:min(B, size - lo)], lo) for fd in fds]
""") + _THREADED_TAIL

# And with coreutils: cp of one source's shards (as many bytes as one output), the
# other sources read by cat in parallel; K outputs are K copies.
FLOOR_CP = textwrap.dedent(r"""
    import os, sys, json, time, subprocess
    t0 = time.perf_counter()
    out, k, fsync = sys.argv[1], int(sys.argv[3]), sys.argv[4] == "1"
    sources = json.loads(sys.argv[5])
    os.makedirs(out)
    cat = subprocess.Popen(["cat"] + [f for files in sources[1:] for f in files], stdout=subprocess.DEVNULL)
    for j in range(k):
        d = os.path.join(out, str(j)); os.makedirs(d)
        subprocess.run(["cp"] + sources[0] + [d], check=True)
    cat.wait()
    if fsync:
        subprocess.run(["sync", "-f", out], check=True)
    print(json.dumps({"work_s": time.perf_counter() - t0}))
""")


def settle(seconds: float) -> None:
    """Lets the page cache settle: dirty pages (inputs just generated, the previous run's
    output) written back, so that writeback does not slow down the run measured next."""
    os.sync()
    time.sleep(seconds)


def best_of(samples: list) -> dict:
    """The fastest (least work time) of a row's runs: the machine's page cache and writeback make
    single runs swing by up to 2x, for mogen and for the floors alike."""
    return min(samples, key=lambda m: m["merge_s"])


def spread(samples: list) -> str:
    """A row's work times over the rounds, fastest first."""
    return "/".join(f"{m['merge_s']:.2f}" for m in sorted(samples, key=lambda m: m["merge_s"]))


def compiled_floor(work: Path) -> str | None:
    """benchmarks/floor.cpp built into `work`, keyed by the source's hash (the work folder may be
    shared with other checkouts, whose floor.cpp differs); None without a C++ compiler."""
    src = ROOT / "benchmarks" / "floor.cpp"
    exe = work / f"floor_bin-{hashlib.sha256(src.read_bytes()).hexdigest()[:12]}"
    cxx = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    if exe.exists():
        return str(exe)
    if cxx is None:
        print("  no C++ compiler: the compiled floor is left out", flush=True)
        return None
    subprocess.run([cxx, "-O2", "-std=c++17", "-pthread", str(src), "-o", str(exe)], check=True)
    return str(exe)


def floor_ways(nout: int, fsync: bool, out_bytes: int, srcs, work: Path, settle_s: float,
               memory: bool = False) -> dict:
    """The floor's implementations, as name -> a function that runs it once (in a fresh process
    after the page cache settled): the Python read/write loop, threaded pread/pwrite, mapped
    inputs folded with numpy and pwritten from threads, and the same in C++ (benchmarks/floor.cpp).
    cp is timed too and reported beside them, but is no floor for a merge: its copy stays inside
    the kernel (copy_file_range), and a merge must compute on every byte. With `memory`, the output
    is a buffer in memory (merge_into's floor): only the two fastest ways."""
    files = [str(f) for s in srcs for f in sorted(s.glob("*.safetensors"))]
    by_source = [[str(f) for f in sorted(s.glob("*.safetensors"))] for s in srcs]
    fs = "1" if fsync else "0"
    head = [str(out_bytes), str(nout), fs]
    py = [sys.executable, "-c"]
    runs = {"python loop": py + [FLOOR, "OUT", *head, json.dumps(files)],
            "pwrite x4 threads": py + [FLOOR_PWRITE, "OUT", *head, json.dumps(by_source), "4"],
            "mmap + numpy fold, x2 threads": py + [FLOOR_MMAP, "OUT", *head, json.dumps(by_source), "2"],
            "cp": py + [FLOOR_CP, "OUT", *head, json.dumps(by_source)]}
    exe = compiled_floor(work)
    if exe is not None:
        paths = [x for files_of in by_source for x in [str(len(files_of)), *files_of]]
        runs["C++ pread + fold + pwrite, x2 threads"] = [exe, "OUT", *head, "2", "ranges", str(len(srcs))] + paths
        runs["C++, x2 threads interleaved by block"] = [exe, "OUT", *head, "2", "interleaved", str(len(srcs))] + paths
        if fsync:  # each block's writeback started as soon as it is written: the disk works during the pass
            runs["C++, writeback started per block"] = [exe, "OUT", str(out_bytes), str(nout), "early", "2",
                                                        "interleaved", str(len(srcs))] + paths
    if memory:
        runs = {k: v for k, v in runs.items() if k.startswith(("mmap", "C++"))}
    o = Path(os.devnull) if memory else work / "floor.out"

    def once(cmd):
        if not memory:
            shutil.rmtree(o, ignore_errors=True)
        page_cache_warm(srcs)
        settle(settle_s)
        m = measure([str(o) if c == "OUT" else c for c in cmd])
        if not memory:
            shutil.rmtree(o, ignore_errors=True)
        m["merge_s"] = json.loads(m["stdout"].strip().splitlines()[-1])["work_s"]
        return m

    return {name: (lambda cmd=cmd: once(cmd)) for name, cmd in runs.items()}


def best_floor(samples: dict) -> dict:
    """The floor from its ways' runs (name -> [runs]): the fastest way's best run, cp left out
    (see floor_ways); with each way's best work time and the spread of the chosen way."""
    ways = {name: best_of(runs)["merge_s"] for name, runs in samples.items()}
    name = min((n for n in samples if n != "cp"), key=lambda n: ways[n])
    return {**best_of(samples[name]), "how": name, "ways": ways, "spread": spread(samples[name])}


def rounding_note(srcs, weights, mogen_out: Path, mergekit_out: Path, tensors: int = 40) -> str:
    """Both outputs against the fp64 result rounded to their dtype, in ulps (integer distance
    of the bit patterns), over the first `tensors` tensors: whose rounding is the difference."""
    import torch
    import mogen.merging.io as mio

    def ordered(x):
        v = x.contiguous().view(torch.int16).to(torch.int64)
        return torch.where(v < 0, -(v & 0x7FFF), v)

    ins = [mio.open_checkpoint(s) for s in srcs]
    mine, theirs = mio.open_checkpoint(mogen_out), mio.open_checkpoint(mergekit_out)
    worst, differ, total = {"mogen": 0, "mergekit": 0}, {"mogen": 0, "mergekit": 0}, 0
    for n in list(theirs.tensors)[:tensors]:
        want = sum(w * ck.tensors[n].read().double() for w, ck in zip(weights, ins))
        ref = ordered(want.to(torch.bfloat16))
        for who, ck in (("mogen", mine), ("mergekit", theirs)):
            d = (ordered(ck.tensors[n].read()) - ref).abs()
            worst[who] = max(worst[who], int(d.max()))
            differ[who] += int((d > 0).sum())
        total += want.numel()
    for ck in ins + [mine, theirs]:
        ck.close()
    return (f"against the fp64 result rounded to bf16, over {tensors} tensors ({total / 1e6:.1f}M elements): mogen "
            f"at most {worst['mogen']} ulp off ({100 * differ['mogen'] / total:.3f}% of elements off at all), mergekit "
            f"at most {worst['mergekit']} ulp ({100 * differ['mergekit'] / total:.2f}%): the difference between the "
            "two is mergekit's rounding")


def dirty_note(written: int) -> str:
    """Why writing K outputs costs more than K times one: how many written bytes the page cache
    takes before the kernel starts writing back (vm.dirty_background_*), and before it throttles
    the writer (vm.dirty_*)."""
    try:
        vm = dict(line.split() for line in Path("/proc/vmstat").read_text().splitlines())
        page = os.sysconf("SC_PAGE_SIZE")
        bg, hard = int(vm["nr_dirty_background_threshold"]) * page, int(vm["nr_dirty_threshold"]) * page
    except (OSError, KeyError, ValueError):
        return ""
    head = (f"The page cache takes {bg / 1e9:.1f} GB of written data before the kernel starts writing it back "
            f"(and throttles writers at {hard / 1e9:.1f} GB); ")
    if written <= bg:
        return head + f"{written / 1e9:.1f} GB of outputs fits below that."
    return head + (f"{written / 1e9:.1f} GB of outputs is past that, so the K-output rows wait on the disk's "
                   "writeback, mogen's and the floor's alike, and swing with it.")


def page_cache_warm(paths) -> None:
    for p in paths:
        for f in sorted(Path(p).glob("*.safetensors")):
            with open(f, "rb", buffering=0) as fh:
                while fh.read(64 << 20):
                    pass


def ensure_mergekit(venv: Path) -> tuple[str | None, str]:
    """The venv's python with mergekit installed (pip install mergekit), or None and why not."""
    py = venv / "bin" / "python"
    try:
        if not py.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip()
            # Share this interpreter's packages (torch above all) instead of downloading them again.
            Path(site, "_host_site.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        if subprocess.run([str(py), "-c", "import mergekit"], capture_output=True).returncode != 0:
            subprocess.run([str(py), "-m", "pip", "install", "-q", "mergekit"], check=True)
        ver = subprocess.run([str(py), "-c", "import importlib.metadata as m; print(m.version('mergekit'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
        return str(py), ver
    except (subprocess.CalledProcessError, OSError) as exc:
        return None, f"mergekit could not be installed: {exc}"


# ---------------------------------------------------------------- main


def criteria(rows, floors: dict) -> list[str]:
    """The acceptance checks, as lines: every mogen row at or above 0.9x of its floor's work time
    (a floor beaten by more than 10% is not a floor) and within 1.5x of it (so K outputs from one
    pass within 1.5x of the floor that writes K outputs); 3x / 5x less wall time / peak RSS than
    mergekit."""
    out = []
    for r in rows:
        if "floor" not in r:
            continue
        ref = floors[r["floor"]]
        x = r["merge_s"] / ref["merge_s"]
        out.append(f"- check {r['what']}: {x:.2f}x its floor ({ref['what']}): "
                   f"{'PASS' if 0.9 <= x <= 1.5 else 'FAIL'} (wanted 0.9x to 1.5x)")
    mk = next((r for r in rows if r["what"].startswith("mergekit")), None)
    mg = next(r for r in rows if r["what"] == "mogen linear, K=1")
    if mk:
        t, m = mk["wall"] / mg["wall"], mk["peak_rss"] / mg["peak_rss"]
        out.append(f"- check vs mergekit: {t:.2f}x less wall time, {m:.2f}x less peak RSS: "
                   f"{'PASS' if t >= 3 and m >= 5 else 'FAIL'} (wanted >= 3x and >= 5x)")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gb", type=float, default=1.0, help="size of each source checkpoint")
    ap.add_argument("--sources", type=int, default=3)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--workdir", default="/tmp/mogen-bench-merge")
    ap.add_argument("--mergekit-venv", default=str(ROOT / ".venv-mergekit"))
    ap.add_argument("--skip-mergekit", action="store_true")
    ap.add_argument("--k", type=int, default=5, help="outputs of the one-pass sweep")
    ap.add_argument("--keep", action="store_true", help="keep the generated checkpoints")
    ap.add_argument("--repeat", type=int, default=3,
                    help="interleaved rounds: runs of each floor way and mogen row; the best counts")
    ap.add_argument("--settle-s", type=float, default=3.0,
                    help="pause after sync before each measured run (page cache settled)")
    args = ap.parse_args()

    import torch

    dtype = getattr(torch, args.dtype)
    isz = torch.empty((), dtype=dtype).element_size()
    work = Path(args.workdir)
    cfg, shapes = llama_shapes(args.size_gb, isz)
    srcs = [work / f"src{i}" for i in range(args.sources)]
    stamp = work / "stamp.json"
    want = {"size": args.size_gb, "n": args.sources, "dtype": args.dtype}
    if not (stamp.exists() and json.loads(stamp.read_text()) == want):
        shutil.rmtree(work, ignore_errors=True)
        for i, s in enumerate(srcs):
            print(f"generating {s} ...", flush=True)
            # Different shard sizes per source: shard boundaries differ between sources.
            write_synthetic_llama(s, shapes, cfg, dtype, seed=i, shard_bytes=int((0.3 + 0.1 * i) * 1e9))
        stamp.write_text(json.dumps(want))
    in_bytes = sum(f.stat().st_size for s in srcs for f in s.glob("*.safetensors"))
    out_bytes = in_bytes // args.sources
    weights = [round(1.0 / args.sources + 0.05 * (i - 1), 6) for i in range(args.sources)]
    weights[-1] = round(1.0 - sum(weights[:-1]), 6)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "python"), str(ROOT)] + sys.path[1:]))
    rows = []

    def out_dir(name):
        p = work / name
        shutil.rmtree(p, ignore_errors=True)
        return p

    settle(args.settle_s)  # the inputs just written must not be written back during the runs
    merge_code = textwrap.dedent("""
        import json, sys, mogen
        srcs, coef, outs, fsync = json.loads(sys.argv[1])
        r = mogen.merge(srcs, coef, outs if len(outs) > 1 else outs[0], dtype=%r, progress=False, fsync=fsync)
        print(json.dumps({"merge_s": r.total_seconds, "peak": r.peak_rss, "base": r.baseline_rss}))
    """ % args.dtype)
    coef_k = [[round(w + 0.01 * k, 6) for w in weights] for k in range(args.k)]
    def run_mogen(code: str, argv: list, outs=()) -> dict:
        for o in outs:
            out_dir(o)
        page_cache_warm(srcs)
        settle(args.settle_s)
        m = measure([sys.executable, "-c", code, json.dumps(argv)], env)
        info = json.loads(m["stdout"].strip().splitlines()[-1])
        m.update(merge_s=info["merge_s"], rss_above_base=info["peak"] - info["base"])
        for o in outs[1:]:  # mogen0 stays for the rounding check; the rest only fill the page cache
            shutil.rmtree(work / o, ignore_errors=True)
        return m

    def mogen_row(coef, k, fs):
        outs = [f"mogen{j}" for j in range(k)]
        argv = [[str(s) for s in srcs], coef, [str(work / o) for o in outs], fs]
        return lambda: run_mogen(merge_code, argv, outs)

    # merge_into: a model loaded from the first source, re-merged in place; the
    # peak is measured against the process once the model is loaded.
    into_code = textwrap.dedent("""
        import json, sys, time, torch, mogen
        from transformers import AutoModelForCausalLM
        srcs, coef = json.loads(sys.argv[1])
        model = AutoModelForCausalLM.from_pretrained(srcs[0], dtype=torch.%s)
        # from_pretrained may leave parameters backed by the mapped file, resident
        # only once touched; give them their own memory so that the baseline holds
        # the whole model and the peak shows only what merge_into adds.
        with torch.no_grad():
            for p in model.parameters():
                p.data = p.data.clone()
        import gc; gc.collect()
        t0 = time.perf_counter()
        r = mogen.merge_into(model, srcs, coef)
        print(json.dumps({"merge_s": time.perf_counter() - t0, "peak": r.peak_rss, "base": r.baseline_rss}))
    """ % args.dtype)
    # Each floor (by key) and the mogen row held against it: (key, floor, outputs, fsync, in memory,
    # mogen row, its bytes written, its run).
    groups = [("1", "floor: read inputs + write 1 output", 1, False, False,
               "mogen linear, K=1", out_bytes, mogen_row(weights, 1, False)),
              ("1+fsync", "floor: read inputs + write 1 output + fsync", 1, True, False,
               "mogen linear, K=1, fsync (default)", out_bytes, mogen_row(weights, 1, True)),
              ("K", f"floor: read inputs + write {args.k} outputs", args.k, False, False,
               f"mogen linear, K={args.k}", args.k * out_bytes, mogen_row(coef_k, args.k, False)),
              ("memory", "floor: read inputs + fill 1 output in memory", 1, False, True,
               "mogen merge_into (in place, model loaded)", 0,
               lambda: run_mogen(into_code, [[str(s) for s in srcs], weights]))]
    # Interleaved rounds: each round runs every floor way and then, right after, the mogen row held
    # against that floor, so that both see the same page cache and disk (the K-output rows are
    # bound by the disk's writeback, whose speed drifts by 2x over minutes); the order within a
    # group turns by one place each round, so no run always follows the same one.
    samples = {key: {} for key, *_ in groups}
    for r in range(args.repeat):
        for key, what, nout, fs, mem, label, _, mogen_run in groups:
            runs = list(floor_ways(nout, fs, out_bytes, srcs, work, args.settle_s, memory=mem).items())
            runs.append((label, mogen_run))
            shift = r % len(runs)
            for name, run in runs[shift:] + runs[:shift]:
                m = run()
                samples[key].setdefault(name, []).append(m)
                print(f"  round {r + 1}: {what if name != label else label} via {name}: {m['merge_s']:.2f}s",
                      flush=True)
    floors, mogen_rows = {}, []
    for key, what, nout, fs, mem, label, written, _ in groups:
        mine = samples[key].pop(label)
        m = best_floor(samples[key])
        floors[key] = {"what": f"{what} (best: {m['how']})", "wall": m["wall"], "peak_rss": m["peak_rss"],
                       "bytes": in_bytes + (0 if mem else nout * out_bytes), "merge_s": m["merge_s"],
                       "ways": m["ways"], "spread": m["spread"]}
        rows.append(floors[key])
        m = best_of(mine)
        mogen_rows.append({"what": label, "wall": m["wall"], "peak_rss": m["peak_rss"], "bytes": in_bytes + written,
                           "merge_s": m["merge_s"], "rss_above_base": m["rss_above_base"], "floor": key,
                           "spread": spread(mine)})
    # The table's order: the floors, then mogen K=1, K, K=1 with fsync, merge_into.
    rows += [mogen_rows[i] for i in (0, 2, 1, 3)]
    mk_note = "skipped (--skip-mergekit)"
    if not args.skip_mergekit:
        py, ver = ensure_mergekit(Path(args.mergekit_venv))
        if py is None:
            mk_note = ver
        else:
            mk_note = f"mergekit {ver}"
            cfg_path = work / "mergekit.yml"
            import yaml
            cfg_path.write_text(yaml.safe_dump({
                "merge_method": "linear", "dtype": args.dtype,
                "models": [{"model": str(s), "parameters": {"weight": w}} for s, w in zip(srcs, weights)],
                "parameters": {"normalize": False}}))
            o = out_dir("mergekit")
            page_cache_warm(srcs)
            settle(args.settle_s)
            mk_bin = str(Path(py).parent / "mergekit-yaml")
            m = measure([mk_bin, str(cfg_path), str(o), "--quiet", "--lazy-unpickle"])
            rows.append({"what": f"mergekit {ver} (mergekit-yaml, linear)", "wall": m["wall"],
                         "peak_rss": m["peak_rss"], "bytes": in_bytes + out_bytes})
            mk_note += "; " + rounding_note(srcs, weights, work / "mogen0", o)
    # ---- report
    by = {r["what"]: r for r in rows}
    title = f"# Merge benchmark ({args.sources} x {in_bytes / args.sources / 1e9:.2f} GB {args.dtype}, linear, CPU)"
    lines = [f"Merging {args.sources} x {in_bytes / args.sources / 1e9:.2f} GB {args.dtype} checkpoints, linear, on the CPU; "
             f"inputs in the page cache and settled (sync + {args.settle_s:g} s pause) before each run, each run a fresh "
             f"process, in {args.repeat} interleaved rounds (each round runs every way of a floor and, right after them, the "
             "mogen row held against it, in an order that turns each round, so that both see the same page cache and "
             "disk), the best run of each way and row kept. The floor is the fastest "
             "of four ways that bring every input byte into user space and write the output(s), each output its own file "
             "as a merge writes them: a Python read/write loop, threaded pread/pwrite, mapped inputs XOR-folded in "
             "L2-sized blocks with numpy and pwritten from two threads, and the same pread / XOR / pwrite in C++ "
             "(`benchmarks/floor.cpp`), its two threads taking the stream in two ranges or interleaved by block (as K3's "
             "move through each file side by side); `cp` (whose copy stays in the kernel, which a merge that computes on every "
             "element cannot do) is shown beside them. `merge_into` is held against a floor whose output is a buffer "
             "in memory, as a loaded model's parameters are. What mogen adds to its floor is the compensated fp32 "
             "arithmetic, which the floor's XOR does not do (`merge_into` has no file write to hide it behind). K3 "
             "reads its inputs with `pread` into a per-thread block buffer (mapping the inputs and releasing each "
             "block to keep resident memory low sent a TLB shootdown per block to the other thread) and sums up to "
             "four sources in one register-resident pass per output. The floors do no more than any merger must: each "
             "input byte read once, each output byte written once, no arithmetic (with fsync: each output file and "
             "its folder fsynced; one more way with fsync starts each block's writeback as soon as it is written).", "",
             f"{mk_note}. Inputs in the page cache; each row a fresh process (wall includes interpreter start). "
             "GB/s = (bytes read + bytes written) / wall.", "",
             "'work s' is the time inside the process (the merge call; the floor's loop), without imports; "
             "the floor ratio compares work times.", "",
             "| run | wall s | work s | peak RSS MiB | GB/s (wall) | GB/s (work) | work vs floor |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        # Each run against the floor that moves as many bytes (a floor against itself).
        ref = floors[r["floor"]] if "floor" in r else r
        ws = r.get("merge_s")
        work_s = "" if ws is None else f"{ws:.2f}"
        gbs_work = "" if ws is None else f"{r['bytes'] / ws / 1e9:.2f}"
        ratio = "" if ws is None else f"{ws / ref['merge_s']:.2f}x"
        lines.append(f"| {r['what']} | {r['wall']:.2f} | {work_s} | {r['peak_rss'] / 2**20:.0f} | "
                     f"{r['bytes'] / r['wall'] / 1e9:.2f} | {gbs_work} | {ratio} |")
    mg = by.get("mogen linear, K=1")
    mk = next((r for r in rows if r["what"].startswith("mergekit")), None)
    kk = by.get(f"mogen linear, K={args.k}")
    lines.append("")
    if mk:
        lines.append(f"- mogen vs mergekit: {mk['wall'] / mg['wall']:.2f}x less wall time, "
                     f"{mk['peak_rss'] / mg['peak_rss']:.2f}x less peak RSS.")
    lines.append(f"- mogen K=1 vs floor (no fsync), work time: {mg['merge_s'] / floors['1']['merge_s']:.2f}x "
                 f"(wall: {mg['wall'] / floors['1']['wall']:.2f}x, mostly `import torch`); in-process merge time {mg['merge_s']:.2f}s; "
                 f"peak RSS above the interpreter's baseline during the merge: {mg['rss_above_base'] / 2**20:.0f} MiB.")
    mi = by["mogen merge_into (in place, model loaded)"]
    lines.append(f"- merge_into: peak RSS above the loaded model during the in-place merge: "
                 f"{mi['rss_above_base'] / 2**20:.0f} MiB; {mi['merge_s']:.2f}s.")
    for r in floors.values():
        lines.append(f"- {r['what'].split(' (best')[0]}, work s of each way: "
                     + ", ".join(f"{k} {v:.2f}" for k, v in r["ways"].items()))
    for r in rows:
        if "floor" in r:
            ref = floors[r["floor"]]
            lines.append(f"- {r['what']}, work s of each round (fastest first): {r['spread']}; its floor's way "
                         f"({ref['what'].split('(best: ')[1][:-1]}): {ref['spread']}.")
    vs_floor = [r["merge_s"] / floors[r["floor"]]["merge_s"] for r in rows if "floor" in r]
    lines.append(f"- every mogen row: {min(vs_floor):.2f}-{max(vs_floor):.2f}x its floor's work time.")
    lines += criteria(rows, floors)
    lines.append(f"- K={args.k} outputs from one pass vs K=1: {kk['wall'] / mg['wall']:.2f}x the wall time "
                 f"({kk['merge_s'] / mg['merge_s']:.2f}x in-process); the floor itself grows "
                 f"{floors['K']['merge_s'] / floors['1']['merge_s']:.2f}x from writing 1 output to {args.k}, and "
                 f"K={args.k} takes {kk['merge_s'] / floors['K']['merge_s']:.2f}x its floor. {dirty_note(args.k * out_bytes)}")
    print("\n".join(lines))
    print("wrote", write_results("merge_cpu", title, lines))
    if not args.keep:
        for p in work.iterdir():
            if p.name.startswith(("mogen", "mergekit", "floor")):
                shutil.rmtree(p, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
