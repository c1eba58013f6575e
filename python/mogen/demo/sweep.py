"""The embedded comparison: every method over 11 preferences on the demo task (15 with three objectives).

``mogen demo --sweep`` / ``make sweep`` runs :func:`mogen.evaluation.run_sweep`
on the demo models (base family: base, policies, Bone Soup backbones; small
guides: experts, reference, value models) and records the metrics table and
the Pareto plot as ``benchmarks/results/pareto_demo.{md,png}`` when run from
the source checkout. ``mogen demo --sweep --objectives 3`` does the same on the
three-objective variant (nature, city, ocean; :data:`DEMO_POINTS` lattice) and
records ``pareto_demo3.{md,png}``: measured and recorded, with no targets.
``mogen demo --sweep --cross-family`` runs :data:`CROSS_METHODS` on the
cross-family variant (guides whose tokenizer covers ~29% of the base's
vocabulary: :mod:`mogen.demo.vocabs`): MPAW token-level and MAGE-I with each
``cross_vocab`` mode, recorded as ``pareto_demo_cross.{md,png}`` with the
coverage in its heading and the text-vs-map lines of
:func:`mogen.demo.checks.text_vs_map_lines`.
The run folder (every text, resumable) lives in the cache.

The demo's rewards are its objectives' word rates (``mogen.demo.corpus``
functions); ``rewards=`` scores the same comparison with any reward entries
of the sweep config instead (``module:function`` strings, ``{model: folder,
...}`` reward models: :mod:`mogen.evaluation.rewards`), one per objective.
Such a run is printed, never recorded, and has no target checks.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any, Optional, Sequence, TextIO, Union

from ..evaluation import run_sweep
from . import corpus as demo_corpus
from .checks import target_lines, text_vs_map_lines
from .run import DEMO_GAMMA
from .train import DemoConfig, cache_root, load_demo_models
from .vocabs import guide_coverage

__all__ = ["demo_sweep_config", "run_demo_sweep", "DEMO_METHODS", "CROSS_METHODS", "DEMO_POINTS", "DEMO_SAMPLES",
           "DEMO_SEEDS"]

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
    {"name": "MAGE-I-M-linear", "kind": "mage", "variant": "I-M-linear"},
]


#: The rows of the cross-family comparison: the guides' two ways of scoring base tokens
#: (``cross_vocab``; ``"text"`` with its default 20 candidates per row), base only as the floor. The last row
#: is a diagnostic, not a tuned method: a text term sums the guide's log-ratio over every guide token a
#: candidate adds (a whole word where the map scores one shared piece), so at one ``beta`` it steers harder;
#: MAGE-I's Stage-1 base already steers, and halving ``beta`` shows what that extra strength does to its front.
CROSS_METHODS: list[dict] = [
    {"name": "base only", "kind": "base"},
    {"name": "MPAW token-level (map)", "kind": "mpaw", "cross_vocab": "map"},
    {"name": "MPAW token-level (text)", "kind": "mpaw", "cross_vocab": "text"},
    {"name": "MAGE-I (map)", "kind": "mage", "variant": "I", "cross_vocab": "map"},
    {"name": "MAGE-I (text)", "kind": "mage", "variant": "I", "cross_vocab": "text"},
    {"name": "MAGE-I (text, beta 0.5)", "kind": "mage", "variant": "I", "cross_vocab": "text", "beta": 0.5},
]

#: Preference points per objective count (the ``preferences`` of the sweep config): 11 for two objectives
#: (steps of 0.1); for three, 5 means the lattice of step 1/4 on the simplex, 15 points.
DEMO_POINTS: dict[int, int] = {2: 11, 3: 5}

#: The recorded table's file stem under benchmarks/results and its heading, per (objective count, guide family);
#: the cross-family heading's ``{vocab}``, ``{text}``, ``{words}`` are :func:`guide_coverage`'s shares.
_RECORDS: dict[tuple[int, str], tuple[str, str]] = {
    (2, "metaspace"): ("pareto_demo", "## Embedded comparison (demo task, 11 preferences, objective 1 = "
                                      "nature-word rate, objective 2 = city-word rate)"),
    (3, "metaspace"): ("pareto_demo3", "## Embedded comparison, three objectives (demo task, 15 preferences: the "
                                       "lattice of step 1/4 on the simplex; objectives 1-3 = nature-, city-, "
                                       "ocean-word rate; recorded, no targets)"),
    (2, "cross"): ("pareto_demo_cross", "## Embedded comparison, cross-family guides (demo task, 11 preferences; "
                                        "the guides' tokenizer gives {vocab:.1%} of the base's vocabulary a "
                                        "same-bytes guide token, {text:.1%} of the base tokens of the corpus, "
                                        "{words:.0%} of the topic words; cross_vocab map vs text)"),
}


#: Samples per prompt, preference and seed, and decoding seeds: 8 prompts x 8 samples x 3 seeds = 192 texts
#: per point. One seed's verdicts flipped between machines (CPU arithmetic differs in the last bits, and
#: one run cannot tell that from a real difference); three seeds, pooled and bootstrapped, give every
#: metric an interval, and keep ``make sweep`` within 15 minutes on 2 cores.
DEMO_SAMPLES = 8
DEMO_SEEDS = 3


def demo_sweep_config(path: Path, output: Path, *, samples: int = DEMO_SAMPLES, points: Optional[int] = None,
                      max_new_tokens: int = 24, methods: Optional[list] = None, objectives: int = 2,
                      rewards: Optional[Sequence[Any]] = None) -> dict:
    """The sweep config of the ``objectives``-objective demo models in folder ``path``
    (see :mod:`mogen.evaluation.config`); ``points`` defaults to :data:`DEMO_POINTS`; ``rewards``: reward
    entries, one per objective, instead of the demo's word rates."""
    objs = demo_corpus.objectives(objectives)
    names = [n for n, _ in objs]
    if rewards is not None and len(rewards) != objectives:
        raise ValueError(f"the {objectives}-objective demo takes {objectives} rewards, got {len(rewards)}")
    return {
        "output": str(output), "prompts": list(demo_corpus.PROMPTS), "samples": samples,
        "preferences": points if points is not None else DEMO_POINTS[objectives],
        "rewards": list(rewards) if rewards is not None else [f"mogen.demo.corpus:{fn.__name__}" for _, fn in objs],
        "reference_point": [0.0] * objectives,
        "decoding": {"max_new_tokens": max_new_tokens, "do_sample": True, "top_k": 0, "top_p": 0.95, "seed": 0},
        "models": {
            "tokenizer": str(path / "base"), "base": str(path / "base"),
            "policies": [str(path / f"policy_{n}") for n in names],
            "backbones": [str(path / f"backbone_{n}") for n in names], "bone_beta": DemoConfig().bone_beta,
            "experts": [str(path / f"expert_{n}") for n in names], "reference": str(path / "reference"),
            "expert_beta": DemoConfig().expert_beta,
            "value_models": [str(path / f"value_{n}") for n in names],
        },
        "methods": list(methods if methods is not None else DEMO_METHODS),
    }


