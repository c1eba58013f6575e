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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import yaml

from ..configs import ConfigError, check_positive, config_errors, key_path, parse, to_dict
from ..numerics import off_simplex
from .bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED
from .grid import preference_grid
from .method_specs import METHOD_KINDS, MethodSpec, check_sampling, parse_methods
from .prompts import PromptSource, check_chat_template, read_prompts
from .resources import DEFAULT_RETRIES
from .rewards import RewardSpec, import_reward, parse_reward
from .schema import (GENERATION_KEYS, LABEL, MODEL_LIST_KEYS, MODEL_PATH_KEYS, Bootstrap, Decoding, ModelPaths,
                     SweepFile)

# The schema (schema.py) and the methods entries (method_specs.py) live in their own modules; their public
# names are re-exported here, where the file format is described and loaded.
__all__ = ["SweepConfig", "SweepFile", "MethodSpec", "load_sweep_config", "parse_sweep_file", "import_reward",
           "METHOD_KINDS", "RewardSpec", "GENERATION_KEYS", "MODEL_PATH_KEYS", "MODEL_LIST_KEYS", "read_yaml"]


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
        with config_errors(label=LABEL):
            if count is None:  # check_positive lets None through (an unset optional field)
                raise ConfigError("seeds", f"must be an int >= 1, got {count!r}")
            check_positive(count, "seeds")
        first = int(self.decoding.get("seed", 0)) + int(offset)
        return dataclasses.replace(self, seeds=list(range(first, first + count)))


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
    with config_errors(file, LABEL):
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
    boot = raw.bootstrap or Bootstrap()
    models = {k: v for k, v in dataclasses.asdict(raw.models or ModelPaths()).items() if v is not None}
    decoding = {k: v for k, v in dataclasses.asdict(raw.decoding or Decoding()).items() if v is not None}
    paths = _paths(models, base_dir)
    chat = isinstance(raw.prompts, PromptSource) and raw.prompts.chat_template
    if chat:
        check_chat_template(paths.get("tokenizer"))
    methods = parse_methods(raw.methods, to_dict(raw.resources) or {})
    check_sampling(decoding, methods)
    cfg = SweepConfig(base_dir / raw.output, list(prompts), rewards, grid, raw.samples, ref, decoding, paths,
                      methods, resamples=boot.resamples, bootstrap_seed=boot.seed, chat_template=chat,
                      max_retries=raw.max_retries)
    return cfg.with_seeds(raw.seeds)


def _parse_and_build(raw: Any, file: Any, base_dir: Path) -> SweepConfig:
    checked = parse_sweep_file(raw, file)
    with config_errors(file, LABEL):
        return _build(checked, base_dir)


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
        return _parse_and_build(raw, file, base_dir)
    from .substitute import apply_substitutes

    raw, applied = apply_substitutes(raw, substitute, config_file=file)
    with applied.blame():  # an error in a value the substitute file set names that file and key
        return _parse_and_build(raw, file, base_dir)
