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
the same way. Fake (meta) kernels for tracing are registered on import.

Modules: :mod:`~mogen.ops.fusion` (K1: fused scores, top k, argmax),
:mod:`~mogen.ops.value` (K2: value scores at candidate ids),
:mod:`~mogen.ops.sampling` (top-p mask, one draw per row),
:mod:`~mogen.ops.checks` (the argument checks they share) and
:mod:`~mogen.ops.fakes` (the fake kernels).
"""

from __future__ import annotations

import torch

# mogen.ops.reference and mogen.ops._map_range were reachable here when ops was
# one module (tests use the first); the imports keep them so.
from .. import _backend, reference  # noqa: F401
from . import fakes
from .checks import TensorList, _map_range  # noqa: F401
from .fusion import fused_log_ratio, fused_log_ratio_argmax, fused_log_ratio_topk
from .sampling import sample, top_p_mask
from .value import topk_value_scores

__all__ = ["fused_log_ratio", "fused_log_ratio_topk", "fused_log_ratio_argmax", "topk_value_scores", "top_p_mask",
           "sample"]


def _register_fakes() -> None:
    # Here rather than in fakes.py: torch checks, on a fake kernel's first use, that
    # it was registered from the module csrc/library.cpp names in set_python_module
    # ("mogen.ops", this one), and torch imports that module to find the fakes.
    for name, fake in fakes.FAKES.items():
        torch.library.register_fake(f"mogen::{name}", fake)


if _backend.kernels() is not None:
    _register_fakes()
