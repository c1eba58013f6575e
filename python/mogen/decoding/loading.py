"""Loading local model folders for ``mogen decode``.

Folders are ``transformers`` model folders (``config.json`` + safetensors
weights, tokenizer files beside them or in a folder of their own). Nothing is
downloaded: paths must exist.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from ..dtypes import torch_dtype

__all__ = ["quiet_transformers", "parse_dtype", "load_causal_lm", "load_tokenizer", "has_tokenizer", "parse_guide_spec"]

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def quiet_transformers() -> None:
    """No progress bars while loading or saving models (they clutter streamed output)."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover - cosmetic only
        pass


def parse_dtype(name: str) -> torch.dtype:
    """``torch.bfloat16`` from "bf16" / "bfloat16" (any name :mod:`mogen.dtypes` knows for a float dtype)."""
    return torch_dtype(name)


def _folder(path: str, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(f"{what} folder {str(p)!r} does not exist (mogen decode loads local folders only)")
    return p


def has_tokenizer(path: str) -> bool:
    p = Path(path).expanduser()
    return any((p / f).is_file() for f in _TOKENIZER_FILES)


def parse_guide_spec(spec: str) -> tuple[str, str, Optional[str]]:
    """``EXPERT_DIR:REF_DIR[:TOKENIZER_DIR]`` -> the three paths (tokenizer may be None)."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"--guide must be EXPERT_DIR:REF_DIR[:TOKENIZER_DIR], got {spec!r}")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


def load_causal_lm(path: str, *, dtype: torch.dtype, device: str, device_map: Optional[str], what: str) -> Any:
    """A causal LM from a local folder, in eval mode, on ``device`` or placed by ``device_map``."""
    from transformers import AutoModelForCausalLM

    folder = _folder(path, what)
    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": True}
    if device_map:
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    except ImportError as exc:
        if device_map:
            raise RuntimeError(f"--device-map needs the `accelerate` package ({exc})") from exc
        raise
    if not device_map:
        model = model.to(device)
    return model.eval()


def load_tokenizer(path: str, what: str) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(_folder(path, what), local_files_only=True)
    tok.padding_side = "left"
    return tok
