"""The sweep config (``mogen sweep --config sweep.yaml``): loading and validation.

::

    output: runs/demo                   # the run folder (resumable)
    prompts: prompts.txt                # one prompt per line (relative to this file)
    rewards: [mymod:helpful, mymod:harmless]   # module:function, reward(prompt, response) or reward(response)
    preferences: 11                     # points on the simplex, or an explicit [[mu_1, ..., mu_n], ...]
    samples: 2                          # responses per prompt and preference, per seed
    seeds: 3                            # decoding seeds (decoding.seed, +1, ...), samples pooled over them
    bootstrap: {resamples: 1000, seed: 0}   # the 95% intervals of every metric
    reference_point: [0.0, 0.0]         # for the hypervolume; always explicit
    decoding: {max_new_tokens: 32, do_sample: true, top_p: 0.95, seed: 0}
    models:                             # folders; each method takes what it needs
      tokenizer: base                   # the base family's tokenizer (default: base)
      base: base                        # the SFT / base model
      policies: [policy_a, policy_b]    # base-family single-objective models (Rewarded Soup, MOD)
      backbones: [bb_a, bb_b]           # Bone Soup backbones, with bone_beta (and alpha, sft)
      experts: [e_a, e_b]               # small guides and their shared reference (MPAW, MAGE-I), with
      reference: ref                    # expert_beta (and expert_alpha) for MAGE-I-M's Bone Soup merge
      value_models: [v_a, v_b]          # explicit value models (MAGE-E)
    methods:
      - {name: Rewarded Soup, kind: rewarded_soup}
      - {name: MPAW, kind: mpaw, beta: 1.0}
      - {name: MAGE-E-M, kind: mage, variant: E-M, gamma: 5.0}
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

from ..value.data import Reward
from .bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED
from .grid import preference_grid

__all__ = ["SweepConfig", "MethodSpec", "load_sweep_config", "import_reward", "METHOD_KINDS"]

#: method kind -> the parameters it takes (besides name and kind)
METHOD_KINDS: dict[str, tuple[str, ...]] = {
    "base": (),
    "rewarded_soup": (),
    "bone_soup": ("bone_beta", "alpha"),
    "mod": (),
    "mpaw": ("beta",),
    "mpaw_search": ("beta", "beam_width", "expansion", "chunk_length", "proposal"),
    "mage": ("variant", "beta", "gamma", "value_top_k", "bone_beta", "alpha", "expert_beta", "expert_alpha",
             "search"),
}
_TOP_KEYS = ("output", "prompts", "rewards", "preferences", "samples", "seeds", "bootstrap", "reference_point",
             "decoding", "models", "methods")
_BOOTSTRAP_KEYS = ("resamples", "seed")
_MODEL_KEYS = ("tokenizer", "base", "policies", "backbones", "bone_beta", "alpha", "sft", "experts", "reference",
               "expert_beta", "expert_alpha", "value_models", "guide_tokenizer", "dtype")
_DECODING_KEYS = ("max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "seed", "batch_size")


@dataclass(frozen=True)
class MethodSpec:
    """One row of the comparison: a name, a kind of :data:`METHOD_KINDS`, its parameters."""

    name: str
    kind: str
    params: dict = field(default_factory=dict)


@dataclass
class SweepConfig:
    output: Path
    prompts: list
    rewards: list  # [(spec string, callable)]
    preferences: np.ndarray  # [P, n]
    samples: int
    reference_point: list
    decoding: dict
    models: dict
    methods: list  # [MethodSpec]
    seeds: list = field(default_factory=lambda: [0])  # decoding seeds; each point is decoded once per seed
    resamples: int = DEFAULT_RESAMPLES  # bootstrap replicates behind every interval
    bootstrap_seed: int = DEFAULT_SEED

    @property
    def objectives(self) -> int:
        return self.preferences.shape[1]

    def with_seeds(self, count: int, offset: int = 0) -> "SweepConfig":
        """This config decoded with ``count`` seeds starting at ``decoding.seed + offset``."""
        _positive_int(count, "seeds")
        first = int(self.decoding.get("seed", 0)) + int(offset)
        return dataclasses.replace(self, seeds=list(range(first, first + count)))


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"sweep config: {key} must be an int >= 1, got {value!r}")
    return value


def _unknown(given: Any, known: tuple, where: str) -> None:
    extra = sorted(set(given) - set(known))
    if extra:
        raise ValueError(f"sweep config: unknown key(s) {extra} in {where}; known: {list(known)}")


def import_reward(spec: str) -> Reward:
    """``module:function`` as ``reward(prompt, response) -> float`` (a one-argument function gets the response)."""
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise ValueError(f"sweep config: a reward must be 'module:function', got {spec!r}")
    module, name = spec.split(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"sweep config: cannot import reward {spec!r}: {exc}") from None
    if not callable(fn):
        raise ValueError(f"sweep config: reward {spec!r} is not callable")
    try:
        takes_one = len([p for p in inspect.signature(fn).parameters.values()
                         if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]) == 1
    except (TypeError, ValueError):
        takes_one = False
    return (lambda prompt, response: fn(response)) if takes_one else fn


def _methods(raw: Any) -> list[MethodSpec]:
    if not isinstance(raw, list) or not raw:
        raise ValueError("sweep config: methods must be a non-empty list of {name, kind, ...}")
    out, names = [], set()
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or "kind" not in m or "name" not in m:
            raise ValueError(f"sweep config: methods[{i}] must be a mapping with 'name' and 'kind'")
        kind = m["kind"]
        if kind not in METHOD_KINDS:
            raise ValueError(f"sweep config: methods[{i}] has unknown kind {kind!r}; known: {list(METHOD_KINDS)}")
        params = {k: v for k, v in m.items() if k not in ("name", "kind")}
        _unknown(params, METHOD_KINDS[kind], f"methods[{i}] ({kind})")
        if m["name"] in names:
            raise ValueError(f"sweep config: two methods are named {m['name']!r}")
        names.add(m["name"])
        out.append(MethodSpec(str(m["name"]), kind, params))
    return out


def _paths(models: dict, root: Path) -> dict:
    out = dict(models)
    for key in ("tokenizer", "base", "sft", "reference", "guide_tokenizer"):
        if isinstance(out.get(key), str):
            out[key] = root / out[key]
    for key in ("policies", "backbones", "experts", "value_models"):
        if out.get(key) is not None:
            out[key] = [root / p for p in out[key]]
    out.setdefault("tokenizer", out.get("base"))
    return out


def load_sweep_config(source: Union[str, Path, dict], root: Union[str, Path, None] = None) -> SweepConfig:
    """A validated :class:`SweepConfig` from a YAML file or a dict (paths relative to the file, or ``root``)."""
    import yaml

    if isinstance(source, dict):
        raw, base_dir = source, Path(root or ".")
    else:
        path = Path(source)
        raw, base_dir = yaml.safe_load(path.read_text()), Path(root or path.parent)
    if not isinstance(raw, dict):
        raise ValueError("sweep config: the top level must be a mapping")
    _unknown(raw, _TOP_KEYS, "the top level")
    for key in ("output", "prompts", "rewards", "reference_point", "models", "methods"):
        if key not in raw:
            raise ValueError(f"sweep config: '{key}' is required")
    models = raw["models"] or {}
    _unknown(models, _MODEL_KEYS, "models")
    decoding = dict(raw.get("decoding") or {})
    _unknown(decoding, _DECODING_KEYS, "decoding")
    prompts = raw["prompts"]
    if isinstance(prompts, str):
        prompts = [ln for ln in (base_dir / prompts).read_text().splitlines() if ln.strip()]
    if not prompts:
        raise ValueError("sweep config: prompts is empty")
    rewards = [(spec, import_reward(spec)) for spec in raw["rewards"]]
    prefs = raw.get("preferences", 11)
    grid = preference_grid(len(rewards), prefs) if isinstance(prefs, int) else np.asarray(prefs, dtype=np.float64)
    if grid.ndim != 2 or grid.shape[1] != len(rewards):
        raise ValueError(f"sweep config: preferences must be [P, {len(rewards)}] (one weight per reward)")
    ref = [float(x) for x in raw["reference_point"]]
    if len(ref) != len(rewards) or not all(math.isfinite(x) for x in ref):
        raise ValueError(f"sweep config: reference_point must be {len(rewards)} finite numbers, got {ref}")
    samples = _positive_int(raw.get("samples", 1), "samples")
    boot = dict(raw.get("bootstrap") or {})
    _unknown(boot, _BOOTSTRAP_KEYS, "bootstrap")
    resamples = _positive_int(boot.get("resamples", DEFAULT_RESAMPLES), "bootstrap.resamples")
    boot_seed = boot.get("seed", DEFAULT_SEED)
    if isinstance(boot_seed, bool) or not isinstance(boot_seed, int):
        raise ValueError(f"sweep config: bootstrap.seed must be an int, got {boot_seed!r}")
    cfg = SweepConfig(base_dir / raw["output"], list(prompts), rewards, grid, samples, ref, decoding,
                      _paths(models, base_dir), _methods(raw["methods"]), resamples=resamples,
                      bootstrap_seed=boot_seed)
    return cfg.with_seeds(_positive_int(raw.get("seeds", 1), "seeds"))
