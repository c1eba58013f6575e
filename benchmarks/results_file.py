"""Writes a results file under benchmarks/results/: its heading, where it came from
(:func:`mogen.provenance.provenance_lines`: machine, commit, command, date), then the body.
Every benchmark writes its file through :func:`write_results`; ``benchmarks/readme_tables.py``
copies them into the README."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT / "python") not in sys.path:
    sys.path.insert(0, str(ROOT / "python"))

from mogen.provenance import provenance_lines  # noqa: E402


def results_text(title: str, body: Sequence[str], command: Optional[str] = None) -> str:
    """``title`` (a markdown heading), the provenance lines, a blank line, ``body``."""
    return "\n".join([title, "", *provenance_lines(command), "", *body]).rstrip("\n") + "\n"


def write_results(stem: str, title: str, body: Sequence[str], command: Optional[str] = None) -> Path:
    """Writes ``benchmarks/results/<stem>.md`` (see :func:`results_text`) and returns its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{stem}.md"
    path.write_text(results_text(title, body, command))
    return path
