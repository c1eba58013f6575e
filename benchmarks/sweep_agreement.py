"""How far apart two runs of one sweep are: ``python benchmarks/sweep_agreement.py A/metrics.md B/metrics.md``.

For every method and metric of two ``metrics.md`` tables (for example
``make sweep`` with two ``--seed-offset`` values), prints both values with
their intervals, whether the intervals overlap, and the gap between the two
values in units of the mean interval half-width; then a summary line.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path


def table(path: Path) -> dict:
    """method -> {column: (value, low, high)} for the cells written ``value [low, high]``."""
    lines = [ln for ln in path.read_text().splitlines() if ln.startswith("|")]
    cols = [c.strip() for c in lines[0].strip("|").split("|")][1:]
    out: dict = {}
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        for col, cell in zip(cols, cells[1:]):
            m = re.fullmatch(r"(\S+) \[(\S+), (\S+)\]", cell)
            if m:
                out.setdefault(cells[0], {})[col] = tuple(float(x) for x in m.groups())
    return out


def main(a: str, b: str) -> int:
    ta, tb = table(Path(a)), table(Path(b))
    overlap = total = 0
    worst = (0.0, "")
    print("| method | metric | run A | run B | overlap | gap / half-width |")
    print("|---|---|---|---|---|---:|")
    for method, cols in ta.items():
        for col, (va, la, ha) in cols.items():
            vb, lb, hb = tb[method][col]
            ok = la <= hb and lb <= ha
            half = ((ha - la) + (hb - lb)) / 4
            gap = abs(va - vb) / half if half > 0 else (0.0 if va == vb else float("inf"))
            overlap, total = overlap + ok, total + 1
            worst = max(worst, (gap, f"{method} {col}"))
            print(f"| {method} | {col} | {va:g} [{la:g}, {ha:g}] | {vb:g} [{lb:g}, {hb:g}] | "
                  f"{'yes' if ok else 'NO'} | {gap:.2f} |")
    print(f"\n{overlap} of {total} intervals overlap; largest gap {worst[0]:.2f} half-widths ({worst[1]})")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2]))
