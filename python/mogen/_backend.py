"""Which implementation serves an op: the compiled CUDA kernel, the compiled CPU
kernel, or ``mogen.reference`` (with one warning when the extension is missing)."""

from __future__ import annotations

import warnings
from typing import Any, Optional

import torch

try:
    import mogen_ext as _ext
except ImportError as exc:  # pragma: no cover - the shim itself is missing
    _ext = None
    _IMPORT_ERROR: Optional[str] = str(exc)
else:
    _IMPORT_ERROR = _ext.load_error

_warned = False


def kernels() -> Any:
    """The compiled module ``mogen_ext._C``, or None."""
    return None if _ext is None else _ext._C


def has_kernels_for(device: torch.device) -> bool:
    if _ext is None or _ext._C is None:
        return False
    if device.type == "cpu":
        return bool(_ext.has_cpu_kernels)
    if device.type == "cuda":
        return bool(_ext.has_cuda_kernels)
    return False


def warn_fallback(device: torch.device) -> None:
    """Warn once per process that an op runs on the slow pure-PyTorch reference."""
    global _warned
    if _warned:
        return
    _warned = True
    if _ext is None or _ext._C is None:
        why = f"the compiled extension mogen_ext._C could not be loaded ({_IMPORT_ERROR})"
    else:
        why = f"this build has no kernels for device '{device.type}'"
    warnings.warn(
        f"mogen: {why}; falling back to the pure-PyTorch reference (correct but slower). "
        "Rebuild with `pip install --no-build-isolation -e .`.",
        RuntimeWarning,
        stacklevel=3,
    )
