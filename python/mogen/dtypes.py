"""Dtype facts in one table: names, aliases, safetensors codes, sizes, torch dtypes.

Every place that turns a user's dtype (``"bf16"``, ``"bfloat16"``, ``"BF16"``,
``torch.bfloat16``) into something else reads it here: the CLI, the sweep
config's ``models.dtype``, the model loaders, the merge engine's safetensors
codes and sizes, the kernels' argument checks and ``mogen bench``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

__all__ = ["DType", "DTYPES", "BY_CODE", "FLOATS", "FLOAT_CODES", "FLOAT_TORCH_DTYPES", "SHORT_FLOAT_NAMES", "lookup",
           "torch_dtype", "safetensors_code", "itemsize", "config_name"]

DtypeLike = Union[str, torch.dtype, "DType"]


@dataclass(frozen=True)
class DType:
    name: str  # canonical name, as torch and config.json spell it: "bfloat16"
    code: str  # safetensors header code: "BF16"
    itemsize: int  # bytes per element
    torch: Optional[torch.dtype]  # None: a safetensors dtype this package does not load as a tensor
    aliases: tuple[str, ...] = ()  # other accepted names besides name and code, lower case; the first is the
    # short name ("bf16")


#: every dtype a safetensors header may name. ``torch`` is set for the ones the merge engine reads.
DTYPES: tuple[DType, ...] = (
    DType("float64", "F64", 8, torch.float64, ("fp64", "double")),
    DType("float32", "F32", 4, torch.float32, ("fp32", "float")),
    DType("bfloat16", "BF16", 2, torch.bfloat16, ("bf16",)),
    DType("float16", "F16", 2, torch.float16, ("fp16", "half")),
    DType("int64", "I64", 8, torch.int64, ("long",)),
    DType("int32", "I32", 4, torch.int32, ("int",)),
    DType("int16", "I16", 2, torch.int16, ("short",)),
    DType("int8", "I8", 1, torch.int8),
    DType("uint64", "U64", 8, None),
    DType("uint32", "U32", 4, None),
    DType("uint16", "U16", 2, None),
    DType("uint8", "U8", 1, torch.uint8),
    DType("bool", "BOOL", 1, torch.bool),
    DType("float8_e4m3", "F8_E4M3", 1, None),
    DType("float8_e5m2", "F8_E5M2", 1, None),
    DType("float8_e8m0", "F8_E8M0", 1, None),
    DType("complex64", "C64", 8, None),
)

#: the floating dtypes the kernels take, models load in and merging writes
FLOATS: tuple[str, ...] = ("float32", "bfloat16", "float16")

_BY_KEY: dict[str, DType] = {}
for _d in DTYPES:
    for _key in (_d.name, _d.code.lower(), *_d.aliases):
        assert _BY_KEY.get(_key, _d) is _d, _key  # one row per name
        _BY_KEY[_key] = _d
_BY_TORCH: dict[torch.dtype, DType] = {d.torch: d for d in DTYPES if d.torch is not None}
BY_CODE: dict[str, DType] = {d.code: d for d in DTYPES}

#: the safetensors codes of :data:`FLOATS` ("F32", "BF16", "F16")
FLOAT_CODES: tuple[str, ...] = tuple(_BY_KEY[n].code for n in FLOATS)
#: the torch dtypes of :data:`FLOATS`
FLOAT_TORCH_DTYPES: tuple[torch.dtype, ...] = tuple(_BY_KEY[n].torch for n in FLOATS)
#: "fp32", "bf16", "fp16": the short names the CLI offers
SHORT_FLOAT_NAMES: tuple[str, ...] = tuple(_BY_KEY[n].aliases[0] for n in FLOATS)


def _describe(allowed: Sequence[str]) -> str:
    short = [_BY_KEY[n].aliases[0] for n in allowed if _BY_KEY[n].aliases]
    return f"one of {list(allowed)}" + (f" (or {short})" if short else "")


def lookup(dtype: DtypeLike, *, allowed: Optional[Sequence[str]] = None, what: str = "dtype") -> DType:
    """The table row of a name, alias, safetensors code (any case, ``torch.`` prefix allowed) or
    torch dtype; ``allowed`` (canonical names) narrows what is accepted. ``what`` names the argument
    in the error."""
    if isinstance(dtype, DType):
        row: Optional[DType] = dtype
    elif isinstance(dtype, torch.dtype):
        row = _BY_TORCH.get(dtype)
    elif isinstance(dtype, str):
        key = dtype.strip().lower()
        row = _BY_KEY.get(key[len("torch."):] if key.startswith("torch.") else key)
    else:
        row = None
    if row is None or (allowed is not None and row.name not in allowed):
        choices = _describe(allowed) if allowed is not None else "a dtype name such as 'float32' or 'bf16'"
        raise ValueError(f"{what} must be {choices}, got {dtype!r}")
    return row


def torch_dtype(dtype: DtypeLike, *, allowed: Optional[Sequence[str]] = FLOATS, what: str = "dtype") -> torch.dtype:
    """``torch.bfloat16`` from ``"bf16"``, ``"bfloat16"``, ``"BF16"`` or ``torch.bfloat16``.
    By default only :data:`FLOATS` are accepted; ``allowed=None`` accepts any torch-loadable dtype."""
    row = lookup(dtype, allowed=allowed, what=what)
    if row.torch is None:
        raise ValueError(f"{what} {row.name} has no torch dtype here")
    return row.torch


def safetensors_code(dtype: DtypeLike, *, allowed: Optional[Sequence[str]] = FLOATS, what: str = "dtype") -> str:
    """``"BF16"`` from ``"bf16"``, ``"bfloat16"``, ``"BF16"`` or ``torch.bfloat16``."""
    return lookup(dtype, allowed=allowed, what=what).code


def itemsize(dtype: DtypeLike) -> int:
    """Bytes per element of any dtype of the table (a safetensors code, a name, a torch dtype)."""
    return lookup(dtype, allowed=None).itemsize


def config_name(dtype: DtypeLike) -> str:
    """The name config.json's ``torch_dtype`` / ``dtype`` field takes: ``"bfloat16"``."""
    return lookup(dtype, allowed=None).name

