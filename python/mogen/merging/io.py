"""Checkpoint folders in and out: opening sources (one file, a folder, or a
sharded folder with an index), laying out output shards from the input headers,
and the temporary output folder that is renamed into place only when complete.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from .. import _backend
from ..dtypes import BY_CODE, config_name, safetensors_code
from .leftovers import lock_dir, remove_leftovers

PathLike = Union[str, os.PathLike]

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
# Files of other weight formats are never carried over from a source folder.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx")
_WEIGHT_INDEXES = re.compile(r".*\.(safetensors|bin)\.index\.json$")



def kernels():
    C = _backend.kernels()
    if C is None:
        raise RuntimeError(
            "mogen's merge engine needs the compiled extension mogen_ext._C, which could not be loaded "
            f"({_backend._IMPORT_ERROR}); rebuild with `pip install --no-build-isolation -e .`"
        )
    return C


def parse_dtype(dtype) -> Optional[str]:
    """A torch dtype or a name ("bfloat16", "bf16", "float16", "float32", ...) as a safetensors dtype code."""
    return None if dtype is None else safetensors_code(dtype)


def parse_size(size) -> int:
    """Bytes from an int or a string such as "5GB", "500MB", "2GiB"."""
    if isinstance(size, bool):
        raise ValueError(f"shard_size must be a size such as '5GB', got {size!r}")
    if isinstance(size, int):
        n = size
    else:
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(I?)B?\s*", str(size).upper())
        if not m:
            raise ValueError(f"shard_size must be a size such as '5GB' or a number of bytes, got {size!r}")
        scale = {"": 1, "K": 1, "M": 2, "G": 3, "T": 4}[m.group(2)]
        n = int(float(m.group(1)) * ((1024 if m.group(3) else 1000) ** scale))
    if n <= 0:
        raise ValueError(f"shard_size must be positive, got {size!r}")
    return n


@dataclass
class TensorRef:
    """One tensor of a source: where its bytes are."""

    name: str
    dtype: str
    shape: tuple
    reader: object  # mogen_ext._C.SafetensorsReader
    begin: int
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    def read(self, release: bool = True) -> torch.Tensor:
        """A copy of the tensor, in its stored dtype (dtypes torch lacks are refused)."""
        row = BY_CODE.get(self.dtype)
        if row is None or row.torch is None:
            raise ValueError(f"tensor {self.name!r} has dtype {self.dtype}, which this operation cannot load")
        raw = self.reader.read(self.begin, self.end, release)
        return raw.view(row.torch).reshape(self.shape)


@dataclass
class Checkpoint:
    """An opened source: every tensor by name, across its shards."""

    path: Path
    folder: Optional[Path]  # where its non-tensor files live (None for a bare .safetensors file)
    tensors: dict = field(default_factory=dict)  # name -> TensorRef
    readers: list = field(default_factory=list)

    def close(self) -> None:
        for r in self.readers:
            r.close()

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())


def open_checkpoint(path: PathLike) -> Checkpoint:
    """Opens a ``.safetensors`` file, a folder with ``model.safetensors``, or a folder with
    ``model.safetensors.index.json`` and its shards (or, lacking both, every ``*.safetensors`` in it)."""
    C = kernels()
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"mogen: source {str(p)!r} does not exist")
    if p.is_file():
        if not p.name.endswith(".safetensors"):
            raise ValueError(f"mogen: source {str(p)!r} is not a .safetensors file or a checkpoint folder")
        files, folder, weight_map = [p], None, None
    else:
        folder = p
        index = p / INDEX_NAME
        weight_map = None
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
                if not isinstance(weight_map, dict):
                    raise TypeError("weight_map is not an object")
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"mogen: {index}: not a valid safetensors index ({exc})") from None
            names = sorted(set(weight_map.values()))
            for n in names:
                if not isinstance(n, str) or "/" in n or n.startswith("."):
                    raise ValueError(f"mogen: {index}: bad shard name {n!r}")
            files = [p / n for n in names]
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                raise FileNotFoundError(f"mogen: {index} names shards that do not exist: {missing}")
        elif (p / SINGLE_NAME).is_file():
            files = [p / SINGLE_NAME]
        else:
            files = sorted(f for f in p.glob("*.safetensors") if f.is_file())
            if not files:
                raise FileNotFoundError(f"mogen: source folder {str(p)!r} holds no .safetensors file")
    ck = Checkpoint(path=p, folder=folder)
    try:
        for f in files:
            r = C.SafetensorsReader(str(f))
            ck.readers.append(r)
            for name, dtype, shape, begin, end in r.tensors():
                if name in ck.tensors:
                    other = ck.tensors[name].reader.path
                    raise ValueError(f"mogen: duplicate tensor name {name!r} in {other} and {f}")
                ck.tensors[name] = TensorRef(name, dtype, tuple(shape), r, begin, end)
        if weight_map is not None:
            for name, shard in weight_map.items():
                t = ck.tensors.get(name)
                if t is None or Path(t.reader.path).name != shard:
                    raise ValueError(f"mogen: {p / INDEX_NAME} maps tensor {name!r} to {shard}, which does not hold it")
            extra = sorted(set(ck.tensors) - set(weight_map))
            if extra:
                raise ValueError(f"mogen: shards of {p} hold tensors its index does not list: {extra[:5]}")
    except BaseException:
        ck.close()
        raise
    return ck


def natural_key(name: str):
    """Sort key that orders layers numerically: layers.2 before layers.10."""
    return [(0, int(tok), "") if tok.isdigit() else (1, 0, tok) for tok in re.split(r"(\d+)", name)]


def plan_shards(entries: Sequence[tuple], shard_size: int) -> list[list[tuple]]:
    """Greedy packing of (name, dtype, shape, nbytes) entries, in order, into shards of at most
    ``shard_size`` bytes; a tensor larger than that gets a shard of its own."""
    shards: list[list[tuple]] = [[]]
    used = 0
    for e in entries:
        nbytes = e[3]
        if shards[-1] and used + nbytes > shard_size:
            shards.append([])
            used = 0
        shards[-1].append(e)
        used += nbytes
    return shards


def shard_names(count: int) -> list[str]:
    if count == 1:
        return [SINGLE_NAME]
    return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


def _fsync_path(path: Path, directory: bool = False) -> None:
    fd = os.open(str(path), os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class OutputDir:
    """A folder written under a temporary name beside its final one and renamed
    into place by :meth:`commit`; :meth:`abort` removes every trace. The
    temporary folder is locked while this merge runs; temporary folders of
    earlier merges to the same target whose process is gone are removed first
    (see :mod:`mogen.merging.leftovers`)."""

    def __init__(self, path: PathLike, overwrite: bool = False):
        self.final = Path(os.path.abspath(os.fspath(path)))
        if self.final.exists() and not overwrite:
            raise FileExistsError(f"mogen: output folder {str(self.final)!r} already exists (pass overwrite=True)")
        if self.final.exists() and not self.final.is_dir():
            raise FileExistsError(f"mogen: output {str(self.final)!r} exists and is not a folder")
        self._made_parents: list[Path] = []
        self._lock_fd: Optional[int] = None
        parent = self.final.parent
        missing = []
        while not parent.exists():
            missing.append(parent)
            parent = parent.parent
        try:
            for d in reversed(missing):
                os.mkdir(d)
                self._made_parents.append(d)
            self.removed_leftovers = remove_leftovers(self.final)
            self.tmp = self.final.parent / f".{self.final.name}.mogen-tmp-{os.getpid()}-{secrets.token_hex(4)}"
            os.mkdir(self.tmp)
            self._lock_fd = lock_dir(self.tmp)
        except OSError as exc:
            if getattr(self, "tmp", None) is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
            self._remove_parents()
            raise PermissionError(f"mogen: output folder {str(self.final)!r} cannot be written: {exc}") from None

    def _remove_parents(self) -> None:
        for d in reversed(self._made_parents):
            try:
                os.rmdir(d)
            except OSError:
                pass
        self._made_parents = []

    def commit(self, fsync: bool = True) -> None:
        if fsync:
            for f in self.tmp.iterdir():
                if f.is_file():
                    _fsync_path(f)
            _fsync_path(self.tmp, directory=True)
        trash = None
        if self.final.exists():
            trash = self.final.parent / f".{self.final.name}.mogen-old-{os.getpid()}-{secrets.token_hex(4)}"
            os.rename(self.final, trash)
        os.rename(self.tmp, self.final)
        if fsync:
            _fsync_path(self.final.parent, directory=True)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        self._unlock()

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
        self._unlock()
        self._remove_parents()

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def copy_side_files(src_folder: Optional[Path], dst: Path, dtype_code: Optional[str],
                    config_updates: Optional[dict] = None) -> list[str]:
    """Copies the non-tensor files (config.json, tokenizer files, generation_config.json, ...) of
    ``src_folder`` into ``dst``, setting config.json's dtype field to ``dtype_code``'s name and its
    keys in ``config_updates`` (a stacked model's layer count) to their values."""
    if src_folder is None:
        return []
    copied = []
    for f in sorted(src_folder.iterdir()):
        if not f.is_file() or f.name.startswith("."):
            continue
        if f.name.endswith(_WEIGHT_SUFFIXES) or _WEIGHT_INDEXES.fullmatch(f.name):
            continue
        if f.name == "config.json" and (dtype_code is not None or config_updates):
            cfg = _edited_config(f, dtype_code, config_updates or {})
            if cfg is not None:
                (dst / f.name).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
                copied.append(f.name)
                continue
        shutil.copyfile(f, dst / f.name)
        copied.append(f.name)
    return copied


def _edited_config(f: Path, dtype_code: Optional[str], updates: dict) -> Optional[dict]:
    """config.json with its dtype and ``updates`` set; None when it is not a JSON object."""
    try:
        cfg = json.loads(f.read_text())
    except ValueError:
        return None
    if not isinstance(cfg, dict):
        return None
    if dtype_code is not None:
        name = config_name(dtype_code)
        for k in [k for k in ("torch_dtype", "dtype") if k in cfg] or ["torch_dtype"]:
            cfg[k] = name
    cfg.update(updates)
    return cfg


def write_index(dst: Path, weight_map: dict, total_size: int) -> None:
    index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
    (dst / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
