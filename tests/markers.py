"""Shared pytest markers."""

from __future__ import annotations

import pytest
import torch

import mogen_ext

# Kernel tests on CUDA tensors: they need a GPU and an extension built with CUDA kernels.
# conftest.py also gives every test carrying it the `cuda` marker, so `pytest -m cuda`
# (what `make gpu-check` runs) selects them with tests/test_merge_cuda.py's.
requires_cuda_kernels = pytest.mark.skipif(
    not (torch.cuda.is_available() and mogen_ext.has_cuda_kernels),
    reason="needs a CUDA GPU and a CUDA build of mogen_ext"
    if not torch.cuda.is_available()
    else "mogen_ext was built without CUDA kernels",
)
