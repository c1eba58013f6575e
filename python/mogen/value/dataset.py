"""Value-training data on disk: responses sampled from pi_ref (MAGE eq. 15), scored, in resumable shards.

Sampling is its own step, so it can run on other machines than training::

    data/
      meta.json            what the data is: objectives, policy, rewards, seed, sampling settings, prompt
                           count and hash, shard size, format, commit and command
      shards/00000.jsonl   the responses to prompts 0 .. P-1, one row each:
      shards/00001.jsonl   {"prompt": ..., "response": ..., "rewards": {"helpful": 0.4, ...}, "ended": true}
      ...                  (.parquet with format parquet: the same columns)

Shard ``k`` holds the ``samples_per_prompt`` responses of prompts
``k*P .. (k+1)*P - 1`` (``P``: ``prompts_per_shard``), drawn with a seed of
its own (:func:`shard_seed`), so a shard is the same whichever run, rank or
order writes it. Each shard is written to a temporary file and renamed into
place when complete: a run that dies loses at most the shards it was writing,
and a rerun with the same settings writes only the missing shards (a rerun
with other settings is refused, naming the first that differs). Under
``torchrun`` rank ``r`` of ``W`` takes the shards ``k`` with ``k % W == r``.
``ended``: the response ended with eos (the value model then learns the eos as
its last target). Rewards are the reward entries' normalised values
(:mod:`mogen.evaluation.rewards`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from tqdm.auto import tqdm

from .._optional import require
from ..atomic import write_atomic
from ..provenance import command_line, commit
from .data import Example, checked, open_reward, sample_responses

__all__ = ["FORMATS", "META_FILE", "ValueDataset", "sample_dataset", "read_dataset", "shard_seed", "write_rows",
           "read_rows"]

#: the shard formats: JSON lines (no extra package) or parquet (pyarrow, which the `train` extra brings)
FORMATS = ("jsonl", "parquet")
META_FILE = "meta.json"
VERSION = 1
#: the meta keys that say what the data is: a rerun into the same folder must match them all
SAMPLING_KEYS = ("version", "format", "objectives", "policy", "rewards", "prompts", "prompts_sha256",
                 "samples_per_prompt", "max_new_tokens", "top_p", "temperature", "seed", "prompts_per_shard")


@dataclass
class ValueDataset:
    """A dataset read back: its ``meta.json`` and its rows in prompt order."""

    meta: dict
    rows: list

    def objective(self, name: Optional[str] = None) -> str:
        """``name`` checked against the dataset's objectives; None: the only one (ValueError otherwise)."""
        names = list(self.meta["objectives"])
        if name is None:
            if len(names) != 1:
                raise ValueError(f"the dataset has the objectives {names}: name the one to train on")
            return names[0]
        if name not in names:
            raise ValueError(f"the dataset has no objective {name!r}; its objectives: {names}")
        return name

    def examples(self, objective: Optional[str] = None) -> list[Example]:
        """The rows as :class:`Example` with reward ``objective`` (default: the only objective)."""
        name = self.objective(objective)
        return [checked(r["prompt"], r["response"], r["rewards"][name], r["ended"]) for r in self.rows]


