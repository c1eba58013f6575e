"""Argument checks shared by the kernel wrappers (shapes, dtypes, devices, finiteness).

Shape, dtype and device checks are plain Python on tensor metadata, so they
trace under ``torch.compile(fullgraph=True)``. The checks that need a pass over
data (a weight tensor's finiteness, a vocabulary map's id range on the
fallback) run in eager mode only, once per tensor, cached by identity and
version: a decoder calling an op every step pays for them once.
"""

from __future__ import annotations

import math
import weakref
from typing import Sequence, Union

import torch
from torch._subclasses.fake_tensor import is_fake

from ..dtypes import FLOAT_TORCH_DTYPES as _LOGIT_DTYPES

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


def _check_float_tensor(t, name: str, dim: int, shape_doc: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != dim:
        raise ValueError(f"{name} must be {dim}-D {shape_doc}, got shape {tuple(t.shape)}")
    if t.dtype not in _LOGIT_DTYPES:
        raise TypeError(f"{name} must be float32, bfloat16 or float16, got {t.dtype}")
