"""Loading local model folders: every causal LM and tokenizer mogen loads from a folder.

Folders are ``transformers`` model folders (``config.json`` + safetensors
weights, tokenizer files beside them or in a folder of their own). Nothing is
downloaded: paths must exist.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from .._optional import missing
from ..dtypes import torch_dtype

PathLike = Union[str, os.PathLike]

__all__ = ["quiet_transformers", "parse_dtype", "load_causal_lm", "load_tokenizer", "has_tokenizer", "own_tokenizer",
           "FolderCache", "parse_guide_spec"]

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def quiet_transformers() -> None:
    """No progress bars while loading or saving models (they clutter streamed output)."""
    hf_logging.disable_progress_bar()


def parse_dtype(name: str) -> torch.dtype:
    """``torch.bfloat16`` from "bf16" / "bfloat16" (any name :mod:`mogen.dtypes` knows for a float dtype)."""
    return torch_dtype(name)


def _folder(path: PathLike, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(f"{what} folder {str(p)!r} does not exist (mogen loads local folders only)")
    return p


def has_tokenizer(path: PathLike) -> bool:
    p = Path(path).expanduser()
    return any((p / f).is_file() for f in _TOKENIZER_FILES)


def parse_guide_spec(spec: str) -> tuple[str, str, Optional[str]]:
    """``EXPERT_DIR:REF_DIR[:TOKENIZER_DIR]`` -> the three paths (tokenizer may be None)."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"--guide must be EXPERT_DIR:REF_DIR[:TOKENIZER_DIR], got {spec!r}")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


def load_causal_lm(path: PathLike, *, dtype: Optional[torch.dtype] = None, device: Any = "cpu",
                   device_map: Optional[str] = None, what: str = "model") -> Any:
    """A causal LM from a local folder, quietly, in eval mode, on ``device`` (None: where ``transformers``
    puts it) or placed by ``device_map``. ``dtype`` None keeps ``transformers``' default; ``what`` names the
    folder in errors. Every mogen loader of a causal LM folder goes through here."""
    quiet_transformers()
    folder = _folder(path, what)
    kwargs: dict[str, Any] = {"local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if device_map:
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    except ImportError as exc:
        if device_map:  # transformers places the layers with accelerate
            raise missing("accelerate", "multi-gpu", "--device-map", exc) from exc
        raise
    if not device_map and device is not None:
        model = model.to(device)
    return model.eval()


def load_tokenizer(path: PathLike, what: str) -> Any:
    """A folder's tokenizer, padding on the left (decoding batches are left-padded)."""
    tok = AutoTokenizer.from_pretrained(_folder(path, what), local_files_only=True)
    tok.padding_side = "left"
    return tok


def own_tokenizer(path: PathLike, what: str) -> Optional[Any]:
    """The own-tokenizer rule: a guide folder's own tokenizer when it has one, else None (the guide
    then reads the base's tokens)."""
    return load_tokenizer(path, what) if has_tokenizer(path) else None


class FolderCache:
    """Models and tokenizers loaded once per folder, all in one ``dtype`` on one ``device``: a folder
    named twice (a reference shared by several guides) is one model object."""

    def __init__(self, *, dtype: Optional[torch.dtype] = None, device: Any = "cpu",
                 device_map: Optional[str] = None) -> None:
        self.dtype, self.device, self.device_map = dtype, device, device_map
        self._models: dict[str, Any] = {}
        self._tokenizers: dict[str, Any] = {}

    def model(self, path: PathLike, what: str = "model", *, fresh: bool = False) -> Any:
        """The causal LM in ``path``; ``fresh`` loads a copy of its own (one to merge into), not cached."""
        if fresh:
            return load_causal_lm(path, dtype=self.dtype, device=self.device, device_map=self.device_map, what=what)
        key = str(path)
        if key not in self._models:
            self._models[key] = load_causal_lm(path, dtype=self.dtype, device=self.device,
                                               device_map=self.device_map, what=what)
        return self._models[key]

    def tokenizer(self, path: PathLike, what: str = "tokenizer") -> Any:
        key = str(path)
        if key not in self._tokenizers:
            self._tokenizers[key] = load_tokenizer(path, what)
        return self._tokenizers[key]

    def own_tokenizer(self, path: PathLike, what: str = "guide tokenizer") -> Optional[Any]:
        """:func:`own_tokenizer`, cached."""
        return self.tokenizer(path, what) if has_tokenizer(path) else None