def shard_seed(seed: int, shard: int) -> int:
    """The sampling seed of shard ``shard``: a hash of ``(seed, shard)``, so no two (seed, shard) pairs share
    one (``seed + shard`` would give seed 0's shard 1 to seed 1's shard 0)."""
    digest = hashlib.sha256(f"mogen-value-dataset:{seed}:{shard}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # a non-negative int64


def _pyarrow() -> Any:
    """``pyarrow`` with its ``parquet`` module loaded (``import pyarrow`` alone does not load it)."""
    require("pyarrow.parquet", "train", "format parquet", instead="use format jsonl")  # datasets brings pyarrow
    import pyarrow

    return pyarrow


def write_rows(path: Path, rows: Sequence[dict], format: str) -> None:
    """``rows`` to ``path`` as JSON lines or parquet, atomically (a temporary file renamed into place)."""
    if format == "jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    elif format == "parquet":
        pa = _pyarrow()
        write_atomic(path, lambda tmp: pa.parquet.write_table(pa.Table.from_pylist(list(rows)), tmp))
    else:
        raise ValueError(f"format must be one of {list(FORMATS)}, got {format!r}")


def read_rows(path: Path) -> list[dict]:
    """The rows of a ``.jsonl`` or ``.parquet`` shard."""
    if path.suffix == ".parquet":
        return _pyarrow().parquet.read_table(path).to_pylist()
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _meta_file(folder: Path) -> Path:
    return folder / META_FILE


def _check_resume(folder: Path, meta: dict) -> None:
    """A folder that already holds a dataset must hold this one."""
    try:
        old = json.loads(_meta_file(folder).read_text())
    except FileNotFoundError:
        return
    except (OSError, ValueError) as exc:
        raise ValueError(f"{str(folder)!r}: cannot read its {META_FILE} ({exc}); remove the folder or choose "
                         "another output") from None
    for key in SAMPLING_KEYS:
        if old.get(key) != meta.get(key):
            raise ValueError(f"{str(folder)!r} holds a dataset sampled with {key}={old.get(key)!r}, this run asks "
                             f"{key}={meta.get(key)!r}: choose another output, or remove the folder to start over")


def _rank_world(rank: Optional[int], world: Optional[int]) -> tuple[int, int]:
    """This process's rank and the number of processes: given, else torchrun's / accelerate's environment."""
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world = int(os.environ.get("WORLD_SIZE", 1)) if world is None else world
    if not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, world), got rank {rank} of world {world}")
    return rank, world


def _describe_reward(reward: Any) -> Any:
    """What meta.json records of a reward: an entry as written, a parsed entry's description, a function's name."""
    if isinstance(reward, (str, dict)):
        return reward
    if callable(getattr(reward, "describe", None)):
        return reward.describe()
    name = getattr(reward, "__qualname__", None) or getattr(reward, "name", None) or type(reward).__name__
    return f"{getattr(reward, '__module__', '?')}:{name}"


def _describe_policy(policy: Any) -> str:
    return str(getattr(getattr(policy, "config", None), "_name_or_path", "") or type(policy).__name__)


