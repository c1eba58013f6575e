"""The compiled ops as dispatcher ops (csrc/library.cpp): torch.library.opcheck on every op,
torch.compile(fullgraph=True) through the Python wrappers against eager, profiler names, the GIL."""

from __future__ import annotations

import threading
import time

import pytest
import torch

import mogen_ext
from markers import requires_cuda_kernels as cuda
from mogen import ops

pytestmark = pytest.mark.skipif(not mogen_ext.has_cpu_kernels, reason=f"no compiled kernels: {mogen_ext.load_error}")

DEVICES = ["cpu", pytest.param("cuda", marks=cuda)]


def k1_inputs(device, batch=3, vocab=50, seed=0):
    """Base [B, V], a mapped bf16 guide (V_1 = 30) and a shared-vocabulary guide, per-row weights."""
    g = torch.Generator().manual_seed(seed)
    t = lambda *shape: torch.randn(*shape, generator=g).to(device)  # noqa: E731
    vmap = torch.randint(-1, 30, (vocab,), generator=g, dtype=torch.int32).to(device)
    experts = [t(batch, 30).bfloat16(), t(batch, vocab + 5)[:, :vocab]]  # the second one row-strided
    refs = [t(batch, 30).bfloat16(), t(batch, vocab)]
    return t(batch, vocab), experts, refs, [vmap, None], torch.rand(batch, 2, generator=g).to(device)


def op_cases(device):
    base, experts, refs, maps, w = k1_inputs(device)
    k1 = (base, experts, refs, maps, w, [1.0, 0.5], 0.7, 1.25, -0.5)
    shared = (base, experts, refs, maps, w[:1].expand(3, 2), [1.0, 0.5], 0.7, 1.25, -0.5)  # stride-0 weights
    t = lambda *shape: torch.randn(*shape).to(device)  # noqa: E731
    ids = torch.randint(0, 40, (3, 5)).to(device)
    return [
        ("fused_log_ratio", k1), ("fused_log_ratio", shared), ("fused_log_ratio_topk", k1 + (4,)),
        ("fused_log_ratio_topk", k1 + (1,)), ("fused_log_ratio_argmax", k1),
        ("topk_value_scores", (t(3, 16), t(40, 16), ids, t(40))),
        ("topk_value_scores", (t(3, 16), t(40, 16).half(), ids.int(), None)),
    ]


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_every_op(device):
    # Schema (no aliasing or mutation the schema does not state), fake kernels against
    # the real ones, autograd registration and AOT dispatch with dynamic shapes.
    seen = set()
    for name, args in op_cases(device):
        torch.library.opcheck(getattr(torch.ops.mogen, name).default, args)
        seen.add(name)
    registered = {n for n in dir(torch.ops.mogen) if isinstance(getattr(torch.ops.mogen, n), torch._ops.OpOverloadPacket)}
    assert seen == registered, f"ops without an opcheck case: {registered - seen}"


def guided(base, experts, refs, maps, w):
    """Every K1 entry point of mogen.ops, with Python-list weights and temperatures in the trace."""
    kw = dict(vocab_maps=maps, beta=0.7, temperatures=[0.9, 1.1])
    scores = ops.fused_log_ratio(base, experts, refs, w, **kw)
    values, ids = ops.fused_log_ratio_topk(base, experts, refs, w, 3, **kw)
    v1, i1 = ops.fused_log_ratio_topk(base, experts, refs, [0.5, 0.25], 1, **kw)
    best, arg = ops.fused_log_ratio_argmax(base, experts, refs, w, **kw)
    return scores.log_softmax(-1), values, ids, v1, i1, best, arg


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("device", DEVICES)
def test_compile_fullgraph_matches_eager(device, backend):
    torch._dynamo.reset()
    compiled = torch.compile(guided, fullgraph=True, backend=backend, dynamic=False)
    for batch in (3, 5):  # a second shape recompiles
        inputs = k1_inputs(device, batch=batch, seed=batch)
        for got, want in zip(compiled(*inputs), guided(*inputs)):
            torch.testing.assert_close(got, want)


def test_compile_dynamic_shapes():
    # Symbolic batch and vocabulary sizes go through the fake kernels.
    torch._dynamo.reset()
    compiled = torch.compile(guided, fullgraph=True, backend="aot_eager", dynamic=True)
    for batch, vocab in ((3, 50), (6, 77)):
        inputs = k1_inputs("cpu", batch=batch, vocab=vocab, seed=batch)
        for got, want in zip(compiled(*inputs), guided(*inputs)):
            torch.testing.assert_close(got, want)


def test_compiled_op_still_checks_map_range():
    # The wrapper leaves the data-dependent map check to the op, which makes it under compile too.
    torch._dynamo.reset()
    compiled = torch.compile(guided, fullgraph=True, backend="aot_eager")
    base, experts, refs, maps, w = k1_inputs("cpu")
    maps[0][7] = 30
    with pytest.raises(ValueError, match=r"vocab_maps\[0\] holds ids in \[-?\d+, 30\]"):
        compiled(base, experts, refs, maps, w)


def test_ops_show_up_by_name_in_the_profiler():
    base, experts, refs, maps, w = k1_inputs("cpu")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        guided(base, experts, refs, maps, w)
        ops.topk_value_scores(torch.randn(3, 8), torch.randn(20, 8), torch.randint(0, 20, (3, 4)))
    names = {e.name for e in prof.events()}
    assert {"mogen::fused_log_ratio", "mogen::fused_log_ratio_topk", "mogen::fused_log_ratio_argmax",
            "mogen::topk_value_scores"} <= names


def _runs_without_the_gil(call, tries: int = 5) -> bool:
    """Whether another Python thread gets to run while ``call()`` is inside the op. A call that holds
    the GIL leaves no timestamps strictly inside it, so a few tries (against a busy machine) cannot
    make a GIL-holding op pass."""
    stamps, stop = [], threading.Event()

    def tick():
        while not stop.is_set():
            stamps.append(time.perf_counter())
            time.sleep(0.0005)

    ticker = threading.Thread(target=tick)
    ticker.start()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # leave a core to the ticker
    try:
        for _ in range(tries):
            time.sleep(0.005)
            start = time.perf_counter()
            call()
            end = time.perf_counter()
            margin = 0.1 * (end - start)
            if any(start + margin < t < end - margin for t in list(stamps)):
                return True
        return False
    finally:
        torch.set_num_threads(threads)
        stop.set()
        ticker.join()


@pytest.mark.parametrize("name", ["fused_log_ratio", "fused_log_ratio_topk", "fused_log_ratio_argmax",
                                  "topk_value_scores"])
def test_ops_release_the_gil(name):
    g = torch.Generator().manual_seed(0)
    big = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    if name == "topk_value_scores":
        args = (big(64, 1024), big(16384, 1024), torch.randint(0, 16384, (64, 1024), generator=g), None)
    else:
        base = big(32, 151936)
        args = (base, [big(32, 151936)], [big(32, 151936)], [None], torch.ones(32, 1), [1.0], 1.0, 1.0, 0.0)
        args = args + (5,) if name == "fused_log_ratio_topk" else args
    op = getattr(torch.ops.mogen, name)
    assert _runs_without_the_gil(lambda: op(*args))
