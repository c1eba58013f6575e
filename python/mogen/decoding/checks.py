"""Argument checks shared by the decoding drivers (generate, the processor, search)."""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Union

import torch

from .models import has_placement, param_devices

__all__ = ["TokenIds", "id_list", "normal_tensor", "check_left_padding", "check_devices", "check_prompt",
           "finite_number"]

TokenIds = Union[int, Sequence[int], None]


def id_list(value: TokenIds, name: str) -> Optional[list[int]]:
    """``value`` as a list of ints (None stays None); TypeError naming ``name`` otherwise."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return list(value)
    raise TypeError(f"{name} must be an int or a non-empty list of ints, got {value!r}")


def finite_number(value: Any, name: str) -> float:
    """``value`` as a float; ValueError naming ``name`` unless it is a finite real number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def normal_tensor(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device`` as a normal (non-inference) tensor.

    mogen.ops caches its checks of weights and maps by the tensor's version
    counter, which tensors made under ``torch.inference_mode`` lack.
    """
    with torch.inference_mode(False):
        out = t.to(device)
        return out.clone() if out.is_inference() else out


def check_left_padding(attention_mask: torch.Tensor) -> bool:
    """Validate a left-padded ``[B, T]`` mask; return whether any row is padded.

    Raises ValueError for right padding, holes, values other than 0/1, or an
    all-padding row.
    """
    m = attention_mask
    if not bool(((m == 0) | (m == 1)).all()):
        raise ValueError("attention_mask must hold only 0 and 1")
    if not bool((m[:, -1] == 1).all()):
        raise ValueError(
            "attention_mask must be left-padded (every row ends with a real token): tokenize with "
            "tokenizer.padding_side = 'left'"
        )
    if m.shape[1] > 1 and not bool((m[:, 1:] >= m[:, :-1]).all()):
        raise ValueError("attention_mask must be left-padded: zeros only before the first real token of a row")
    return not bool((m == 1).all())


def check_prompt(input_ids: Any, attention_mask: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """``(input_ids, mask, padded)`` on ``device`` after checking a left-padded ``[B, T]`` prompt."""
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a LongTensor [B, T], got {type(input_ids).__name__}")
    if input_ids.dim() == 1:
        raise ValueError(f"input_ids must be [B, T], got shape {tuple(input_ids.shape)}; use input_ids[None]")
    if input_ids.dim() != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be a non-empty [B, T] tensor, got shape {tuple(input_ids.shape)}")
    if input_ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"input_ids must hold integer token ids, got {input_ids.dtype}")
    ids = input_ids.to(device, torch.long)
    batch, length = ids.shape
    if attention_mask is None:
        mask = torch.ones_like(ids)
    else:
        if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != (batch, length):
            shape = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
            raise ValueError(f"attention_mask must be a [B, T] = [{batch}, {length}] tensor, got {shape}")
        mask = attention_mask.to(device, torch.long)
    return ids, mask, check_left_padding(mask)


def check_devices(models: dict[str, torch.nn.Module]) -> None:
    """All models on one device, unless one was placed with ``device_map``.

    Raises ValueError naming the devices otherwise.
    """
    where = {name: param_devices(m) for name, m in models.items()}
    devices = set().union(*where.values()) if where else set()
    if len(devices) <= 1 or any(has_placement(m) for m in models.values()):
        return
    listing = ", ".join(f"{name}: {', '.join(sorted(str(d) for d in devs))}" for name, devs in where.items())
    raise ValueError(
        f"models are on different devices ({listing}) and none was placed with device_map; "
        "move them to one device, or load them with from_pretrained(..., device_map=...) to spread them "
        "over several GPUs"
    )
