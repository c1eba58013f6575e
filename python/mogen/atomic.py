"""Files renamed into place when complete, so that a reader (or a resumed run) never sees half of one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

__all__ = ["write_atomic"]


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` to a temporary file beside ``path`` (its folder made if missing), then ``tmp`` renamed
    onto ``path``; the temporary name carries the process id, so concurrent writers never share one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)
