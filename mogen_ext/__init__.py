"""Loader for mogen's compiled kernels (the pybind11 module ``mogen_ext._C``).

``has_cpu_kernels`` / ``has_cuda_kernels`` say what this build carries;
``build_info()`` says how it was built. When ``_C`` is missing (no compiler at
install time, or a source checkout that was never built) both flags are False
and ``load_error`` holds the reason; ``mogen`` then falls back to
``mogen.reference``.
"""

from __future__ import annotations

import importlib
from typing import Any, Optional

import torch  # noqa: F401  (loads libtorch before _C, which links against it)

_C: Any = None
load_error: Optional[str] = None
try:
    _C = importlib.import_module(f"{__name__}._C")
except ImportError as exc:  # pragma: no cover - exercised only without a build
    load_error = f"{type(exc).__name__}: {exc}"

has_cpu_kernels: bool = _C is not None
has_cuda_kernels: bool = bool(_C is not None and _C.compiled_with_cuda())


def build_info() -> dict[str, Any]:
    """How the extension was built: torch and CUDA versions, arch list, flags."""
    info: dict[str, Any] = {"has_cpu_kernels": has_cpu_kernels, "has_cuda_kernels": has_cuda_kernels}
    try:
        from ._build_info import BUILD_INFO  # written by setup.py at build time
        info.update(BUILD_INFO)
    except ImportError:
        pass
    if _C is not None:
        info.update(_C.build_info())
    else:
        info["load_error"] = load_error
    info["torch_runtime_version"] = torch.__version__
    return info


__all__ = ["has_cpu_kernels", "has_cuda_kernels", "build_info", "load_error"]
