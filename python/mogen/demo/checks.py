"""The embedded comparison's targets, checked on a finished run and printed under its table.

Each line states a measured figure with its 95% bootstrap interval, the target,
and a verdict: **met** (the whole interval clears the target), **not met** (the
whole interval lies on the wrong side) or **within noise** (the interval
straddles the target: this run cannot tell). Comparisons of two methods (a HV
ratio, a HV difference) are read from paired replicates: the same resampled
prompts and samples for both (:mod:`mogen.evaluation.bootstrap`). Time per
token has no bootstrap; its interval is the range over the decoding seeds,
each seed timed on its own. Nothing here changes what was measured. Two
diagnostics explain misses:

- controllability (MAGE Definition 1) counts a pair of preferences as
  uncontrolled when some objective's mean reward does not move the way its
  preference moved; a pair fails either because the rewards *tie* (equal means:
  typically both exactly 0, the disfavoured objective's words pushed out of the
  top-p nucleus) or because they move the wrong way (*reversed*);
- a merged guide saves what the guides it replaces cost, never the base's
  share: with ``t_b`` the base-only time per token and ``t_e`` the ensemble's,
  the guides' share ``t_e - t_b`` is their forwards plus each guide's own
  pipeline (re-tokenising the text, its terms). E-M keeps 1 of 2 value models
  (half of both); I-M keeps 2 of 3 forwards (the merged expert and the shared
  reference) but 1 of 2 guide pipelines, so the least either can take is
  ``t_b + (t_e - t_b) / 2``, and its ratio to the ensemble cannot go below that
  bound whatever the kernels do. (An earlier bound counted forwards only, 2/3
  for I-M; a measured I-M beat it, so it was not a floor.)
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..evaluation.bootstrap import Interval, interval

__all__ = ["target_lines", "text_vs_map_lines", "TEXT_VS_MAP"]

#: Rows whose controllability must reach 0.95.
_CONTROLLED = ("MPAW token-level", "MAGE-E", "MAGE-E-M", "MAGE-I", "MAGE-I-M")
#: (merged, ensemble, the least share of the ensemble's guide time the merged guide keeps: the smaller of its
#: shares of the guide forwards and of the guide pipelines; see the module docstring).
_MERGED = (("MAGE-E-M", "MAGE-E", 1 / 2), ("MAGE-I-M", "MAGE-I", min(2 / 3, 1 / 2)))
#: A merged guide's HV within this share of its ensemble's; its time per token at most this share.
_HV_TOLERANCE = 0.05
_TIME_SHARE = 0.6
_CONTROL_TARGET = 0.95


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


def _within(iv: Interval, low: float, high: float) -> str:
    """The verdict of "the value lies in ``[low, high]``"."""
    if low <= iv.low and iv.high <= high:
        return "met"
    if iv.high < low or iv.low > high:
        return "not met"
    return "within noise"


def _fmt(iv: Interval, digits: int = 4) -> str:
    return f"{iv.value:.{digits}f} [{iv.low:.{digits}f}, {iv.high:.{digits}f}]"


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / b, np.nan)


def _merged_line(rows: dict, boot: dict, merged: str, ens: str, kept: float) -> str:
    hv = interval(rows[merged]["HV"] / rows[ens]["HV"] if rows[ens]["HV"] > 0 else float("nan"),
                  _ratio(boot[f"{merged}/HV"], boot[f"{ens}/HV"]))
    per_seed = boot[f"{ens}/tokens_per_second"] / boot[f"{merged}/tokens_per_second"]
    t = Interval(rows[ens]["tokens/s"] / rows[merged]["tokens/s"], float(per_seed.min()), float(per_seed.max()))
    tb, te = 1 / rows["base only"]["tokens/s"], 1 / rows[ens]["tokens/s"]
    bound = (tb + (te - tb) * kept) / te
    return (f"- {merged} vs {ens}: HV ratio {_fmt(hv, 3)} (target within {_HV_TOLERANCE:.0%}: "
            f"{_within(hv, 1 - _HV_TOLERANCE, 1 + _HV_TOLERANCE)}); time per token {_fmt(t, 2)} over "
            f"{len(per_seed)} seed(s) (target <= {_TIME_SHARE}x: {t.clears(_TIME_SHARE, above=False)}; the least it "
            f"could be, the base's share kept: {bound:.2f}x)")


def _order_verdict(diff: Interval, strict: bool) -> str:
    """The verdict of "difference > 0" (``>= 0`` unless ``strict``) from its interval."""
    if diff.low > 0 or (not strict and diff.low >= 0):
        return "met"
    if diff.high < 0 or (strict and diff.high <= 0):
        return "not met"
    return "within noise"


def _order_line(rows: dict, boot: dict, chain: tuple, strict: bool) -> str:
    """HV falls along ``chain`` (strictly when ``strict``), judged on every paired difference's interval."""
    diffs = [interval(rows[a]["HV"] - rows[b]["HV"], boot[f"{a}/HV"] - boot[f"{b}/HV"])
             for a, b in zip(chain, chain[1:])]
    verdicts = [_order_verdict(d, strict) for d in diffs]
    verdict = "not met" if "not met" in verdicts else "within noise" if "within noise" in verdicts else "met"
    sign = " > " if strict else " >= "
    figures = sign.join(f"{name} {rows[name]['HV']:.4f}" for name in chain)
    parts = ", ".join(f"{a} - {b} {_fmt(d)}" for (a, b), d in zip(zip(chain, chain[1:]), diffs))
    return f"HV {figures}: {verdict} (paired differences: {parts})"


