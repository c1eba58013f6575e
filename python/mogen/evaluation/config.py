"""The sweep config (``mogen sweep --config sweep.yaml``): loading and validation.

::

    output: runs/demo                   # the run folder (resumable)
    prompts: prompts.txt                # one prompt per line (relative to this file), or a list, or
                                        # {path, field, split, limit, shuffle_seed, chat_template}: see below
    rewards:                            # one entry per objective, in preference order:
      - mymod:helpful                   #   module:function, reward(prompt, response) or reward(response)
      - {function: mymod:harmless, offset: 0.5, scale: 2.0}   # the same, normalised
      - {model: rm_folder, label: 0, batch_size: 16, max_length: 512, template: "{prompt}{response}"}
                                        #   a sequence-classification reward model ("chat": its chat template)
    preferences: 11                     # points on the simplex, or an explicit [[mu_1, ..., mu_n], ...]
    samples: 2                          # responses per prompt and preference, per seed
    seeds: 3                            # decoding seeds (decoding.seed, +1, ...), samples pooled over them
    bootstrap: {resamples: 1000, seed: 0}   # the 95% intervals of every metric
    reference_point: [0.0, 0.0]         # for the hypervolume; always explicit
    decoding: {max_new_tokens: 32, do_sample: true, top_p: 0.95, seed: 0}   # model.generate's arguments
                                        # (its defaults too: top_k 50 when sampling; top_k: 0 turns it off)
    models:                             # folders; each method takes what it needs
      tokenizer: base                   # the base family's tokenizer (default: base)
      base: base                        # the SFT / base model
      policies: [policy_a, policy_b]    # base-family single-objective models (Rewarded Soup, MOD)
      backbones: [bb_a, bb_b]           # Bone Soup backbones, with bone_beta (and alpha, sft)
      experts: [e_a, e_b]               # small guides and their shared reference (MPAW, MAGE-I), with
      reference: ref                    # expert_beta (and expert_alpha) for MAGE-I-M's Bone Soup merge
      value_models: [v_a, v_b]          # explicit value models (MAGE-E)
      dtype: float32                    # every model's dtype, the reward models' too
    methods:
      - {name: Rewarded Soup, kind: rewarded_soup}
      - {name: MPAW, kind: mpaw, beta: 1.0}
      - {name: MAGE-E-M, kind: mage, variant: E-M, gamma: 5.0}

Prompts (:mod:`mogen.evaluation.prompts`): ``{path: data.jsonl, field: prompt, split: train, limit: 100,
shuffle_seed: 0, chat_template: true}`` reads a ``.txt`` file, or with the ``datasets`` library (``pip install
'mogen[data]'``) a ``.jsonl`` / ``.json``, ``.csv`` or ``.parquet`` file or a ``save_to_disk`` folder: column
``field`` (default ``prompt``) of ``split``, rows shuffled with ``shuffle_seed`` then cut to ``limit``;
``chat_template: true`` decodes each prompt through the base tokenizer's chat template (the rewards see the raw
prompt).

Rewards (:mod:`mogen.evaluation.rewards`, :mod:`mogen.evaluation.reward_models`): every reward gives a raw
score; the metrics use ``reward = (raw - offset) * scale`` (offset 0, scale 1 by default). A reward model is a
``...ForSequenceClassification`` folder with its tokenizer; its raw score is logit ``label`` of the text
``template`` renders (``{prompt}`` / ``{response}`` fields, or ``chat``: the tokenizer's chat template on
[user: prompt, assistant: response]), scored in batches of ``batch_size`` under ``torch.inference_mode`` on the
sweep's device and ``models.dtype``, ids cut to ``max_length``. Raw scores are cached in the point files, so a
resumed or extended run scores only what is missing. ``name`` (optional) heads the reward's column.

Every error is a :class:`~mogen.configs.ConfigError` naming the file and the key path (``rewards[2].label``,
``prompts.field``): a reward folder that is missing, not a sequence classifier or without logit ``label``, a
prompt field that does not exist, ...
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import yaml

from ..configs import ConfigError, check_dtype, config_errors, key_path, parse, unknown_keys
from ..mage import BONE_SOUP_KEYS, MAGE_KEYS, MAGEConfig
from .bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED
from .grid import preference_grid
from .prompts import PromptSource, check_chat_template, read_prompts
from .rewards import RewardSpec, import_reward, parse_reward

__all__ = ["SweepConfig", "SweepFile", "MethodSpec", "load_sweep_config", "parse_sweep_file", "import_reward",
           "METHOD_KINDS", "RewardSpec"]

_LABEL = "sweep config"


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(key, f"must be an int >= 1, got {value!r}", label=_LABEL)
    return value


def _check_positive(value: Optional[int], path: str) -> None:
    if value is not None:
        _positive_int(value, path)


def _pos(default: Any = None) -> Any:
    return field(default=default, metadata={"check": _check_positive})


@dataclass
class _MpawParams:
    beta: Optional[float] = None


@dataclass
class _SearchParams:
    beta: Optional[float] = None
    beam_width: Optional[int] = _pos()
    expansion: Optional[int] = _pos()
    chunk_length: Optional[int] = _pos()
    proposal: Any = None


#: method kind -> the parameters it takes (besides name and kind); mage and bone_soup's are MAGEConfig's
METHOD_KINDS: dict[str, tuple[str, ...]] = {
    "base": (),
    "rewarded_soup": (),
    "bone_soup": BONE_SOUP_KEYS,
    "mod": (),
    "mpaw": tuple(f.name for f in dataclasses.fields(_MpawParams)),
    "mpaw_search": tuple(f.name for f in dataclasses.fields(_SearchParams)),
    "mage": MAGE_KEYS,
}


@dataclass
class _Bootstrap:
    resamples: int = _pos(DEFAULT_RESAMPLES)
    seed: int = DEFAULT_SEED


@dataclass
class _Decoding:
    max_new_tokens: Optional[int] = _pos()
    do_sample: Optional[bool] = None
    temperature: Optional[float] = None
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    seed: Optional[int] = None
    batch_size: Optional[int] = _pos()


_Path = Union[str, Path]


@dataclass
class _ModelPaths:
    tokenizer: Optional[_Path] = None
    base: Optional[_Path] = None
    policies: Optional[list[_Path]] = None
    backbones: Optional[list[_Path]] = None
    bone_beta: Optional[float] = None
    alpha: Optional[float] = None
    sft: Optional[_Path] = None
    experts: Optional[list[_Path]] = None
    reference: Optional[_Path] = None
    expert_beta: Optional[float] = None
    expert_alpha: Optional[float] = None
    value_models: Optional[list[_Path]] = None
    guide_tokenizer: Optional[_Path] = None
    dtype: Optional[str] = field(default=None, metadata={"check": check_dtype})


def _finite_list(value: list, path: str) -> None:
    if not all(math.isfinite(x) for x in value):
        raise ConfigError(path, f"must be finite numbers, got {value}")


@dataclass
class SweepFile:
    """A sweep config as written (the module docstring's keys), checked key by key."""

    output: _Path
    prompts: Union[str, list[str], PromptSource]
    rewards: list[Union[str, dict]]  # each checked by mogen.evaluation.rewards.parse_reward
    reference_point: list[float] = field(metadata={"check": _finite_list})
    models: Optional[_ModelPaths]
    methods: list[dict]
    preferences: Union[int, list[list[float]]] = 11
    samples: int = _pos(1)
    seeds: int = _pos(1)
    bootstrap: Optional[_Bootstrap] = None
    decoding: Optional[_Decoding] = None


#: the keys of each level, from the schema
_TOP_KEYS = tuple(f.name for f in dataclasses.fields(SweepFile))
_BOOTSTRAP_KEYS = tuple(f.name for f in dataclasses.fields(_Bootstrap))
_MODEL_KEYS = tuple(f.name for f in dataclasses.fields(_ModelPaths))
_DECODING_KEYS = tuple(f.name for f in dataclasses.fields(_Decoding))


@dataclass(frozen=True)
class MethodSpec:
    """One row of the comparison: a name, a kind of :data:`METHOD_KINDS`, its parameters."""

    name: str
    kind: str
    params: dict = field(default_factory=dict)


@dataclass
class SweepConfig:
    """A checked sweep config: paths resolved, prompts read, rewards checked (:class:`RewardSpec`)."""

    output: Path
    prompts: list  # the raw prompts (what the rewards see)
    rewards: list  # [RewardSpec], one per objective
    preferences: np.ndarray  # [P, n]
    samples: int
    reference_point: list
    decoding: dict
    models: dict
    methods: list  # [MethodSpec]
    seeds: list = field(default_factory=lambda: [0])  # decoding seeds; each point is decoded once per seed
    resamples: int = DEFAULT_RESAMPLES  # bootstrap replicates behind every interval
    bootstrap_seed: int = DEFAULT_SEED
    chat_template: bool = False  # decode each prompt through the base tokenizer's chat template

    @property
    def objectives(self) -> int:
        return self.preferences.shape[1]

    def with_seeds(self, count: int, offset: int = 0) -> "SweepConfig":
        """This config decoded with ``count`` seeds starting at ``decoding.seed + offset``."""
        with config_errors(label=_LABEL):
            _positive_int(count, "seeds")
        first = int(self.decoding.get("seed", 0)) + int(offset)
        return dataclasses.replace(self, seeds=list(range(first, first + count)))


_KIND_SCHEMAS = {"mpaw": _MpawParams, "mpaw_search": _SearchParams}


def _method(m: Any, where: str) -> MethodSpec:
    """One ``methods`` entry, its parameters checked by its kind's schema (MAGE's for mage and bone_soup)."""
    if not isinstance(m, dict) or "kind" not in m or "name" not in m:
        raise ConfigError(where, "must be a mapping with 'name' and 'kind'")
    kind = m["kind"]
    if kind not in METHOD_KINDS:
        raise ConfigError(key_path(where, "kind"), f"unknown kind {kind!r}; known: {list(METHOD_KINDS)}")
    if not isinstance(m["name"], str):
        raise ConfigError(key_path(where, "name"), f"expected a string, got {m['name']!r}")
    params = {k: v for k, v in m.items() if k not in ("name", "kind")}
    unknown_keys(params, METHOD_KINDS[kind], where, f" for kind {kind!r}")
    if kind in ("mage", "bone_soup"):
        parse(MAGEConfig, {"variant": "none", **params}, where)
    elif kind in _KIND_SCHEMAS:
        parse(_KIND_SCHEMAS[kind], params, where)
    return MethodSpec(m["name"], kind, params)


def _methods(raw: list) -> list[MethodSpec]:
    if not raw:
        raise ConfigError("methods", "must be a non-empty list of {name, kind, ...}")
    out, names = [], set()
    for i, m in enumerate(raw):
        spec = _method(m, key_path("methods", i))
        if spec.name in names:
            raise ConfigError(key_path(key_path("methods", i), "name"), f"two methods are named {spec.name!r}")
        names.add(spec.name)
        out.append(spec)
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


def parse_sweep_file(raw: Any, file: Any = None) -> SweepFile:
    """The checked :class:`SweepFile` of a mapping (``file``: where it was read, for errors)."""
    with config_errors(file, _LABEL):
        return parse(SweepFile, raw)


def _preferences(raw: SweepFile, n: int) -> np.ndarray:
    prefs = raw.preferences
    try:
        grid = preference_grid(n, prefs) if isinstance(prefs, int) else np.asarray(prefs, dtype=np.float64)
    except ValueError as exc:
        raise ConfigError("preferences", str(exc)) from None
    if grid.ndim != 2 or grid.shape[1] != n:
        raise ConfigError("preferences", f"preferences must be [P, {n}] (one weight per reward)")
    return grid


def _build(raw: SweepFile, base_dir: Path) -> SweepConfig:
    prompts = read_prompts(raw.prompts, base_dir)
    dtype = raw.models.dtype if raw.models is not None else None
    rewards = [parse_reward(entry, key_path("rewards", i), base_dir, dtype) for i, entry in enumerate(raw.rewards)]
    grid = _preferences(raw, len(rewards))
    ref = list(raw.reference_point)
    if len(ref) != len(rewards):
        raise ConfigError("reference_point", f"reference_point must be {len(rewards)} finite numbers, got {ref}")
    boot = raw.bootstrap or _Bootstrap()
    models = {k: v for k, v in dataclasses.asdict(raw.models or _ModelPaths()).items() if v is not None}
    decoding = {k: v for k, v in dataclasses.asdict(raw.decoding or _Decoding()).items() if v is not None}
    paths = _paths(models, base_dir)
    chat = isinstance(raw.prompts, PromptSource) and raw.prompts.chat_template
    if chat:
        check_chat_template(paths.get("tokenizer"))
    cfg = SweepConfig(base_dir / raw.output, list(prompts), rewards, grid, raw.samples, ref, decoding, paths,
                      _methods(raw.methods), resamples=boot.resamples, bootstrap_seed=boot.seed, chat_template=chat)
    return cfg.with_seeds(raw.seeds)


def load_sweep_config(source: Union[str, Path, dict], root: Union[str, Path, None] = None) -> SweepConfig:
    """A validated :class:`SweepConfig` from a YAML file or a dict (paths relative to the file, or ``root``).
    Every error is a :class:`~mogen.configs.ConfigError` naming the key path (and the file)."""
    if isinstance(source, dict):
        raw, base_dir, file = source, Path(root or "."), None
    else:
        file = Path(source)
        try:
            raw = yaml.safe_load(file.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError("", f"not valid YAML ({exc})", file) from None
        base_dir = Path(root or file.parent)
    checked = parse_sweep_file(raw, file)
    with config_errors(file, _LABEL):
        return _build(checked, base_dir)
