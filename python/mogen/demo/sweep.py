"""The embedded comparison: every method over 11 preferences on the demo task.

``mogen demo --sweep`` / ``make sweep`` runs :func:`mogen.evaluation.run_sweep`
on the demo models (base family: base, policies, Bone Soup backbones; small
guides: experts, reference, value models) and records the metrics table and
the Pareto plot as ``benchmarks/results/pareto_demo.{md,png}`` when run from
the source checkout. The run folder (every text, resumable) lives in the cache.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Optional, TextIO

from . import corpus as demo_corpus
from .run import DEMO_GAMMA
from .train import DemoConfig, cache_root, load_demo_models

__all__ = ["demo_sweep_config", "run_demo_sweep", "DEMO_METHODS"]

#: The rows of the comparison (MAGE Table 2 / MPAW Table 1 on the demo task).
DEMO_METHODS: list[dict] = [
    {"name": "base only", "kind": "base"},
    {"name": "Rewarded Soup", "kind": "rewarded_soup"},
    {"name": "Bone Soup", "kind": "bone_soup"},
    {"name": "MOD (logit mixing)", "kind": "mod"},
    {"name": "MPAW token-level", "kind": "mpaw"},
    {"name": "MPAW chunk search", "kind": "mpaw_search", "beam_width": 4, "expansion": 4, "chunk_length": 8},
    {"name": "MAGE-E", "kind": "mage", "variant": "E", "gamma": DEMO_GAMMA},
    {"name": "MAGE-E-M", "kind": "mage", "variant": "E-M", "gamma": DEMO_GAMMA},
    {"name": "MAGE-I", "kind": "mage", "variant": "I"},
    {"name": "MAGE-I-M", "kind": "mage", "variant": "I-M"},
]


def demo_sweep_config(path: Path, output: Path, *, samples: int = 4, points: int = 11, max_new_tokens: int = 24,
                      methods: Optional[list] = None) -> dict:
    """The sweep config of the demo models in folder ``path`` (see :mod:`mogen.evaluation.config`)."""
    names = [n for n, _ in demo_corpus.OBJECTIVES]
    return {
        "output": str(output), "prompts": list(demo_corpus.PROMPTS), "samples": samples, "preferences": points,
        "rewards": [f"mogen.demo.corpus:{fn.__name__}" for _, fn in demo_corpus.OBJECTIVES],
        "reference_point": [0.0, 0.0],
        "decoding": {"max_new_tokens": max_new_tokens, "do_sample": True, "top_p": 0.95, "seed": 0},
        "models": {
            "tokenizer": str(path / "base"), "base": str(path / "base"),
            "policies": [str(path / f"policy_{n}") for n in names],
            "backbones": [str(path / f"backbone_{n}") for n in names], "bone_beta": DemoConfig().bone_beta,
            "experts": [str(path / f"expert_{n}") for n in names], "reference": str(path / "reference"),
            "value_models": [str(path / f"value_{n}") for n in names],
        },
        "methods": list(methods if methods is not None else DEMO_METHODS),
    }


def run_demo_sweep(*, samples: int = 4, record: bool = True, stream: TextIO = sys.stdout) -> Path:
    """Run (or resume) the embedded comparison; print and (from a checkout) record the table and plot."""
    from ..evaluation import run_sweep

    models = load_demo_models(log=lambda line: print(line, file=stream, flush=True))
    output = cache_root() / "sweep" / models.path.name
    res = run_sweep(demo_sweep_config(models.path, output, samples=samples))
    table = (output / "metrics.md").read_text()
    print(table, file=stream)
    results = Path(__file__).resolve().parents[3] / "benchmarks" / "results"
    if record and results.is_dir():
        head = ("## Embedded comparison (demo task, 11 preferences, objective 1 = nature-word rate, "
                "objective 2 = city-word rate)\n\n")
        (results / "pareto_demo.md").write_text(head + table)
        shutil.copyfile(output / "pareto.png", results / "pareto_demo.png")
        print(f"recorded {results / 'pareto_demo.md'} and pareto_demo.png ({res.decoded} points decoded now)",
              file=stream)
    return output
