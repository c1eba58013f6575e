"""Typed entry points for mogen's kernels.

Each op validates its arguments (errors name the argument and the problem),
then runs the compiled op ``torch.ops.mogen.<name>`` (its CPU or CUDA kernel,
registered with the dispatcher in csrc/library.cpp), or the pure-PyTorch
reference in ``mogen.reference`` when the extension is missing (one warning
per process).

The wrappers trace under ``torch.compile(fullgraph=True)``: shape, dtype and
device checks are plain Python on tensor metadata, and the checks that need a
pass over data are left to the compiled ops where they index with the data (a
vocabulary map's id range, K2's ids: the ops check those themselves). The one
such check the wrappers make, the finiteness of a weight tensor, runs in eager
mode only, once per tensor, cached by identity and version (a decoder calling
the op every step pays for it once); the fallback's map range check is cached
the same way. Fake (meta) kernels for tracing are registered at the end.
"""

from __future__ import annotations

import math
import weakref
from typing import Optional, Sequence, Union

import torch
from torch._subclasses.fake_tensor import is_fake

from .. import _backend, reference

__all__ = ["fused_log_ratio", "fused_log_ratio_topk", "fused_log_ratio_argmax", "topk_value_scores", "top_p_mask",
           "sample"]

_LOGIT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
TensorList = Union[torch.Tensor, Sequence[torch.Tensor]]

# id(tensor) -> (weakref to it, tensor._version when checked, cached result)
_check_cache: dict[int, tuple[weakref.ref, int, object]] = {}


def _symbolic(t: torch.Tensor) -> bool:
    """True while torch.compile traces, or for a fake tensor: no data to check."""
    return torch.compiler.is_compiling() or is_fake(t)


def _cached(t: torch.Tensor, compute):
    """``compute(t)`` cached for as long as ``t`` lives unmodified."""
    if t.is_inference():
        # Inference tensors keep no version counter, so an in-place edit could
        # not be seen: check them every time (make maps outside inference mode).
        return compute(t)
    key = id(t)
    hit = _check_cache.get(key)
    if hit is not None and hit[0]() is t and hit[1] == t._version:
        return hit[2]
    value = compute(t)
    try:
        ref = weakref.ref(t, lambda _r, key=key: _check_cache.pop(key, None))
    except TypeError:  # pragma: no cover - tensors are weak-referenceable
        return value
    _check_cache[key] = (ref, t._version, value)
    return value


def _as_list(x: TensorList, name: str) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if not isinstance(x, (list, tuple)):
        raise TypeError(f"{name} must be a tensor or a list of tensors, got {type(x).__name__}")
    return list(x)


def _check_logits(t: torch.Tensor, name: str, batch: int, device: torch.device) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D [B, V], got shape {tuple(t.shape)}")
    if t.dtype not in _LOGIT_DTYPES:
        raise TypeError(f"{name} must be float32, bfloat16 or float16, got {t.dtype}")
    if t.shape[0] != batch:
        raise ValueError(f"{name} has batch size {t.shape[0]} but base_logits has {batch}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but base_logits is on {device}")
    if t.shape[1] == 0:
        raise ValueError(f"{name} has an empty vocabulary (shape {tuple(t.shape)})")
    if t.shape[1] > 1 and t.stride(1) != 1:
        # Kernels need the vocabulary dim contiguous; any row stride is fine.
        t = t.contiguous()
    return t


# Finiteness as comparisons rather than math.isfinite: torch.compile traces those
# when it makes a float symbolic (dynamic=True).
def _isfinite(x: float) -> bool:
    return -math.inf < x < math.inf


def _positive(x: float, name: str) -> float:
    x = float(x)
    if not _isfinite(x) or x <= 0.0:
        raise ValueError(f"{name} must be a finite number > 0, got {x}")
    return x


def _finite(x: float, name: str) -> float:
    x = float(x)
    if not _isfinite(x):
        raise ValueError(f"{name} must be finite, got {x}")
    return x


def _map_range(t: torch.Tensor) -> tuple[int, int]:
    if t.numel() == 0:
        return (0, -1)
    return int(t.min()), int(t.max())


