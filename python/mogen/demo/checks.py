"""The embedded comparison's targets, checked on a finished run and printed under its table.

Each line states a measured figure, the target, and PASS / FAIL; nothing here
changes what was measured. Two diagnostics explain the misses:

- controllability (MAGE Definition 1) counts a pair of preferences as
  uncontrolled when some objective's mean reward does not move the way its
  preference moved; a pair fails either because the rewards *tie* (equal means:
  typically both exactly 0, the disfavoured objective's words pushed out of the
  top-p nucleus) or because they move the wrong way (*reversed*);
- a merged guide saves the forward passes of the guides it replaces, never the
  base's: with ``t_b`` the base-only time per token and ``t_e`` the ensemble's,
  the least a merged guide can take is ``t_b + (t_e - t_b) * kept / ensemble``
  forwards (E: 1 of 2 value models; I: expert + reference, 2 of 3), so its
  ratio to the ensemble cannot go below that bound whatever the kernels do.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

__all__ = ["target_lines"]

#: Rows whose controllability must reach 0.95.
_CONTROLLED = ("MPAW token-level", "MAGE-E", "MAGE-E-M", "MAGE-I", "MAGE-I-M")
#: (merged, ensemble, guide forwards kept, guide forwards of the ensemble).
_MERGED = (("MAGE-E-M", "MAGE-E", 1, 2), ("MAGE-I-M", "MAGE-I", 2, 3))


def _means(folder: Path) -> dict:
    """method -> (prefs ``[P, n]``, mean rewards ``[P, n]``) from the run's means.csv."""
    with open(folder / "means.csv", newline="") as f:
        rows = list(csv.reader(f))
    n = sum(1 for c in rows[0] if c.startswith("mu_"))
    out: dict = {}
    for r in rows[1:]:
        prefs, rewards = out.setdefault(r[0], ([], []))
        prefs.append([float(x) for x in r[1 : 1 + n]])
        rewards.append([float(x) for x in r[1 + n : 1 + 2 * n]])
    return {k: (np.asarray(p), np.asarray(r)) for k, (p, r) in out.items()}


def _failing_pairs(prefs: np.ndarray, rewards: np.ndarray) -> tuple[int, int]:
    """(tied, reversed): unordered pairs failing Definition 1 by a tie only, and by a wrong-way move."""
    tied = reversed_ = 0
    for i in range(len(prefs)):
        for j in range(i + 1, len(prefs)):
            moved = prefs[i] != prefs[j]
            want, got = np.sign(prefs[i] - prefs[j])[moved], np.sign(rewards[i] - rewards[j])[moved]
            if np.all(want == got):
                continue
            if np.any(got == -want):
                reversed_ += 1
            else:
                tied += 1
    return tied, reversed_


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def target_lines(folder: Path, table: list) -> list[str]:
    """The issue's targets on a two-objective run in ``folder`` with metrics rows ``table``."""
    rows, means = dict(table), _means(folder)
    lines = []
    for name in _CONTROLLED:
        c = rows[name]["controllability"]
        tied, rev = _failing_pairs(*means[name])
        lines.append(f"- controllability of {name}: {c:.4f} (target >= 0.95: {_verdict(c >= 0.95)}); failing pairs: "
                     f"{tied} tied, {rev} reversed")
    base_tps = rows["base only"]["tokens/s"]
    for merged, ens, kept, total in _MERGED:
        hv = rows[merged]["HV"] / rows[ens]["HV"] if rows[ens]["HV"] > 0 else float("nan")
        t = rows[ens]["tokens/s"] / rows[merged]["tokens/s"]
        tb, te = 1 / base_tps, 1 / rows[ens]["tokens/s"]
        bound = (tb + (te - tb) * kept / total) / te
        lines.append(f"- {merged} vs {ens}: HV {hv:.3f}x (target within 5%: {_verdict(abs(hv - 1) <= 0.05)}); time per "
                     f"token {t:.2f}x (target <= 0.6x: {_verdict(t <= 0.6)}; the least it could be, the base's forward "
                     f"kept: {bound:.2f}x)")
    hv = {k: v["HV"] for k, v in rows.items()}
    lines.append(f"- Stage 2 adds to Stage 1: HV MAGE-E {hv['MAGE-E']:.4f} > Bone Soup {hv['Bone Soup']:.4f} > "
                 f"Rewarded Soup {hv['Rewarded Soup']:.4f}: "
                 f"{_verdict(hv['MAGE-E'] > hv['Bone Soup'] > hv['Rewarded Soup'])}")
    lines.append(f"- MPAW chunk search HV {hv['MPAW chunk search']:.4f} >= MPAW token-level "
                 f"{hv['MPAW token-level']:.4f}: {_verdict(hv['MPAW chunk search'] >= hv['MPAW token-level'])}")
    return lines
