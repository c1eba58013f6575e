"""``mogen sweep``: every method at every preference point, scored, resumable.

The run folder holds one ``points/<method>/<preference>.json`` per finished
(method, preference) point, written atomically, so a rerun skips finished
points and a killed run resumes where it stopped. Each point records a
fingerprint of what its texts depend on (prompts, samples, decoding settings,
rewards, models, the method's parameters): a point from a run with other
settings is decoded again, never mixed into this run's table. When every point is done the
run writes ``samples.jsonl`` (every response with its method, preference and
rewards), ``means.csv`` (mean rewards per method and preference),
``metrics.md`` (one row per method) and ``pareto.png``.
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


def _fingerprint(cfg: SweepConfig, method: MethodSpec) -> str:
    """A hash of everything a point of ``method`` depends on (not the output folder or the metrics)."""
    blob = {"prompts": list(cfg.prompts), "samples": cfg.samples, "decoding": cfg.decoding, "models": cfg.models,
            "rewards": [spec for spec, _ in cfg.rewards], "method": [method.kind, method.params]}
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


def _decode_point(decoder: Any, tok: Any, cfg: SweepConfig, mu: tuple) -> dict:
    settings = dict(cfg.decoding)
    seed, batch = settings.pop("seed", 0), settings.pop("batch_size", 64)
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
    return {"preference": list(mu), "samples": samples, "tokens": tokens, "seconds": seconds}


def run_sweep(config: Any, *, progress: bool = True, root: Optional[Path] = None) -> SweepResult:
    """Run (or resume) the sweep of ``config`` (a :class:`SweepConfig`, a YAML path or a dict)."""
    from tqdm.auto import tqdm

    cfg = config if isinstance(config, SweepConfig) else load_sweep_config(config, root)
    folder = Path(cfg.output)
    models = _Models(cfg)
    prefs = [tuple(float(x) for x in mu) for mu in cfg.preferences]
    prints = {m.name: _fingerprint(cfg, m) for m in cfg.methods}
    todo = [(m, mu) for m in cfg.methods for mu in prefs
            if not _finished(folder / "points" / _slug(m.name) / f"{_point_key(mu)}.json", prints[m.name])]
    skipped = len(cfg.methods) * len(prefs) - len(todo)
    bar = tqdm(total=len(todo), desc="sweep", disable=not progress or not todo)
    decoders: dict = {}
    for method, mu in todo:
        if method.name not in decoders:
            decoders[method.name] = build_decoder(method, models)
        tok = models.tokenizer(models.need("tokenizer", method.name))
        tok.padding_side = "left"
        bar.set_postfix_str(f"{method.name} {list(mu)}")
        point = _decode_point(decoders[method.name], tok, cfg, mu)
        point["method"], point["fingerprint"] = method.name, prints[method.name]
        _write_atomic(folder / "points" / _slug(method.name) / f"{_point_key(mu)}.json", point)
        bar.update(1)
    bar.close()
    table = write_reports(cfg, folder, [(m.name, [folder / "points" / _slug(m.name) / f"{_point_key(mu)}.json"
                                                  for mu in prefs]) for m in cfg.methods])
    return SweepResult(folder, len(todo), skipped, table)
