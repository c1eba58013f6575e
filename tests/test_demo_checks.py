"""The embedded comparison's target lines: verdicts from intervals (met / not met / within noise), failing
pairs split into ties and reversals, the merged-guide bound."""

from __future__ import annotations

import numpy as np
import pytest

from mogen.demo.checks import _failing_pairs, target_lines
from mogen.evaluation.bootstrap import Interval
from mogen.evaluation.report import method_metrics

PREFS = np.array([[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]])
GOOD = [[0.1, 0.3], [0.2, 0.2], [0.3, 0.1]]
NAMES = ("base only", "Rewarded Soup", "Bone Soup", "MPAW token-level", "MPAW chunk search", "MAGE-E", "MAGE-E-M",
         "MAGE-I", "MAGE-I-M")


def test_failing_pairs_ties_and_reversals():
    ordered = np.array([[0.1, 0.3], [0.2, 0.2], [0.3, 0.1]])
    assert _failing_pairs(PREFS, ordered) == (0, 0)
    tied = np.array([[0.0, 0.3], [0.0, 0.2], [0.3, 0.0]])  # objective 1 flat at 0 for the first two
    assert _failing_pairs(PREFS, tied) == (1, 0)
    swapped = np.array([[0.2, 0.3], [0.1, 0.2], [0.3, 0.1]])  # objective 1 falls from mu_1 = 0 to 0.5
    assert _failing_pairs(PREFS, swapped) == (0, 1)


@pytest.mark.parametrize("low,high,verdict", [(0.96, 1.0, "met"), (0.95, 1.0, "met"), (0.9, 0.97, "within noise"),
                                              (0.5, 0.94, "not met")])
def test_interval_verdicts(low, high, verdict):
    assert Interval(0.95, low, high).clears(0.95) == verdict
    # "at most": the mirror image
    mirrored = {"met": "met", "not met": "not met", "within noise": "within noise"}[verdict]
    assert Interval(-0.95, -high, -low).clears(-0.95, above=False) == mirrored


def _run(tmp_path, rows: dict, boot: dict) -> list:
    """A run folder: means.csv from ``rows`` (method -> (rewards [3, 2], tokens/s per seed)) and
    bootstrap.npz from ``boot`` (method -> {metric: replicates}); returns the metrics table."""
    lines = ["method,mu_1,mu_2,a,b,tokens,seconds"]
    table, arrays = [], {}
    for name, (r, tps) in rows.items():
        r, tps = np.asarray(r, dtype=float), np.asarray(tps, dtype=float)
        lines += [f"{name},{mu[0]},{mu[1]},{x[0]},{x[1]},100,{100 / tps.mean()}" for mu, x in zip(PREFS, r)]
        row = method_metrics(PREFS, r, [0.0, 0.0], 300 * len(tps), 300 / tps.mean() * len(tps))
        table.append((name, row))
        arrays[f"{name}/tokens_per_second"] = tps
        for metric in ("HV", "controllability"):
            arrays[f"{name}/{metric}"] = np.asarray(boot.get(name, {}).get(metric, [row[metric]] * 10), dtype=float)
    (tmp_path / "means.csv").write_text("\n".join(lines) + "\n")
    np.savez(tmp_path / "bootstrap.npz", **arrays)
    return table


def test_target_lines(tmp_path):
    flat = [[0.01, 0.3], [0.01, 0.2], [0.3, 0.01]]  # objective 1 flat for the first two
    rows = {name: (GOOD, [500.0]) for name in NAMES}
    rows.update({"base only": ([[0.1, 0.1]] * 3, [1000.0, 1000.0]), "Rewarded Soup": ([[0.1, 0.2], [0.15, 0.15],
                                                                                       [0.2, 0.1]], [900.0]),
                 "MAGE-E": ([[0.12, 0.32], [0.22, 0.22], [0.32, 0.12]], [400.0, 400.0]),
                 "MAGE-E-M": (GOOD, [600.0, 650.0]), "MAGE-I": (flat, [250.0, 250.0]),
                 "MAGE-I-M": (flat, [300.0, 300.0])})
    boot = {"MPAW token-level": {"controllability": np.linspace(0.9, 1.0, 10)},
            "MAGE-I": {"controllability": np.linspace(0.5, 0.7, 10)}}
    text = "\n".join(target_lines(tmp_path, _run(tmp_path, rows, boot)))
    assert "controllability of MAGE-E: 1.0000 [1.0000, 1.0000] (target >= 0.95: met); failing pairs: 0 tied" in text
    assert "controllability of MPAW token-level: 1.0000 [0.9025, 0.9975] (target >= 0.95: within noise)" in text
    assert "controllability of MAGE-I: 0.6667 [0.5050, 0.6950] (target >= 0.95: not met); failing pairs: 1 tied, " \
           "0 reversed" in text
    # E: 2.5 ms per token, base 1 ms: one of two value models kept -> (1 + 1.5 / 2) / 2.5 = 0.70; per seed the
    # ratio is 400 / 600 and 400 / 650
    assert "time per token 0.64 [0.62, 0.67] over 2 seed(s) (target <= 0.6x: not met; " in text
    assert "the least it could be, the base's share kept: 0.70x" in text
    # I: 4 ms, base 1 ms: 2 of 3 forwards but 1 of 2 guide pipelines kept -> (1 + 3 / 2) / 4 = 0.625
    assert "MAGE-I-M vs MAGE-I: HV ratio 1.000 [1.000, 1.000] (target within 5%: met); time per token 0.83" in text
    assert "base's share kept: 0.62x" in text


@pytest.mark.parametrize("spread,verdict", [(0.0, "not met"), (0.02, "within noise"), (0.5, "met")])
def test_stage_two_line_follows_the_intervals(tmp_path, spread, verdict):
    """HV MAGE-E > Bone Soup > Rewarded Soup, judged on paired differences: an E whose replicates sit
    above, straddle, or equal Bone Soup's."""
    rows = {name: (GOOD, [500.0]) for name in NAMES}
    rows["Bone Soup"] = ([[0.2, 0.4], [0.3, 0.3], [0.4, 0.2]], [500.0])
    rows["Rewarded Soup"] = ([[0.05, 0.1], [0.1, 0.1], [0.1, 0.05]], [500.0])
    rows["MAGE-E"] = ([[x * 1.5 for x in p] for p in rows["Bone Soup"][0]], [500.0])
    bone_hv = method_metrics(PREFS, np.asarray(rows["Bone Soup"][0]), [0.0, 0.0], 1, 1)["HV"]
    boot = {"Bone Soup": {"HV": np.full(10, bone_hv)},
            "MAGE-E": {"HV": bone_hv + np.linspace(-spread / 2, spread, 10) if spread != 0.5 else
                       np.full(10, bone_hv + 0.1)}}
    if spread == 0.0:
        boot["MAGE-E"]["HV"] = np.full(10, bone_hv - 0.01)
    line = target_lines(tmp_path, _run(tmp_path, rows, boot))[-2]
    assert line.startswith("- Stage 2 adds to Stage 1: HV MAGE-E") and f": {verdict} (paired differences" in line
