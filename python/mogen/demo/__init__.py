"""The embedded demo: tiny models built in-process, two conflicting objectives (three in a variant).

``mogen demo`` / ``make demo`` runs :func:`run_demo`; the models are built once
(deterministically, about a minute on 2 CPU cores) and cached, see
:mod:`mogen.demo.train`.
"""

from .corpus import OBJECTIVES, OBJECTIVES_3, PROMPTS, city_rate, nature_rate, objectives, ocean_rate
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
    "OBJECTIVES_3",
    "objectives",
    "PROMPTS",
    "nature_rate",
    "city_rate",
    "ocean_rate",
]
