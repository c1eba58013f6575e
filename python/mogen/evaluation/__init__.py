"""Evaluation: preference grids, the sweep runner and its reports (metrics in :mod:`mogen.metrics`)."""

from .config import METHOD_KINDS, MethodSpec, SweepConfig, load_sweep_config
from .grid import preference_grid
from .sweep import SweepResult, run_sweep

__all__ = ["METHOD_KINDS", "MethodSpec", "SweepConfig", "SweepResult", "load_sweep_config", "preference_grid",
           "run_sweep"]
