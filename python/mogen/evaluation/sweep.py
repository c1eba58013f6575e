"""``mogen sweep``: every method at every preference point, scored, resumable.

The run folder holds one ``points/<method>/<preference>_seed<k>.json`` per
finished (method, preference, decoding seed), written atomically, so a rerun
skips finished points and a killed run resumes where it stopped. Each point
records a fingerprint of what its texts depend on (prompts, samples, decoding
settings and seed, models, the method's parameters): a point from a run with
other settings is decoded again, never mixed into this run's table.

Methods are decoded one after the other on ``models.device`` in
``models.dtype``, each method's own models (a MAGE's live merged base) let go
before the next method's load. Prompts are left-padded with the base
tokenizer's pad token (its eos token when it has none, as Llama-3's), which
also fills the rows that ended.

With ``ray=`` (``mogen sweep --ray``) the missing points are decoded by Ray
actors instead, one or more per method (:mod:`mogen.evaluation.ray_sweep`),
and filed by this module's code as they arrive: the same point files, the
same fingerprints, the same texts.

A run decodes every missing point first, then scores: one reward at a time
(a reward model is loaded once, after the decoding models are let go), each
point's raw scores cached in its file under the reward's key
(:mod:`mogen.evaluation.rewards`), so a resumed run scores only what is
missing and a reward added to the config scores the texts already there
without decoding them again. Each sample's ``rewards`` are then the
normalised scores, ``(raw - offset) * scale``, in the config's order (and its
``raw_rewards`` too when a reward is normalised).

When every point is done the run writes ``samples.jsonl`` (every response with
its method, preference, seed and rewards), ``means.csv`` (mean rewards per
method and preference, pooled over the seeds), ``metrics.md`` (one row per
method, every metric with its 95% bootstrap interval,
:mod:`mogen.evaluation.bootstrap`, and a line per reward with its source and
normalisation), ``rewards.json`` (each reward: name, kind, source, cache key,
offset, scale and a reward model's label, template, max_length),
``bootstrap.npz`` (the replicates) and ``pareto.png``.
"""

from __future__ import annotations

import gc
import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional, Union

import torch
from tqdm.auto import tqdm

from ..atomic import write_atomic
from .config import SweepConfig, load_sweep_config
from .method_specs import MethodSpec
from .prompts import chat_prompts
from .methods import SweepModels, build_decoder
from .report import write_reports

__all__ = ["run_sweep", "SweepResult", "Pending", "point_file", "store_point", "method_tokenizer", "decode_point",
           "preferences"]


class SweepResult:
    """What a run did: the folder, how many points it decoded now and how many were done, how many texts it
    scored now (each reward counted), and the per-method metrics."""

    def __init__(self, folder: Path, decoded: int, skipped: int, table: list, scored: int = 0) -> None:
        self.folder, self.decoded, self.skipped, self.table, self.scored = folder, decoded, skipped, table, scored


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "method"


def _point_key(mu) -> str:
    return "_".join(f"{x:.4f}" for x in mu)


def _hash(blob: dict) -> str:
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _fingerprint(cfg: SweepConfig, method: MethodSpec, seed: int) -> str:
    """A hash of everything the texts of a point of ``method`` decoded with ``seed`` depend on (not the
    rewards, the output folder, the other seeds or the metrics)."""
    blob = {"prompts": list(cfg.prompts), "samples": cfg.samples, "decoding": {**cfg.decoding, "seed": seed},
            "models": cfg.models, "method": [method.kind, method.params]}
    if cfg.chat_template:
        blob["chat_template"] = True
    return _hash(blob)


def _legacy_fingerprint(cfg: SweepConfig, method: MethodSpec, seed: int) -> Optional[str]:
    """The fingerprint of runs made before scores were cached by reward (the reward functions' specs were part
    of it, the scores only in each sample's ``rewards``), for a config whose rewards are all plain
    ``module:function`` strings: such a point is finished, its ``rewards`` the cached scores."""
    if cfg.chat_template or any(r.model is not None for r in cfg.rewards):
        return None
    blob = {"prompts": list(cfg.prompts), "samples": cfg.samples, "decoding": {**cfg.decoding, "seed": seed},
            "models": cfg.models, "rewards": [r.key for r in cfg.rewards], "method": [method.kind, method.params]}
    return _hash(blob)


def _read_point(path: Path, fingerprint: str, legacy: Optional[str], cfg: SweepConfig) -> Optional[dict]:
    """The finished point in ``path`` (a legacy one with its scores filed by reward key), else None."""
    try:
        point = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if point.get("fingerprint") == fingerprint:
        point.setdefault("scores", {})
        return point
    if legacy is not None and point.get("fingerprint") == legacy:
        point["scores"] = {r.key: [s["rewards"][j] for s in point["samples"]] for j, r in enumerate(cfg.rewards)}
        point["fingerprint"] = fingerprint
        _write_atomic(path, point)  # in today's form
        return point
    return None


def _write_atomic(path: Path, data: Any) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(data)))