#: The cross-family comparison's pairs (``cross_vocab="text"`` row, ``"map"`` row): the goal is text at or
#: above map in HV and controllability. The last pair is the diagnostic row of mogen.demo.sweep.CROSS_METHODS.
TEXT_VS_MAP = (("MPAW token-level (text)", "MPAW token-level (map)"), ("MAGE-I (text)", "MAGE-I (map)"),
               ("MAGE-I (text, beta 0.5)", "MAGE-I (map)"))


def _boot(folder: Path) -> dict:
    with np.load(folder / "bootstrap.npz") as z:
        return {k: z[k] for k in z.files}


def text_vs_map_lines(folder: Path, table: list) -> list[str]:
    """Per :data:`TEXT_VS_MAP` pair on the run in ``folder`` with metrics rows ``table``: the paired bootstrap
    differences text - map of HV and controllability, each judged "text >= map" (met: the whole interval
    is >= 0; not met: wholly < 0; else within noise), and what text costs in time per token (the range over
    the decoding seeds, as for the merged guides)."""
    rows, boot = dict(table), _boot(folder)
    lines = []
    for text, mapped in TEXT_VS_MAP:
        parts = []
        for metric in ("HV", "controllability"):
            d = interval(rows[text][metric] - rows[mapped][metric],
                         boot[f"{text}/{metric}"] - boot[f"{mapped}/{metric}"])
            parts.append(f"{metric} {rows[text][metric]:.4f} vs {rows[mapped][metric]:.4f}, paired difference "
                         f"{_fmt(d)} (text >= map: {_order_verdict(d, strict=False)})")
        per_seed = boot[f"{mapped}/tokens_per_second"] / boot[f"{text}/tokens_per_second"]
        t = Interval(rows[mapped]["tokens/s"] / rows[text]["tokens/s"], float(per_seed.min()), float(per_seed.max()))
        lines.append(f"- {text} vs {mapped}: " + "; ".join(parts) + f"; time per token {_fmt(t, 2)}x over "
                     f"{len(per_seed)} seed(s)")
    return lines


def target_lines(folder: Path, table: list) -> list[str]:
    """The issue's targets on a two-objective run in ``folder`` (means.csv, bootstrap.npz) with metrics
    rows ``table``."""
    rows, means, boot = dict(table), _means(folder), _boot(folder)
    lines = []
    for name in _CONTROLLED:
        c = interval(rows[name]["controllability"], boot[f"{name}/controllability"])
        tied, rev = _failing_pairs(*means[name])
        lines.append(f"- controllability of {name}: {_fmt(c)} (target >= {_CONTROL_TARGET}: "
                     f"{c.clears(_CONTROL_TARGET)}); failing pairs: {tied} tied, {rev} reversed")
    lines += [_merged_line(rows, boot, *m) for m in _MERGED]
    lines.append("- Stage 2 adds to Stage 1: " +
                 _order_line(rows, boot, ("MAGE-E", "Bone Soup", "Rewarded Soup"), strict=True))
    lines.append("- chunk search adds to token level: " +
                 _order_line(rows, boot, ("MPAW chunk search", "MPAW token-level"), strict=False))
    return lines