def _checks(output: Path, table: list, objectives: int, guide_family: str) -> list[str]:
    """The lines printed (and recorded) under a run's table: the targets, or text vs map for cross-family."""
    if guide_family == "cross":
        return text_vs_map_lines(output, table)
    return target_lines(output, table) if objectives == 2 else []


def run_demo_sweep(*, samples: int = DEMO_SAMPLES, seeds: int = DEMO_SEEDS, seed_offset: int = 0, record: bool = True,
                   stream: TextIO = sys.stdout, objectives: int = 2, rewards: Optional[Sequence[Any]] = None,
                   guide_family: str = "metaspace", ray: Union[bool, str, None] = None) -> Path:
    """Run (or resume) the embedded comparison with 2 or 3 objectives (building the demo models of that
    variant if needed); print and (from a checkout) record the table, the targets' checks (two objectives:
    :func:`mogen.demo.checks.target_lines`) and the plot. ``rewards``: reward entries instead of the demo's
    (the module docstring); such a run is only printed. ``guide_family="cross"``: the cross-family
    comparison (:data:`CROSS_METHODS`, two objectives), with the text-vs-map lines instead of the targets.
    ``ray``: decode the points on Ray (:func:`mogen.evaluation.run_sweep`'s ``ray``; the same texts and table)."""
    if (objectives, guide_family) not in _RECORDS:
        raise ValueError(f"no {objectives}-objective comparison with guide family {guide_family!r}: "
                         f"the comparisons are {sorted(_RECORDS)}")
    config = DemoConfig(objectives=objectives, guide_family=guide_family)
    models = load_demo_models(config, log=lambda line: print(line, file=stream, flush=True))
    output = cache_root() / "sweep" / models.path.name
    methods = CROSS_METHODS if guide_family == "cross" else None
    res = run_sweep(demo_sweep_config(models.path, output, samples=samples, objectives=objectives, rewards=rewards,
                                      methods=methods), seeds=seeds, seed_offset=seed_offset, ray=ray)
    table = (output / "metrics.md").read_text()
    checks = _checks(output, res.table, objectives, guide_family) if rewards is None else []
    if checks:
        table += "\n" + "\n".join(checks) + "\n"
    print(table, file=stream)
    results = Path(__file__).resolve().parents[3] / "benchmarks" / "results"
    if record and rewards is None and results.is_dir():
        stem, head = _RECORDS[objectives, guide_family]
        cov = guide_coverage(config)
        (results / f"{stem}.md").write_text(head.format(vocab=cov["vocab"], text=cov["text"],
                                                        words=cov["topic_words"]) + "\n\n" + table)
        shutil.copyfile(output / "pareto.png", results / f"{stem}.png")
        print(f"recorded {results / stem}.md and {stem}.png ({res.decoded} points decoded now)", file=stream)
    return output
