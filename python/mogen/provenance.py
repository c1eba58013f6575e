"""Where a recorded result came from: the machine, the commit and the command.

Every file under ``benchmarks/results/`` starts with :func:`provenance_lines`::

    machine: AMD EPYC, 2 cores, torch 2.13.0+cpu, 2 threads, no GPU, Python 3.11.2
    commit: 0123abcd4567
    command: mogen demo --sweep
    date: 2025-01-31
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

__all__ = ["machine", "commit", "command_line", "provenance_lines"]

#: The repository this package lives in (python/mogen/../..).
ROOT = Path(__file__).resolve().parents[2]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine() -> dict:
    """The machine a result is measured on.

    Keys: ``cpu`` (model name), ``cores`` (``os.cpu_count()``), ``torch``
    (version), ``threads`` (``torch.get_num_threads()``), ``gpu`` (name of CUDA
    device 0, or None) and ``python`` (version).
    """
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": _cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "gpu": gpu, "python": platform.python_version()}


_RESULTS = "benchmarks/results"


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True,
                          timeout=30).stdout.strip()


def commit() -> str:
    """``git rev-parse --short=12 HEAD`` of this checkout, ``+dirty`` if a tracked file differs; never raises.

    Recorded results (``benchmarks/results/``) do not count: a run that writes one result file must not
    make the next run of the same commit read as dirty. ``"unknown"`` outside a git checkout (or without git).
    """
    try:
        head = _git("rev-parse", "--short=12", "HEAD")
    except Exception:
        return "unknown"
    if not head:
        return "unknown"
    try:
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no", "--", ".", f":(exclude){_RESULTS}"))
    except Exception:
        dirty = False
    return head + ("+dirty" if dirty else "")


def _module_of(main: Path) -> Optional[str]:
    """``a.b`` for ``.../a/b/__main__.py`` (the packages above it that have an ``__init__.py``)."""
    parts, d = [], main.parent
    while (d / "__init__.py").exists():
        parts.insert(0, d.name)
        d = d.parent
    return ".".join(parts) or None


def command_line(argv: Optional[Sequence[str]] = None) -> str:
    """The command that produced a result: ``argv`` (default ``sys.argv``) shell-quoted.

    ``python -m mogen.cli demo`` reads ``mogen demo``; another ``python -m pkg``
    reads ``python -m pkg ...``; a script in this repository reads ``python
    <path from the repository root>``; a console script (``.../bin/NAME``) reads ``NAME``.
    """
    argv = list(sys.argv if argv is None else argv)
    if not argv or not argv[0]:
        return shlex.join(["python", *argv[1:]]) if argv else "python"
    first, rest = argv[0], argv[1:]
    path = Path(first)
    try:
        path = path.resolve()
    except OSError:
        pass
    if path.name == "__main__.py":
        module = _module_of(path)
        if module == "mogen.cli" or str(first).replace(os.sep, "/").endswith("mogen/cli/__main__.py"):
            return shlex.join(["mogen", *rest])
        if module:
            return shlex.join(["python", "-m", module, *rest])
    if first == "-c":
        return shlex.join(["python", "-c", *rest])
    if path.parent.name == "bin":  # a console script (mogen, pytest) in some environment's bin/
        return shlex.join([path.name, *rest])
    try:
        rel = path.relative_to(ROOT)
    except ValueError:
        return shlex.join([first, *rest])
    return shlex.join(["python", rel.as_posix(), *rest])


def provenance_lines(command: Optional[str] = None) -> list[str]:
    """Markdown lines saying where a result came from: machine, commit, command (default :func:`command_line`), date."""
    m = machine()
    gpu = f"GPU {m['gpu']}" if m["gpu"] else "no GPU"
    return [f"machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['threads']} threads, {gpu}, "
            f"Python {m['python']}",
            f"commit: {commit()}",
            f"command: {command if command is not None else command_line()}",
            f"date: {datetime.datetime.now(datetime.timezone.utc).date().isoformat()}"]
