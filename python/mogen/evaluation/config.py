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
                                        # (at least 2 distinct points, each on the simplex)
    samples: 2                          # responses per prompt and preference, per seed
    seeds: 3                            # decoding seeds (decoding.seed, +1, ...), samples pooled over them
    bootstrap: {resamples: 1000, seed: 0}   # the 95% intervals of every metric
    reference_point: [0.0, 0.0]         # for the hypervolume; always explicit
    decoding: {max_new_tokens: 32, do_sample: true, top_p: 0.95, repetition_penalty: 1.1, seed: 0}
                                        # model.generate's arguments (below), the first decoding seed and
                                        # batch_size (rows, prompt x sample, per decoder call; default 64)
    models:                             # folders; each method takes what it needs
      device: cuda                      # where every model runs, reward models too (default cpu)
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
      - {name: MPAW, kind: mpaw, beta: 1.0}   # cross_vocab: text, text_top_k: 20 (guides with their own tokenizer)
      - {name: MAGE-E-M, kind: mage, variant: E-M, gamma: 5.0, resources: {num_gpus: 1}}
    resources: {num_gpus: 1, num_cpus: 4}   # a Ray run's (--ray) workers, per method: mogen.evaluation.resources
    max_retries: 2                      # a Ray run's retries of a failed point

Decoding: ``max_new_tokens``, ``min_new_tokens``, ``do_sample``, ``temperature``, ``top_k``, ``top_p``, ``min_p``,
``typical_p``, ``repetition_penalty``, ``no_repeat_ngram_size``, ``bad_words_ids``, ``stop_strings``,
``eos_token_id`` and ``pad_token_id`` are ``model.generate``'s arguments, passed to every method's decoder
(:func:`mogen.generate`; :func:`mogen.search` draws its chunks with them, keeps its own ``temperature`` /
``top_k`` / ``top_p`` and always samples). Their defaults are transformers' (top_k 50 when sampling; ``top_k: 0``
turns it off) and the base's ``generation_config``. Rows that end are filled with ``pad_token_id``, by default
the base tokenizer's pad token, or its eos token when it has none (Llama-3), which also pads the prompts.

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

A substitute file (``load_sweep_config(..., substitute=)``, ``mogen sweep --substitute``) runs a config with other
folders and smaller settings: :mod:`mogen.evaluation.substitute`.

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

from ..configs import ConfigError, check_dtype, config_errors, key_path, parse, to_dict, unknown_keys
from ..mage import BONE_SOUP_KEYS, MAGE_KEYS, MAGEConfig
from ..numerics import off_simplex
from .bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED
from .grid import preference_grid
from .prompts import PromptSource, check_chat_template, read_prompts
from .resources import DEFAULT_RETRIES, Resources, parse_resources
from .rewards import RewardSpec, import_reward, parse_reward

__all__ = ["SweepConfig", "SweepFile", "MethodSpec", "load_sweep_config", "parse_sweep_file", "import_reward",
           "METHOD_KINDS", "RewardSpec", "GENERATION_KEYS", "MODEL_PATH_KEYS", "MODEL_LIST_KEYS", "read_yaml"]

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


def _check_cross_vocab(value: Optional[str], path: str) -> None:
    from ..decoding.guides import CROSS_VOCAB

    if value is not None and value not in CROSS_VOCAB:
        raise ConfigError(path, f"must be one of {list(CROSS_VOCAB)}, got {value!r}", label=_LABEL)


def _cross_vocab() -> Any:
    return field(default=None, metadata={"check": _check_cross_vocab})


@dataclass
class _MpawParams:
    beta: Optional[float] = None
    cross_vocab: Optional[str] = _cross_vocab()  # guides with their own tokenizer: ProxyGuide(cross_vocab=...)
    text_top_k: Optional[int] = _pos()  # their candidates with cross_vocab: text (ProxyGuide's top_k)


@dataclass
class _SearchParams:
    beta: Optional[float] = None
    beam_width: Optional[int] = _pos()
    expansion: Optional[int] = _pos()
    chunk_length: Optional[int] = _pos()
    proposal: Any = None
    cross_vocab: Optional[str] = _cross_vocab()
    text_top_k: Optional[int] = _pos()


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