def _check_args(prompts: Sequence[str], rewards: Mapping[str, Any], samples_per_prompt: int, batch_size: int,
                prompts_per_shard: Optional[int], format: str) -> None:
    if not prompts:
        raise ValueError("prompts is empty")
    if not isinstance(rewards, Mapping) or not rewards:
        raise ValueError(f"rewards must be a non-empty mapping of objective name -> reward, got {rewards!r}")
    for name, value in (("samples_per_prompt", samples_per_prompt), ("batch_size", batch_size),
                        ("prompts_per_shard", prompts_per_shard)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if format not in FORMATS:
        raise ValueError(f"format must be one of {list(FORMATS)}, got {format!r}")


def sample_dataset(policy: Any, tokenizer: Any, prompts: Sequence[str], rewards: Mapping[str, Any],
                   output: Union[str, Path], *, samples_per_prompt: int = 4, max_new_tokens: int = 32, seed: int = 0,
                   top_p: Optional[float] = None, temperature: float = 1.0, batch_size: int = 64,
                   prompts_per_shard: Optional[int] = None, format: str = "jsonl", describe: Optional[dict] = None,
                   progress: bool = True, rank: Optional[int] = None, world: Optional[int] = None) -> Path:
    """Sample ``samples_per_prompt`` responses per prompt from ``policy`` (pi_ref, eq. 15: plain sampling at
    ``temperature``, ``top_p`` if given), score each with every reward, and write (or finish) the dataset in
    folder ``output`` (module docstring); returns the folder.

    ``rewards``: objective name -> a reward as :func:`~mogen.value.data.open_reward` takes it (a function,
    ``module:function``, a reward entry, a RewardModel), scored on the policy's device and dtype.
    ``batch_size``: responses per decoder call; ``prompts_per_shard`` (default ``batch_size //
    samples_per_prompt``, at least 1): the unit of resumption. ``describe``: ``{"policy": ..., "rewards":
    {name: ...}}`` as meta.json should record them (default: the model's folder, the rewards as given).
    ``rank`` / ``world`` (default: ``RANK`` / ``WORLD_SIZE`` of the environment): which shards this process writes.
    """
    _check_args(prompts, rewards, samples_per_prompt, batch_size, prompts_per_shard, format)
    folder = Path(output).expanduser()
    per_shard = prompts_per_shard or max(1, batch_size // samples_per_prompt)
    describe = describe or {}
    meta = {"version": VERSION, "format": format, "objectives": list(rewards),
            "policy": describe.get("policy", _describe_policy(policy)),
            "rewards": describe.get("rewards", {n: _describe_reward(r) for n, r in rewards.items()}),
            "prompts": len(prompts), "prompts_sha256": hashlib.sha256(json.dumps(list(prompts)).encode()).hexdigest(),
            "samples_per_prompt": samples_per_prompt, "max_new_tokens": max_new_tokens, "top_p": top_p,
            "temperature": temperature, "seed": seed, "prompts_per_shard": per_shard,
            "shards": math.ceil(len(prompts) / per_shard), "commit": commit(), "command": command_line()}
    _check_resume(folder, meta)
    (folder / "shards").mkdir(parents=True, exist_ok=True)
    if not _meta_file(folder).exists():  # every rank may write it: the same text, renamed into place
        write_atomic(_meta_file(folder), lambda tmp: tmp.write_text(json.dumps(meta, indent=1)))
    openers = {name: open_reward(r, label="sample_dataset") for name, r in rewards.items()}  # fail before sampling
    rank, world = _rank_world(rank, world)
    mine = range(rank, meta["shards"], world)
    todo = [k for k in mine if not _shard_file(folder, k, format).exists()]
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), unit="shard", desc=f"sampling (rank {rank})",
               disable=not progress)
    scorers: Optional[dict] = None
    for k in todo:
        pairs = sample_responses(policy, tokenizer, list(prompts[k * per_shard : (k + 1) * per_shard]),
                                 samples_per_prompt=samples_per_prompt, max_new_tokens=max_new_tokens,
                                 seed=shard_seed(seed, k), top_p=top_p, temperature=temperature, batch_size=batch_size)
        if scorers is None:  # reward models load once, where the policy is, and only when there is work
            param = next(policy.parameters())
            scorers = {name: open_(param.device, param.dtype) for name, open_ in openers.items()}
        scores = {name: scorer(pairs) for name, scorer in scorers.items()}
        rows = [{"prompt": p, "response": r, "rewards": {n: s[i] for n, s in scores.items()}, "ended": bool(e)}
                for i, (p, r, e) in enumerate(pairs)]
        write_rows(_shard_file(folder, k, format), rows, format)
        bar.update(1)
    bar.close()
    return folder


def _shard_file(folder: Path, k: int, format: str) -> Path:
    return folder / "shards" / f"{k:05d}.{format}"


def read_dataset(folder: Union[str, Path]) -> ValueDataset:
    """The dataset in ``folder``, its rows in prompt order; an incomplete one is refused, naming what is missing."""
    folder = Path(folder).expanduser()
    try:
        meta = json.loads(_meta_file(folder).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{str(folder)!r} is not a mogen value dataset: it has no {META_FILE} (write one "
                                "with `mogen value sample`)") from None
    except ValueError as exc:
        raise ValueError(f"{str(folder / META_FILE)!r} is not valid JSON ({exc})") from None
    files = [_shard_file(folder, k, meta["format"]) for k in range(meta["shards"])]
    missing = [k for k, f in enumerate(files) if not f.exists()]
    if missing:
        raise ValueError(f"{str(folder)!r} is incomplete: {len(missing)} of {meta['shards']} shards are missing "
                         f"(the first: {files[missing[0]].name}); rerun `mogen value sample` with its config to "
                         "finish it")
    return ValueDataset(meta, [row for f in files for row in read_rows(f)])