def _check_map(vmap: torch.Tensor, i: int, vocab_base: int, vocab_guide: int, device: torch.device,
               check_range: bool) -> None:
    name = f"vocab_maps[{i}]"
    if not isinstance(vmap, torch.Tensor):
        raise TypeError(f"{name} must be an int32 tensor or None, got {type(vmap).__name__}")
    if vmap.dtype != torch.int32:
        raise TypeError(f"{name} must be int32, got {vmap.dtype} (convert once with .int())")
    if vmap.dim() != 1 or vmap.shape[0] != vocab_base:
        raise ValueError(
            f"{name} must have shape [V_b] = [{vocab_base}] (one entry per base token), got {tuple(vmap.shape)}"
        )
    if vmap.device != device:
        raise ValueError(f"{name} is on {vmap.device} but base_logits is on {device}")
    if vmap.numel() > 1 and vmap.stride(0) != 1:
        raise ValueError(f"{name} must be contiguous")
    if not check_range or _symbolic(vmap):
        return
    lo, hi = _cached(vmap, _map_range)
    if lo < -1 or hi >= vocab_guide:
        raise ValueError(
            f"{name} holds ids in [{lo}, {hi}] but guide {i} has vocabulary size {vocab_guide}; "
            "entries must be -1 (unmapped) or in [0, V_i)"
        )


def _all_finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())


def _finite_numbers(x) -> bool:
    """Whether every number in a (nested) sequence is finite."""
    if isinstance(x, (list, tuple)):
        return all(_finite_numbers(y) for y in x)
    return _isfinite(float(x))


def _weights_2d(weights, batch: int, m: int, device: torch.device) -> torch.Tensor:
    """Weights as a float32 ``[B, M]`` view on ``device`` (``[M]`` becomes a stride-0 expand)."""
    if isinstance(weights, torch.Tensor):
        w = weights
        if not (w.is_floating_point() or w.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"weights must be a real tensor, got {w.dtype}")
        if w.device != device:
            raise ValueError(f"weights is on {w.device} but base_logits is on {device}")
        if not _symbolic(w) and not _cached(w, _all_finite):
            raise ValueError("weights must be finite, got NaN or inf")
        w = w.to(torch.float32)
    else:
        try:
            w = torch.tensor(weights, dtype=torch.float32)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"weights must be a sequence of numbers or a tensor: {exc}") from None
        if not _finite_numbers(weights):  # on the Python numbers: no data-dependent branch to trace
            raise ValueError(f"weights must be finite, got {weights}")
        w = w.to(device)
    if w.dim() == 1:
        if w.shape[0] != m:
            raise ValueError(f"weights has {w.shape[0]} entries but there are {m} guides")
        return w.unsqueeze(0).expand(batch, m)
    if w.dim() == 2:
        if tuple(w.shape) != (batch, m):
            raise ValueError(f"weights must be [M] = [{m}] or [B, M] = [{batch}, {m}], got {tuple(w.shape)}")
        return w
    raise ValueError(f"weights must be [M] or [B, M], got shape {tuple(w.shape)}")


def _prepare(base_logits, expert_logits, ref_logits, weights, vocab_maps, beta, base_temperature,
             temperatures, unmapped):
    if not isinstance(base_logits, torch.Tensor):
        raise TypeError(f"base_logits must be a torch.Tensor, got {type(base_logits).__name__}")
    if base_logits.dim() != 2:
        raise ValueError(f"base_logits must be 2-D [B, V_b], got shape {tuple(base_logits.shape)}")
    batch, vocab = base_logits.shape
    device = base_logits.device
    kernels = _backend.has_kernels_for(device)
    base = _check_logits(base_logits, "base_logits", batch, device)
    experts = _as_list(expert_logits, "expert_logits")
    refs = _as_list(ref_logits, "ref_logits")
    m = len(experts)
    if len(refs) != m:
        raise ValueError(f"expert_logits has {m} tensors but ref_logits has {len(refs)}; give one reference per expert")
    maps = [None] * m if vocab_maps is None else list(vocab_maps)
    if len(maps) != m:
        raise ValueError(f"vocab_maps has {len(maps)} entries but there are {m} guides")
    if temperatures is None:
        temps = [1.0] * m
    elif isinstance(temperatures, (int, float)):
        temps = [float(temperatures)] * m
    else:
        temps = list(temperatures)
        if len(temps) != m:
            raise ValueError(f"temperatures has {len(temps)} entries but there are {m} guides")
    inv_temps = [1.0 / _positive(t, f"temperatures[{i}]") for i, t in enumerate(temps)]
    for i in range(m):
        experts[i] = _check_logits(experts[i], f"expert_logits[{i}]", batch, device)
        refs[i] = _check_logits(refs[i], f"ref_logits[{i}]", batch, device)
        if experts[i].shape != refs[i].shape:
            raise ValueError(
                f"expert_logits[{i}] has shape {tuple(experts[i].shape)} but ref_logits[{i}] has "
                f"{tuple(refs[i].shape)}; an expert and its reference share one vocabulary"
            )
        if experts[i].dtype != refs[i].dtype:
            raise TypeError(f"expert_logits[{i}] is {experts[i].dtype} but ref_logits[{i}] is {refs[i].dtype}")
        if maps[i] is None:
            if experts[i].shape[1] != vocab:
                raise ValueError(
                    f"expert_logits[{i}] has vocabulary {experts[i].shape[1]} but base_logits has {vocab}; "
                    f"pass vocab_maps[{i}] (see mogen.vocab.build_vocab_map)"
                )
        else:
            # The compiled op range-checks maps itself (it indexes with them).
            _check_map(maps[i], i, vocab, experts[i].shape[1], device, check_range=not kernels)
    w = _weights_2d(weights, batch, m, device)
    return dict(
        base=base,
        experts=experts,
        refs=refs,
        maps=maps,
        weights=w,
        inv_temps=inv_temps,
        beta=_finite(beta, "beta"),
        base_inv_temp=1.0 / _positive(base_temperature, "base_temperature"),
        unmapped=_finite(unmapped, "unmapped"),
        temps=temps,
        kernels=kernels,
    )


