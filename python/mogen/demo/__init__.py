"""The embedded demo: tiny models built in-process, two conflicting objectives.

``mogen demo`` / ``make demo`` runs :func:`run_demo`; the models are built once
(deterministically, about a minute on 2 CPU cores) and cached, see
:mod:`mogen.demo.train`.
"""

from .corpus import OBJECTIVES, PROMPTS, city_rate, nature_rate
from .run import DemoResult, decode_demo, run_demo
from .train import DemoConfig, DemoModels, build_demo_models, cache_root, load_demo_models

__all__ = [
    "run_demo",
    "decode_demo",
    "DemoResult",
    "DemoConfig",
    "DemoModels",
    "build_demo_models",
    "load_demo_models",
    "cache_root",
    "OBJECTIVES",
    "PROMPTS",
    "nature_rate",
    "city_rate",
]