def point_file(folder: Path, method: str, mu: tuple, seed: int) -> Path:
    """Where the point of ``method`` at preference ``mu`` decoded with ``seed`` is kept."""
    return folder / "points" / _slug(method) / f"{_point_key(mu)}_seed{seed}.json"


def _pad_id(tok: Any, decoding: dict) -> int:
    """The id that pads the prompts on the left and fills the rows that ended: ``decoding.pad_token_id``, else
    the base tokenizer's pad token, else its eos token (Llama-3's tokenizer has no pad token)."""
    for pad in (decoding.get("pad_token_id"), tok.pad_token_id, tok.eos_token_id):
        if pad is not None:
            return int(pad)
    raise ValueError("sweep: the base tokenizer has neither a pad token nor an eos token; set decoding.pad_token_id")


def _encode(tok: Any, texts: list, pad: int, special: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of ``texts``, left-padded with ``pad``."""
    rows = tok(texts, add_special_tokens=special)["input_ids"]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        if r:
            ids[b, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[b, width - len(r):] = 1
    return ids, mask


def decode_point(decoder: Any, tok: Any, cfg: SweepConfig, mu: tuple, seed: int, device: Any = "cpu") -> dict:
    settings = dict(cfg.decoding)
    settings.pop("seed", None)
    batch = settings.pop("batch_size", 64)
    pad = settings["pad_token_id"] = _pad_id(tok, settings)
    rows = [p for p in cfg.prompts for _ in range(cfg.samples)]
    inputs = chat_prompts(tok, rows) if cfg.chat_template else rows
    texts, tokens = [], 0
    t0 = time.perf_counter()
    gen = torch.Generator(device=device).manual_seed(seed)
    for start in range(0, len(rows), batch):
        chunk = inputs[start : start + batch]
        # A chat template writes the special tokens (bos) itself.
        ids, mask = _encode(tok, chunk, pad, special=not cfg.chat_template)
        extra = {"generator": gen} if settings.get("do_sample") else {}
        out = decoder.decode(ids, mask, mu, {**settings, **extra})
        new = out[:, ids.shape[1]:]
        tokens += int((new != pad).sum())
        texts += tok.batch_decode(new, skip_special_tokens=True)
    seconds = time.perf_counter() - t0
    samples = [{"prompt": prompt, "response": text} for prompt, text in zip(rows, texts)]
    return {"preference": list(mu), "seed": seed, "samples": samples, "tokens": tokens, "seconds": seconds,
            "scores": {}}


def _score_points(cfg: SweepConfig, points: dict, *, device: Any, dtype: Any, progress: bool) -> int:
    """Scores every point of ``points`` (path -> point) that lacks a reward's raw scores, one reward at a time,
    writing each point as it is scored; then sets each sample's ``rewards`` (and ``raw_rewards``) from the
    scores. Returns how many texts were scored."""
    scored = 0
    for r in cfg.rewards:
        pending = [(path, p) for path, p in points.items() if len(p["scores"].get(r.key, ())) != len(p["samples"])]
        if not pending:
            continue
        total = sum(len(p["samples"]) for _, p in pending)
        bar = tqdm(total=total, desc=f"reward {r.name}", disable=not progress, leave=False)
        scorer = r.scorer(device=device, dtype=dtype)
        for path, point in pending:
            prompts = [s["prompt"] for s in point["samples"]]
            responses = [s["response"] for s in point["samples"]]
            try:
                point["scores"][r.key] = scorer.score(prompts, responses, bar=bar)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"reward {r.source} at preference {point['preference']}: {exc}") from None
            _write_atomic(path, point)
        scored += total
        bar.close()
        del scorer
        if r.model is not None:
            _free_memory()
    raw_too = any(r.normalised for r in cfg.rewards)
    for path, point in points.items():
        before = json.dumps(point["samples"])
        for i, sample in enumerate(point["samples"]):
            raw = [float(point["scores"][r.key][i]) for r in cfg.rewards]
            sample["rewards"] = [r.normalise(x) for r, x in zip(cfg.rewards, raw)]
            if raw_too:
                sample["raw_rewards"] = raw
            else:
                sample.pop("raw_rewards", None)
        if json.dumps(point["samples"]) != before:
            _write_atomic(path, point)
    return scored


def _free_memory() -> None:
    """Returns the memory of models no longer referenced (the decoding models, before reward models load)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _load(config: Any, root: Optional[Path], substitute: Any, seeds: Optional[int], seed_offset: int) -> SweepConfig:
    """The checked config of ``run_sweep``'s arguments, with its seeds."""
    if isinstance(config, SweepConfig):
        if substitute is not None:
            raise TypeError("run_sweep: substitute= applies to a YAML path or a dict config, not a loaded SweepConfig")
        cfg = config
    else:
        cfg = load_sweep_config(config, root, substitute=substitute)
    if seeds is not None or seed_offset:
        cfg = cfg.with_seeds(seeds if seeds is not None else len(cfg.seeds), seed_offset)
    return cfg


class Pending(NamedTuple):
    """A point to decode: the method, the preference, the decoding seed and the fingerprint its file records."""

    method: MethodSpec
    mu: tuple
    seed: int
    fingerprint: str

    def label(self) -> str:
        return f"{self.method.name} at {list(self.mu)} seed {self.seed}"


def _plan(cfg: SweepConfig, folder: Path) -> tuple[dict, list]:
    """``(points, todo)``: the finished points in ``folder`` (path -> point) and the :class:`Pending` points,
    grouped by method."""
    points: dict = {}
    todo = []
    for m in cfg.methods:
        for seed in cfg.seeds:
            fingerprint, legacy = _fingerprint(cfg, m, seed), _legacy_fingerprint(cfg, m, seed)
            for mu in preferences(cfg):
                path = point_file(folder, m.name, mu, seed)
                point = _read_point(path, fingerprint, legacy, cfg)
                if point is None:
                    todo.append(Pending(m, mu, seed, fingerprint))
                else:
                    points[path] = point
    return points, todo


def preferences(cfg: SweepConfig) -> list:
    """The config's preference points as tuples of floats (the points' keys)."""
    return [tuple(float(x) for x in mu) for mu in cfg.preferences]


def store_point(folder: Path, points: dict, item: Pending, point: dict) -> None:
    """Files the decoded ``point`` of ``item`` (atomically) and adds it to ``points``."""
    point["method"], point["fingerprint"] = item.method.name, item.fingerprint
    path = point_file(folder, item.method.name, item.mu, item.seed)
    _write_atomic(path, point)
    points[path] = point


def method_tokenizer(models: SweepModels, method: MethodSpec) -> Any:
    """The base tokenizer a method's prompts are encoded with (left padding)."""
    tok = models.tokenizer(models.need("tokenizer", method.name))
    tok.padding_side = "left"
    return tok


def _decode_here(cfg: SweepConfig, models: SweepModels, todo: list, store: Callable, progress: bool) -> None:
    """Decodes ``todo`` in this process, one method's models at a time."""
    bar = tqdm(total=len(todo), desc="sweep", disable=not progress or not todo)
    decoders: dict = {}
    for item in todo:
        method = item.method
        if method.name not in decoders:
            # todo is grouped by method: the previous method's models (a MAGE's live base, merged guides) go
            # before this one's load, so that a run holds one method's own models at a time.
            decoders.clear()
            _free_memory()
            decoders[method.name] = build_decoder(method, models)
        bar.set_postfix_str(f"{method.name} {list(item.mu)} seed {item.seed}")
        store(item, decode_point(decoders[method.name], method_tokenizer(models, method), cfg, item.mu,
                                  item.seed, models.device))
        bar.update(1)
    bar.close()
    decoders.clear()


def run_sweep(config: Any, *, progress: bool = True, root: Optional[Path] = None, seeds: Optional[int] = None,
              seed_offset: int = 0, command: Optional[str] = None, substitute: Any = None,
              ray: Union[bool, str, None] = None, max_retries: Optional[int] = None) -> SweepResult:
    """Run (or resume) the sweep of ``config`` (a :class:`SweepConfig`, a YAML path or a dict).

    ``seeds`` (default: the config's) decoding seeds from ``decoding.seed + seed_offset`` on; every
    (method, preference) is decoded once per seed and the samples are pooled. ``command`` is recorded in
    ``metrics.md`` as the command that produced the run (default: this process's command line).
    ``substitute``: a substitute file (or its mapping) for a YAML or dict config
    (:mod:`mogen.evaluation.substitute`).

    ``ray``: decode the points as Ray tasks (:mod:`mogen.evaluation.ray_sweep`): True for ``ray.init()``'s
    default (the Ray instance this process is connected to, else ``RAY_ADDRESS``'s, else a new local one), or
    a cluster address. ``max_retries`` (default: the config's) retries of a point that failed there; points
    that still fail raise :class:`~mogen.evaluation.ray_sweep.PointsFailed` once the rest are written.
    """
    cfg = _load(config, root, substitute, seeds, seed_offset)
    if ray:
        from .ray_sweep import decode_on_ray, import_ray

        import_ray()  # before any work: a missing extra is the first thing said
    folder = Path(cfg.output)
    points, todo = _plan(cfg, folder)
    skipped = len(points)
    models = SweepModels(cfg)
    device, dtype = models.device, models.dtype

    def store(item: Pending, point: dict) -> None:
        store_point(folder, points, item, point)

    if ray:
        retries = cfg.max_retries if max_retries is None else max_retries
        decode_on_ray(cfg, todo, store, address=ray, max_retries=retries, progress=progress)
    else:
        _decode_here(cfg, models, todo, store, progress)
    del models
    _free_memory()
    scored = _score_points(cfg, points, device=device, dtype=dtype, progress=progress)
    files = [(m.name, [[point_file(folder, m.name, mu, seed) for seed in cfg.seeds] for mu in preferences(cfg)])
             for m in cfg.methods]
    table = write_reports(cfg, folder, files, command=command)
    return SweepResult(folder, len(todo), skipped, table, scored)