def _op_args(a: dict) -> tuple:
    """The compiled K1 ops' positional arguments (csrc/library.cpp)."""
    return (a["base"], a["experts"], a["refs"], a["maps"], a["weights"], a["inv_temps"], a["beta"],
            a["base_inv_temp"], a["unmapped"])


def _reference_args(a: dict) -> dict:
    return dict(
        vocab_maps=a["maps"],
        beta=a["beta"],
        base_temperature=1.0 / a["base_inv_temp"],
        temperatures=a["temps"],
        unmapped=a["unmapped"],
    )


def fused_log_ratio(
    base_logits: torch.Tensor,
    expert_logits: TensorList,
    ref_logits: TensorList,
    weights,
    *,
    vocab_maps: Optional[Sequence[Optional[torch.Tensor]]] = None,
    beta: float = 1.0,
    base_temperature: float = 1.0,
    temperatures: Optional[Union[float, Sequence[float]]] = None,
    unmapped: float = 0.0,
) -> torch.Tensor:
    """Multi-vocabulary log-ratio fusion (DESIGN K1), float32 ``[B, V_b]``.

    ``s(v) = log_softmax(z_b / base_temperature)(v)
             + beta * sum_i w_i * (log_softmax(z_ei / t_i)[m_i(v)] - log_softmax(z_ri / t_i)[m_i(v)])``

    Args:
        base_logits: ``[B, V_b]`` fp32/bf16/fp16; any row stride (``logits[:, :n]``
            drops padded LM-head columns without a copy).
        expert_logits, ref_logits: M tensors ``[B, V_i]`` each; expert i and
            reference i share a vocabulary and a dtype.
        weights: ``[M]`` (all rows) or ``[B, M]`` (per-row preferences), finite.
        vocab_maps: per guide an int32 ``[V_b]`` tensor mapping base ids to guide
            ids (``-1`` = no counterpart), or None for a shared vocabulary.
        beta: scale of the guidance sum.
        base_temperature, temperatures: ``tau`` for the base and ``t_i`` per guide (> 0).
        unmapped: the log-ratio used where ``m_i(v) == -1``.
    """
    a = _prepare(base_logits, expert_logits, ref_logits, weights, vocab_maps, beta, base_temperature,
                 temperatures, unmapped)
    if a["kernels"]:
        return torch.ops.mogen.fused_log_ratio(*_op_args(a))
    _backend.warn_fallback(a["base"].device)
    return reference.fused_log_ratio(a["base"], a["experts"], a["refs"], a["weights"], **_reference_args(a))