def _check_number(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Any:
    """A field check: None or a finite number in the interval from ``low`` to ``high``."""
    text = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def check(value: Optional[float], path: str) -> None:
        if value is None:
            return
        ok = math.isfinite(value) and (low < value if low_open else low <= value) and \
            (value < high if high_open else value <= high)
        if not ok:
            raise ConfigError(path, f"must be a number in {text}, got {value!r}")

    return check


def _check_count(value: Optional[int], path: str) -> None:
    if value is not None and value < 0:
        raise ConfigError(path, f"must be an int >= 0, got {value!r}")


def _checked(check: Any) -> Any:
    return field(default=None, metadata={"check": check})


@dataclass
class _Decoding:
    """``decoding``: the run's own keys (seed, batch_size) and the ``model.generate`` arguments a sweep passes
    to every method (:data:`GENERATION_KEYS`)."""

    max_new_tokens: Optional[int] = _pos()
    min_new_tokens: Optional[int] = _checked(_check_count)
    do_sample: Optional[bool] = None
    temperature: Optional[float] = _checked(_check_number(0, math.inf, low_open=True, high_open=True))
    top_k: Optional[int] = _checked(_check_count)
    top_p: Optional[float] = _checked(_check_number(0, 1, low_open=True))
    min_p: Optional[float] = _checked(_check_number(0, 1))
    typical_p: Optional[float] = _checked(_check_number(0, 1, low_open=True))
    repetition_penalty: Optional[float] = _checked(_check_number(0, math.inf, low_open=True, high_open=True))
    no_repeat_ngram_size: Optional[int] = _checked(_check_count)
    bad_words_ids: Optional[list[list[int]]] = None
    stop_strings: Optional[Union[str, list[str]]] = None
    eos_token_id: Optional[Union[int, list[int]]] = None
    pad_token_id: Optional[int] = None
    seed: Optional[int] = None
    batch_size: Optional[int] = _pos()


#: the ``decoding`` keys that are ``model.generate``'s arguments (the rest are the run's: seed, batch_size)
GENERATION_KEYS = tuple(f.name for f in dataclasses.fields(_Decoding) if f.name not in ("seed", "batch_size"))


def _check_device(value: Optional[str], path: str) -> None:
    """A field check: a torch device this machine has (``cpu``, ``cuda``, ``cuda:1``, ...)."""
    if value is None:
        return
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        raise ConfigError(path, f"must be a torch device such as cpu, cuda or cuda:1, got {value!r}") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(path, f"{value!r}: CUDA is not available on this machine (torch {torch.__version__}); "
                                    "set models.device: cpu")
        if device.index is not None and device.index >= count:
            raise ConfigError(path, f"{value!r}: this machine has {count} CUDA device(s)")
    elif device.type != "cpu" and device.type != "mps":
        raise ConfigError(path, f"must be cpu, cuda, cuda:N or mps, got {value!r}")


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
    device: Optional[str] = field(default=None, metadata={"check": _check_device})


#: the ``models`` keys that name one folder, and those that name a list of folders
MODEL_PATH_KEYS = ("tokenizer", "base", "sft", "reference", "guide_tokenizer")
MODEL_LIST_KEYS = ("policies", "backbones", "experts", "value_models")


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
    resources: Optional[Resources] = None
    max_retries: int = field(default=DEFAULT_RETRIES, metadata={"check": _check_count})


#: the keys of each level, from the schema
_TOP_KEYS = tuple(f.name for f in dataclasses.fields(SweepFile))
_BOOTSTRAP_KEYS = tuple(f.name for f in dataclasses.fields(_Bootstrap))
_MODEL_KEYS = tuple(f.name for f in dataclasses.fields(_ModelPaths))
_DECODING_KEYS = tuple(f.name for f in dataclasses.fields(_Decoding))


@dataclass(frozen=True)
class MethodSpec:
    """One row of the comparison: a name, a kind of :data:`METHOD_KINDS`, its parameters and what its Ray
    workers reserve (:mod:`mogen.evaluation.resources`; the top level's keys with the method's over them)."""

    name: str
    kind: str
    params: dict = field(default_factory=dict)
    resources: dict = field(default_factory=dict)


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
    max_retries: int = DEFAULT_RETRIES  # a Ray run's retries of a failed point

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
    params = {k: v for k, v in m.items() if k not in ("name", "kind", "resources")}
    unknown_keys(params, METHOD_KINDS[kind], where, f" for kind {kind!r}")
    if kind in ("mage", "bone_soup"):
        parse(MAGEConfig, {"variant": "none", **params}, where)
    elif kind in _KIND_SCHEMAS:
        parse(_KIND_SCHEMAS[kind], params, where)
    return MethodSpec(m["name"], kind, params, parse_resources(m.get("resources"), key_path(where, "resources")))


def _methods(raw: list, resources: dict) -> list[MethodSpec]:
    """The ``methods`` entries, each with the top level's ``resources`` under its own."""
    if not raw:
        raise ConfigError("methods", "must be a non-empty list of {name, kind, ...}")
    out, names = [], set()
    for i, m in enumerate(raw):
        spec = _method(m, key_path("methods", i))
        if spec.name in names:
            raise ConfigError(key_path(key_path("methods", i), "name"), f"two methods are named {spec.name!r}")
        names.add(spec.name)
        out.append(dataclasses.replace(spec, resources={**resources, **spec.resources}))
    return out


def _check_sampling(decoding: dict, methods: list[MethodSpec]) -> None:
    """``decoding.do_sample: false`` with a chunk search among the methods is refused now, not hours into a run:
    a search always samples its chunks."""
    if decoding.get("do_sample") is not False:
        return
    for m in methods:
        if m.kind == "mpaw_search" or (m.kind == "mage" and m.params.get("search")):
            raise ConfigError("decoding.do_sample", f"false, but method {m.name!r} is a chunk search, which always "
                                                    "samples its chunks; leave do_sample out (each method then "
                                                    "decodes as it does by default), or drop the method")


def _paths(models: dict, root: Path) -> dict:
    out = dict(models)
    for key in MODEL_PATH_KEYS:
        if isinstance(out.get(key), str):
            out[key] = root / out[key]
    for key in MODEL_LIST_KEYS:
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
    bad = off_simplex(grid)
    if bad.any():
        row = int(np.argmax(bad))
        raise ConfigError(key_path("preferences", row), f"{grid[row].tolist()} is not on the simplex (entries >= 0 "
                                                         "summing to 1)")
    if len({tuple(mu) for mu in grid.tolist()}) < 2:
        raise ConfigError("preferences", "a sweep needs at least 2 distinct preference points (the front metrics "
                                         f"compare points), got {grid.tolist()}")
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
    methods = _methods(raw.methods, to_dict(raw.resources) or {})
    _check_sampling(decoding, methods)
    cfg = SweepConfig(base_dir / raw.output, list(prompts), rewards, grid, raw.samples, ref, decoding, paths,
                      methods, resamples=boot.resamples, bootstrap_seed=boot.seed, chat_template=chat,
                      max_retries=raw.max_retries)
    return cfg.with_seeds(raw.seeds)


def read_yaml(file: Path) -> Any:
    """The YAML in ``file``; a ConfigError naming it when it cannot be read or parsed."""
    try:
        return yaml.safe_load(file.read_text())
    except OSError as exc:
        raise ConfigError("", f"cannot read it ({exc.strerror or exc})", file) from None
    except yaml.YAMLError as exc:
        raise ConfigError("", f"not valid YAML ({exc})", file) from None


def load_sweep_config(source: Union[str, Path, dict], root: Union[str, Path, None] = None,
                      substitute: Union[str, Path, dict, None] = None) -> SweepConfig:
    """A validated :class:`SweepConfig` from a YAML file or a dict (paths relative to the file, or ``root``).
    ``substitute``: a substitute file (or its mapping) applied first (:mod:`mogen.evaluation.substitute`).
    Every error is a :class:`~mogen.configs.ConfigError` naming the key path (and the file)."""
    if isinstance(source, dict):
        raw, base_dir, file = source, Path(root or "."), None
    else:
        file = Path(source)
        raw = read_yaml(file)
        base_dir = Path(root or file.parent)
    if substitute is None:
        checked = parse_sweep_file(raw, file)
        with config_errors(file, _LABEL):
            return _build(checked, base_dir)
    from .substitute import apply_substitutes

    raw, applied = apply_substitutes(raw, substitute, config_file=file)
    with applied.blame():  # an error in a value the substitute file set names that file and key
        checked = parse_sweep_file(raw, file)
        with config_errors(file, _LABEL):
            return _build(checked, base_dir)
