"""Evaluation: preference grids, the sweep runner and its reports (metrics in :mod:`mogen.metrics`); prompts
(:mod:`.prompts`), rewards (:mod:`.rewards`) and reward models (:mod:`.reward_models`) as users have them."""

from .config import SweepConfig, load_sweep_config
from .grid import preference_grid
from .method_specs import METHOD_KINDS, MethodSpec
from .reward_models import RewardModel
from .sweep import SweepResult, run_sweep

__all__ = ["METHOD_KINDS", "MethodSpec", "RewardModel", "SweepConfig", "SweepResult", "load_sweep_config",
           "preference_grid", "run_sweep"]