def fused_log_ratio_topk(
    base_logits: torch.Tensor,
    expert_logits: TensorList,
    ref_logits: TensorList,
    weights,
    k: int,
    *,
    vocab_maps: Optional[Sequence[Optional[torch.Tensor]]] = None,
    beta: float = 1.0,
    base_temperature: float = 1.0,
    temperatures: Optional[Union[float, Sequence[float]]] = None,
    unmapped: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best fused scores per row without materialising ``[B, V_b]``.

    Same arguments as :func:`fused_log_ratio`. Returns ``(values [B, k] float32,
    indices [B, k] int64)``, best first; equal scores come lower id first and
    NaN ranks above everything, as in ``torch.topk``. ``k = 1`` (greedy
    decoding) runs :func:`fused_log_ratio_argmax`, which selects without sorting.
    """
    a = _prepare(base_logits, expert_logits, ref_logits, weights, vocab_maps, beta, base_temperature,
                 temperatures, unmapped)
    vocab = a["base"].shape[1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= vocab:
        raise ValueError(f"k must be an int in [1, V_b] = [1, {vocab}], got {k!r}")
    if k == 1:
        values, ids = _argmax(a)
        return values.unsqueeze(1), ids.unsqueeze(1)
    if a["kernels"]:
        return torch.ops.mogen.fused_log_ratio_topk(*_op_args(a), k)
    _backend.warn_fallback(a["base"].device)
    return reference.fused_log_ratio_topk(a["base"], a["experts"], a["refs"], a["weights"], k,
                                          **_reference_args(a))


def fused_log_ratio_argmax(
    base_logits: torch.Tensor,
    expert_logits: TensorList,
    ref_logits: TensorList,
    weights,
    *,
    vocab_maps: Optional[Sequence[Optional[torch.Tensor]]] = None,
    beta: float = 1.0,
    base_temperature: float = 1.0,
    temperatures: Optional[Union[float, Sequence[float]]] = None,
    unmapped: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The best fused score of every row and its id (greedy decoding), without
    materialising ``[B, V_b]`` or sorting anything.

    Same arguments as :func:`fused_log_ratio`. Returns ``(values [B] float32,
    ids [B] int64)``; as ``torch.argmax``, NaN ranks above everything and equal
    scores give the lowest id.
    """
    return _argmax(_prepare(base_logits, expert_logits, ref_logits, weights, vocab_maps, beta, base_temperature,
                            temperatures, unmapped))


def _argmax(a: dict) -> tuple[torch.Tensor, torch.Tensor]:
    if a["kernels"]:
        return torch.ops.mogen.fused_log_ratio_argmax(*_op_args(a))
    _backend.warn_fallback(a["base"].device)
    return reference.fused_log_ratio_argmax(a["base"], a["experts"], a["refs"], a["weights"], **_reference_args(a))


# ---------------------------------------------------------------- value scores (K2)


def _check_float_tensor(t, name: str, dim: int, shape_doc: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != dim:
        raise ValueError(f"{name} must be {dim}-D {shape_doc}, got shape {tuple(t.shape)}")
    if t.dtype not in _LOGIT_DTYPES:
        raise TypeError(f"{name} must be float32, bfloat16 or float16, got {t.dtype}")


def topk_value_scores(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    ids: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """A value head scored at k candidate ids per row only (DESIGN K2), float32 ``[B, k]``.

    ``out[b, c] = sum_h hidden[b, h] * weight[ids[b, c], h] + bias[ids[b, c]]``

    k dot products of length H per row instead of the V of ``hidden @ weight.T``.
    Products and sums are fp32 whatever the input dtypes.

    Args:
        hidden: ``[B, H]`` float32 / bfloat16 / float16; any row stride (the last
            position of ``[B, T, H]`` hidden states, ``h[:, -1]``, needs no copy).
        weight: ``[V, H]`` value head (a causal LM's output head), float32 /
            bfloat16 / float16, its own dtype independent of ``hidden``'s; rows
            contiguous (any row stride).
        ids: ``[B, k]`` int32 or int64 candidate ids, each in ``[0, V)``; repeats
            are allowed. An id outside that range raises ``ValueError`` naming
            ``ids`` (checked by the compiled op itself, which never reads past the head).
        bias: ``[V]`` or None, float32 / bfloat16 / float16.

    The CUDA kernel reads back an out-of-range flag, so each call synchronises
    the current stream once.
    """
    _check_float_tensor(hidden, "hidden", 2, "[B, H]")
    _check_float_tensor(weight, "weight", 2, "[V, H]")
    batch, size = hidden.shape
    vocab = weight.shape[0]
    device = hidden.device
    if weight.device != device:
        raise ValueError(f"weight is on {weight.device} but hidden is on {device}")
    if weight.shape[1] != size:
        raise ValueError(f"weight has hidden size {weight.shape[1]} but hidden has {size} (weight must be [V, H])")
    if size > 1 and weight.stride(1) != 1:
        # Copying a whole value head per call would cost far more than the op: refuse.
        raise ValueError(f"weight must be contiguous in its last dim (strides {weight.stride()}); "
                         "make the value head contiguous once, e.g. weight.contiguous()")
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"ids must be an int32 or int64 torch.Tensor, got {type(ids).__name__}")
    if ids.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"ids must be int32 or int64, got {ids.dtype}")
    if ids.dim() != 2 or ids.shape[0] != batch:
        raise ValueError(f"ids must be [B, k] with B = {batch} (hidden's rows), got shape {tuple(ids.shape)}")
    if ids.device != device:
        raise ValueError(f"ids is on {ids.device} but hidden is on {device}")
    if bias is not None:
        _check_float_tensor(bias, "bias", 1, f"[V] = [{vocab}]")
        if bias.shape[0] != vocab:
            raise ValueError(f"bias must have shape [V] = [{vocab}] (one entry per weight row), "
                             f"got {tuple(bias.shape)}")
        if bias.device != device:
            raise ValueError(f"bias is on {bias.device} but hidden is on {device}")
    if size > 1 and hidden.stride(1) != 1:
        hidden = hidden.contiguous()  # [B, H] is small; the kernels need H contiguous
    if _backend.has_kernels_for(device):
        return torch.ops.mogen.topk_value_scores(hidden, weight, ids, bias)
    _backend.warn_fallback(device)
    if ids.numel() > 0 and not _symbolic(ids):
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= vocab:
            raise ValueError(f"ids holds ids in [{lo}, {hi}] but the value head has V = {vocab} rows; "
                             "every id must be in [0, V)")
    return reference.topk_value_scores(hidden, weight, ids, bias)


# ---------------------------------------------------------------- sampling
# Plain torch for now (a softmax and a cumsum over the sorted candidates, one
# multinomial draw); decoding calls them here so that a fused sampling kernel
# can take their place without touching the decoding loop.


def top_p_mask(sorted_scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus (top-p) mask for scores sorted best first, bool ``[B, K]``.

    Keeps the shortest prefix whose probability mass (``softmax`` over the K
    given scores) reaches ``top_p``: candidate ``j`` is kept when the mass of the
    candidates before it is ``< top_p``. The best candidate is always kept.
    """
    probs = torch.softmax(sorted_scores.float(), dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs
    keep = mass_before < top_p
    keep[:, :1] = True
    return keep


def sample(scores: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One draw per row from ``softmax(scores)``, int64 ``[B]``; ``-inf`` entries are never drawn."""
    probs = torch.softmax(scores.float(), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


# ---------------------------------------------------------------- fake kernels
# Output shapes and dtypes of the compiled ops for tracing (torch.compile, opcheck,
# FakeTensorMode); csrc/library.cpp names this module in set_python_module. The
# wrappers above check arguments before tracing reaches these.


def _check_devices(anchor_name: str, anchor: torch.Tensor, named: dict) -> None:
    # Mixed devices (say CPU and meta) would dispatch to these fakes rather than to a
    # kernel, so they repeat the kernels' device check.
    for name, t in named.items():
        if t is not None and t.device != anchor.device:
            raise ValueError(f"mogen: {name} is on {t.device} but {anchor_name} is on {anchor.device}")


def _k1_fake_checks(base, experts, refs, maps, weights) -> None:
    named = {"weights": weights}
    for i, (e, r, m) in enumerate(zip(experts, refs, maps)):
        named.update({f"expert_logits[{i}]": e, f"ref_logits[{i}]": r, f"vocab_maps[{i}]": m})
    _check_devices("base_logits", base, named)


def _register_fakes() -> None:
    @torch.library.register_fake("mogen::fused_log_ratio")
    def _(base, experts, refs, maps, weights, inv_temps, beta, base_inv_temp, unmapped):
        _k1_fake_checks(base, experts, refs, maps, weights)
        return base.new_empty(base.shape, dtype=torch.float32)

    @torch.library.register_fake("mogen::fused_log_ratio_topk")
    def _(base, experts, refs, maps, weights, inv_temps, beta, base_inv_temp, unmapped, k):
        _k1_fake_checks(base, experts, refs, maps, weights)
        torch._check(1 <= k <= base.shape[1], lambda: f"k must be in [1, V_b] = [1, {base.shape[1]}], got {k}")
        shape = (base.shape[0], k)
        return base.new_empty(shape, dtype=torch.float32), base.new_empty(shape, dtype=torch.int64)

    @torch.library.register_fake("mogen::fused_log_ratio_argmax")
    def _(base, experts, refs, maps, weights, inv_temps, beta, base_inv_temp, unmapped):
        _k1_fake_checks(base, experts, refs, maps, weights)
        shape = (base.shape[0],)
        return base.new_empty(shape, dtype=torch.float32), base.new_empty(shape, dtype=torch.int64)

    @torch.library.register_fake("mogen::topk_value_scores")
    def _(hidden, weight, ids, bias):
        _check_devices("hidden", hidden, {"weight": weight, "ids": ids, "bias": bias})
        return hidden.new_empty((hidden.shape[0], ids.shape[1]), dtype=torch.float32)


if _backend.kernels() is not None:
    _register_fakes()
