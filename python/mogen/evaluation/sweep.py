"""``mogen sweep``: every method at every preference point, scored, resumable.

The run folder holds one ``points/<method>/<preference>_seed<k>.json`` per
finished (method, preference, decoding seed), written atomically, so a rerun
skips finished points and a killed run resumes where it stopped. Each point
records a fingerprint of what its texts depend on (prompts, samples, decoding
settings and seed, rewards, models, the method's parameters): a point from a
run with other settings is decoded again, never mixed into this run's table.
When every point is done the run writes ``samples.jsonl`` (every response with
its method, preference, seed and rewards), ``means.csv`` (mean rewards per
method and preference, pooled over the seeds), ``metrics.md`` (one row per
method, every metric with its 95% bootstrap interval,
:mod:`mogen.evaluation.bootstrap`), ``bootstrap.npz`` (the replicates) and
``pareto.png``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Optional

import torch
from tqdm.auto import tqdm

from ..value.data import checked
from .config import MethodSpec, SweepConfig, load_sweep_config
from .methods import _Models, build_decoder
from .report import write_reports

__all__ = ["run_sweep", "SweepResult"]


class SweepResult:
    """What a run did: the folder, how many points it decoded now, and the per-method means."""

    def __init__(self, folder: Path, decoded: int, skipped: int, table: list) -> None:
        self.folder, self.decoded, self.skipped, self.table = folder, decoded, skipped, table


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "method"


def _point_key(mu) -> str:
    return "_".join(f"{x:.4f}" for x in mu)


def _fingerprint(cfg: SweepConfig, method: MethodSpec, seed: int) -> str:
    """A hash of everything a point of ``method`` decoded with ``seed`` depends on (not the output folder,
    the other seeds or the metrics)."""
    blob = {"prompts": list(cfg.prompts), "samples": cfg.samples, "decoding": {**cfg.decoding, "seed": seed},
            "models": cfg.models, "rewards": [spec for spec, _ in cfg.rewards], "method": [method.kind, method.params]}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _finished(path: Path, fingerprint: str) -> bool:
    try:
        return json.loads(path.read_text()).get("fingerprint") == fingerprint
    except (OSError, ValueError):
        return False


def _write_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def point_file(folder: Path, method: str, mu: tuple, seed: int) -> Path:
    """Where the point of ``method`` at preference ``mu`` decoded with ``seed`` is kept."""
    return folder / "points" / _slug(method) / f"{_point_key(mu)}_seed{seed}.json"


def _decode_point(decoder: Any, tok: Any, cfg: SweepConfig, mu: tuple, seed: int) -> dict:
    settings = dict(cfg.decoding)
    settings.pop("seed", None)
    batch = settings.pop("batch_size", 64)
    rows = [p for p in cfg.prompts for _ in range(cfg.samples)]
    texts, tokens = [], 0
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        enc = tok(chunk, return_tensors="pt", padding=True)
        extra = {"generator": gen} if settings.get("do_sample") else {}
        out = decoder.decode(enc["input_ids"], enc["attention_mask"], mu, {**settings, **extra})
        new = out[:, enc["input_ids"].shape[1]:]
        tokens += int((new != tok.pad_token_id).sum())
        texts += tok.batch_decode(new, skip_special_tokens=True)
    seconds = time.perf_counter() - t0
    samples = []
    for prompt, text in zip(rows, texts):
        rewards = []
        for spec, fn in cfg.rewards:
            try:
                rewards.append(checked(prompt, text, fn(prompt, text)).reward)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"reward {spec} at preference {list(mu)}: {exc}") from None
        samples.append({"prompt": prompt, "response": text, "rewards": rewards})
    return {"preference": list(mu), "seed": seed, "samples": samples, "tokens": tokens, "seconds": seconds}


def run_sweep(config: Any, *, progress: bool = True, root: Optional[Path] = None, seeds: Optional[int] = None,
              seed_offset: int = 0, command: Optional[str] = None) -> SweepResult:
    """Run (or resume) the sweep of ``config`` (a :class:`SweepConfig`, a YAML path or a dict).

    ``seeds`` (default: the config's) decoding seeds from ``decoding.seed + seed_offset`` on; every
    (method, preference) is decoded once per seed and the samples are pooled. ``command`` is recorded in
    ``metrics.md`` as the command that produced the run (default: this process's command line).
    """
    cfg = config if isinstance(config, SweepConfig) else load_sweep_config(config, root)
    if seeds is not None or seed_offset:
        cfg = cfg.with_seeds(seeds if seeds is not None else len(cfg.seeds), seed_offset)
    folder = Path(cfg.output)
    models = _Models(cfg)
    prefs = [tuple(float(x) for x in mu) for mu in cfg.preferences]
    prints = {(m.name, seed): _fingerprint(cfg, m, seed) for m in cfg.methods for seed in cfg.seeds}
    todo = [(m, mu, seed) for m in cfg.methods for mu in prefs for seed in cfg.seeds
            if not _finished(point_file(folder, m.name, mu, seed), prints[m.name, seed])]
    skipped = len(prints) * len(prefs) - len(todo)
    bar = tqdm(total=len(todo), desc="sweep", disable=not progress or not todo)
    decoders: dict = {}
    for method, mu, seed in todo:
        if method.name not in decoders:
            decoders[method.name] = build_decoder(method, models)
        tok = models.tokenizer(models.need("tokenizer", method.name))
        tok.padding_side = "left"
        bar.set_postfix_str(f"{method.name} {list(mu)} seed {seed}")
        point = _decode_point(decoders[method.name], tok, cfg, mu, seed)
        point["method"], point["fingerprint"] = method.name, prints[method.name, seed]
        _write_atomic(point_file(folder, method.name, mu, seed), point)
        bar.update(1)
    bar.close()
    files = [(m.name, [[point_file(folder, m.name, mu, seed) for seed in cfg.seeds] for mu in prefs])
             for m in cfg.methods]
    table = write_reports(cfg, folder, files, command=command)
    return SweepResult(folder, len(todo), skipped, table)
