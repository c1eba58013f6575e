"""The streaming merge engine: :func:`merge` (checkpoints to folders): resolve the method, plan
(:class:`~mogen.merging.plan.MergePlan`), write the outputs."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from ..dtypes import itemsize, torch_dtype
from . import methods as _methods
from .io import OutputDir, copy_side_files, kernels, parse_dtype, parse_size, plan_shards, shard_names, write_index
from .compute import Progress, linear_columns, merge_tensor as _nonlinear, open_plan, read_bytes, source_paths
from .plan import Item
from .report import MergeReport, RssTracker, timed

__all__ = ["merge"]

PathLike = Union[str, os.PathLike]
# Elements per kernel call: bounds the time between progress updates (and Ctrl-C checks).
PIECE = 1 << 25


def merge(
    sources,
    coefficients=None,
    out=None,
    *,
    base: Optional[PathLike] = None,
    method: str = "linear",
    dtype=None,
    shard_size="5GB",
    progress: bool = True,
    rules=None,
    on_missing: str = "error",
    overwrite: bool = False,
    fsync: bool = True,
    **method_params,
) -> MergeReport:
    """Merges checkpoints into new checkpoint folders, reading every input once.

    Args:
        sources: checkpoint folders (one ``model.safetensors``, or shards with a
            ``model.safetensors.index.json``) or ``.safetensors`` files; N of them.
        coefficients: ``[N]`` with one ``out`` folder, or ``[K, N]`` with K folders:
            all K merges come from one read of the inputs. Any finite reals. For
            ``bone_soup`` the preference ``mu``; for ``ties``/``dare_*`` the per-source
            weights (default 1); for ``slerp`` ``t`` (scalar or ``[K]``; or pass ``t=``).
        out: the output folder, or a list of K folders.
        base: base checkpoint (``task_arithmetic``, ``ties``, ``dare_*``: deltas are
            taken from it); also the source of config/tokenizer files when given.
        method: a registered method (:data:`mogen.merging.METHODS`): ``linear``
            (``normalize=False``), ``task_arithmetic`` (``lambda``, ``normalize``), ``bone_soup``
            (``beta``, ``alpha``, ``sft``), ``ties`` (``density``, ``normalize=True``, ``lambda``),
            ``dare_linear`` / ``dare_ties`` (``density`` or ``drop_rate``, ``seed``, ``rescale=True``),
            ``slerp`` (``t``), ``passthrough`` (one source, ``scale``), or one registered with
            :func:`mogen.merging.register_method`.
        dtype: output dtype of merged tensors (default: the base's, else the first source's).
        shard_size: largest output shard ("5GB", "500MB", bytes); a larger tensor gets its own.
        rules: ``[(regex, "merge" | "skip" | "copy:K" | "copy:base")]``, first match wins.
        on_missing: tensors absent from an input the merge needs: "error", "skip" or "first".
        overwrite: replace existing output folders (only once the new ones are complete).
        fsync: flush the output to disk before renaming it into place.

    Output folders are written under temporary names and renamed into place when
    complete; on any error nothing is left behind.
    """
    rss = RssTracker()
    src_paths = source_paths(sources, "sources")
    spec = _methods.resolve(method, len(src_paths), coefficients, base is not None, method_params)
    K = spec.num_outputs
    if out is None:
        raise TypeError("merge needs out= (a folder, or a list of K folders)")
    outs = [out] if isinstance(out, (str, os.PathLike)) else list(out)
    outs = source_paths(outs, "out")
    if len(outs) != K:
        raise ValueError(f"{K} merges were asked for (coefficients has {K} rows) but out names {len(outs)} folder(s)")
    check_outputs(outs, src_paths + [base, spec.params.get("sft")])
    dtype_code = parse_dtype(dtype)
    shard_bytes = parse_size(shard_size)
    kernels()

    seconds: dict = {}
    with timed(seconds, "open"):
        plan = open_plan(spec, src_paths, base, spec.params.get("sft"))
    try:
        with timed(seconds, "plan"):
            plan.plan(dtype_code, rules, on_missing)
        job = WriteJob(outs, overwrite, fsync, shard_bytes, dtype_code, plan.side_folder, progress, method)
        return write_outputs(spec, plan.items, job, seconds, rss)
    finally:
        plan.close()


def check_outputs(outs: list[str], inputs: Sequence) -> list[str]:
    """Absolute output folders; refuses repeats and any overlap with an input."""
    finals = [os.path.abspath(o) for o in outs]
    if len(set(finals)) != len(finals):
        raise ValueError(f"out names the same folder twice: {outs}")
    inputs_abs = [os.path.abspath(p) for p in inputs if p is not None]
    for o in finals:
        for p in inputs_abs:
            if o == p or p.startswith(o + os.sep) or o.startswith(p + os.sep):
                raise ValueError(f"output folder {o!r} overlaps input {p!r}")
    return finals


@dataclass
class WriteJob:
    """Where and how a planned merge is written."""

    outs: list
    overwrite: bool
    fsync: bool
    shard_bytes: int
    dtype_code: Optional[str]  # sets config.json's dtype when given
    side_folder: Optional[Path]  # config and tokenizer files come from here
    progress: bool
    label: str  # the progress bar's and the report's method name
    config_updates: dict = field(default_factory=dict)  # config.json keys to set (e.g. a new layer count)


def write_outputs(spec, items: list[Item], job: WriteJob, seconds: dict, rss: RssTracker) -> MergeReport:
    """Writes planned items into the job's output folders (temporary names, renamed into place
    when complete; nothing is left behind on any error). The inputs stay open for the caller to close."""
    C = kernels()
    entries = [(it.name, it.out_dtype, list(it.shape), it.out_nbytes) for it in items]
    shards = plan_shards(entries, job.shard_bytes)
    names = shard_names(len(shards))
    dirs: list[OutputDir] = []
    writers = []
    bar = None
    try:
        t0 = time.perf_counter()
        for o in job.outs:
            dirs.append(OutputDir(o, job.overwrite))
        where: dict[str, list[tuple]] = {}  # name -> [(writer, data offset)] per output
        weight_map = {}
        for d in dirs:
            for shard, fname in zip(shards, names):
                w = C.SafetensorsWriter(str(d.tmp / fname), [e[:3] for e in shard], {"format": "pt"})
                writers.append(w)
                for name, _dt, _shape, begin, _end in w.tensors():
                    where.setdefault(name, []).append((w, begin))
                    weight_map[name] = fname
        bar = Progress(sum(_input_bytes(spec, it) for it in items), job.progress, f"mogen {job.label}")
        bytes_read = 0
        for it in items:
            bytes_read += _produce(C, it.spec or spec, it, where[it.name], bar)
        bar.close()
        for w in writers:
            w.finish(job.fsync)
        bytes_written = sum(w.file_size for w in writers)
        total_size = sum(e[3] for e in entries)
        for d in dirs:
            if len(shards) > 1:
                write_index(d.tmp, weight_map, total_size)
            copy_side_files(job.side_folder, d.tmp, job.dtype_code, job.config_updates)
        seconds["merge"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for d in dirs:
            d.commit(job.fsync)
        seconds["finalize"] = time.perf_counter() - t0
    except BaseException:
        if bar is not None:
            bar.close()
        for w in writers:
            w.abort()
        for d in dirs:
            d.abort()
        raise
    return MergeReport(method=job.label, outputs=[str(d.final) for d in dirs], num_tensors=len(items),
                       bytes_read=bytes_read, bytes_written=bytes_written, seconds=seconds,
                       baseline_rss=rss.baseline, peak_rss=rss.peak())


def _input_bytes(spec, it: Item) -> int:
    """The input bytes producing `it` reads."""
    spec = it.spec or spec
    if it.action == "copy":
        return it.refs[it.copy_from].nbytes
    if spec.linear:
        cols, _ = linear_columns(spec, it)
        return sum(it.refs[i].nbytes for i in cols)
    return read_bytes(it)


def _call_kernel(C, srcs, coef, outputs, numel) -> None:
    """One K3 call (a module-level hook, so tests can make a write fail midway)."""
    C.merge_to_files(srcs, coef, outputs, numel)


def _produce(C, spec, it: Item, sinks: list, bar) -> int:
    """Writes tensor `it` to every output; returns the input bytes it read."""
    out_isz = itemsize(it.out_dtype)
    if it.action == "copy":
        ref = it.refs[it.copy_from]
        if ref.dtype == it.out_dtype:
            for w, off in sinks:
                w.copy_from(off, ref.reader, ref.begin, ref.nbytes, False)
            ref.reader.release(ref.begin, ref.end)
        else:
            _stream(C, [ref], np.ones((len(sinks), 1)), it, sinks, out_isz, bar)
            return ref.nbytes
        bar.update(ref.nbytes)
        return ref.nbytes
    if spec.linear:
        cols, coef = linear_columns(spec, it)
        refs = [it.refs[i] for i in cols]
        _stream(C, refs, coef, it, sinks, out_isz, bar)
        return sum(r.nbytes for r in refs)
    nbytes = sum(r.nbytes for r in it.refs if r is not None)
    for k, (w, off) in enumerate(sinks):
        res = _nonlinear(spec, it, k)
        w.write(off, res.to(torch_dtype(it.out_dtype)).contiguous())
    bar.update(nbytes)
    return nbytes


def _stream(C, refs, coef: np.ndarray, it: Item, sinks, out_isz: int, bar) -> None:
    numel = it.numel
    flat = [float(x) for x in np.asarray(coef, dtype=np.float64).reshape(-1)]
    in_isz = [itemsize(r.dtype) for r in refs]
    for lo in range(0, max(numel, 1), PIECE):
        n = min(PIECE, numel - lo)
        srcs = [(r.reader, r.begin + lo * s, r.dtype) for r, s in zip(refs, in_isz)]
        outs = [(w, off + lo * out_isz, it.out_dtype) for w, off in sinks]
        _call_kernel(C, srcs, flat, outs, n)
        bar.update(sum(n * s for s in in_isz))
