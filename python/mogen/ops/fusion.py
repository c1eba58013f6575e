"""Multi-vocabulary log-ratio fusion (docs/design.md, K1): the full scores, the top k, the argmax.

The wrappers check their arguments (:mod:`mogen.ops.checks`), then run the
compiled op or, without the extension, the reference in ``mogen.reference``.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from .. import _backend, reference
from .checks import TensorList, _as_list, _check_logits, _check_map, _finite, _positive, _weights_2d


def _temperatures(temperatures, m: int) -> list:
    """The M guide temperatures ``t_i``: 1 each by default, one number for all, or one per guide."""
    if temperatures is None:
        return [1.0] * m
    if isinstance(temperatures, (int, float)):
        return [float(temperatures)] * m
    temps = list(temperatures)
    if len(temps) != m:
        raise ValueError(f"temperatures has {len(temps)} entries but there are {m} guides")
    return temps


def _check_guide(i: int, expert, ref, vmap, base: torch.Tensor,
                 check_range: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Guide ``i``'s expert and reference logits ``[B, V_i]`` (vocabulary dim made contiguous), checked
    against each other, against ``base`` ``[B, V_b]`` and against ``vmap``, its map ``[V_b]`` or None."""
    batch, vocab = base.shape
    device = base.device
    expert = _check_logits(expert, f"expert_logits[{i}]", batch, device)
    ref = _check_logits(ref, f"ref_logits[{i}]", batch, device)
    if expert.shape != ref.shape:
        raise ValueError(
            f"expert_logits[{i}] has shape {tuple(expert.shape)} but ref_logits[{i}] has "
            f"{tuple(ref.shape)}; an expert and its reference share one vocabulary"
        )
    if expert.dtype != ref.dtype:
        raise TypeError(f"expert_logits[{i}] is {expert.dtype} but ref_logits[{i}] is {ref.dtype}")
    if vmap is None:
        if expert.shape[1] != vocab:
            raise ValueError(
                f"expert_logits[{i}] has vocabulary {expert.shape[1]} but base_logits has {vocab}; "
                f"pass vocab_maps[{i}] (see mogen.vocab.build_vocab_map)"
            )
    else:
        # The compiled op range-checks maps itself (it indexes with them).
        _check_map(vmap, i, vocab, expert.shape[1], device, check_range=check_range)
    return expert, ref


def _prepare(base_logits, expert_logits, ref_logits, weights, vocab_maps, beta, base_temperature,
             temperatures, unmapped) -> dict:
    """Every argument of the K1 wrappers checked (raising where one is wrong) and normalised: the
    logits lists, the maps, weights ``[B, M]`` float32, inverse temperatures, and ``kernels``,
    whether the compiled ops serve ``base_logits``' device."""
    if not isinstance(base_logits, torch.Tensor):
        raise TypeError(f"base_logits must be a torch.Tensor, got {type(base_logits).__name__}")
    if base_logits.dim() != 2:
        raise ValueError(f"base_logits must be 2-D [B, V_b], got shape {tuple(base_logits.shape)}")
    batch = base_logits.shape[0]
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
    temps = _temperatures(temperatures, m)
    inv_temps = [1.0 / _positive(t, f"temperatures[{i}]") for i, t in enumerate(temps)]
    for i in range(m):
        experts[i], refs[i] = _check_guide(i, experts[i], refs[i], maps[i], base, check_range=not kernels)
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
    """Multi-vocabulary log-ratio fusion (docs/design.md, K1), float32 ``[B, V_b]``.

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
