"""The embedded comparison's target lines: failing pairs split into ties and reversals, the merged-guide bound."""

from __future__ import annotations

import numpy as np
import pytest

from mogen.demo.checks import _failing_pairs, target_lines
from mogen.evaluation.report import method_metrics

PREFS = np.array([[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]])


def test_failing_pairs_ties_and_reversals():
    ordered = np.array([[0.1, 0.3], [0.2, 0.2], [0.3, 0.1]])
    assert _failing_pairs(PREFS, ordered) == (0, 0)
    tied = np.array([[0.0, 0.3], [0.0, 0.2], [0.3, 0.0]])  # objective 1 flat at 0 for the first two
    assert _failing_pairs(PREFS, tied) == (1, 0)
    swapped = np.array([[0.2, 0.3], [0.1, 0.2], [0.3, 0.1]])  # objective 1 falls from mu_1 = 0 to 0.5
    assert _failing_pairs(PREFS, swapped) == (0, 1)


def _run(tmp_path, rows: dict) -> list:
    """A run folder whose means.csv holds ``rows`` (method -> (rewards [3, 2], tokens/s)); the table from them."""
    lines = ["method,mu_1,mu_2,a,b,tokens,seconds"]
    table = []
    for name, (r, tps) in rows.items():
        r = np.asarray(r, dtype=float)
        lines += [f"{name},{mu[0]},{mu[1]},{x[0]},{x[1]},100,{100 / tps}" for mu, x in zip(PREFS, r)]
        table.append((name, method_metrics(PREFS, r, [0.0, 0.0], 300, 300 / tps)))
    (tmp_path / "means.csv").write_text("\n".join(lines) + "\n")
    return table


def test_target_lines(tmp_path):
    good = [[0.1, 0.3], [0.2, 0.2], [0.3, 0.1]]
    flat = [[0.01, 0.3], [0.01, 0.2], [0.3, 0.01]]  # objective 1 flat for the first two
    rows = {"base only": ([[0.1, 0.1]] * 3, 1000.0), "Rewarded Soup": ([[0.1, 0.2], [0.15, 0.15], [0.2, 0.1]], 900.0),
            "Bone Soup": (good, 900.0), "MPAW token-level": (good, 500.0), "MPAW chunk search": (good, 50.0),
            "MAGE-E": ([[0.12, 0.32], [0.22, 0.22], [0.32, 0.12]], 400.0), "MAGE-E-M": (good, 600.0),
            "MAGE-I": (flat, 250.0), "MAGE-I-M": (flat, 300.0)}
    lines = target_lines(tmp_path, _run(tmp_path, rows))
    text = "\n".join(lines)
    assert "controllability of MAGE-E: 1.0000 (target >= 0.95: PASS); failing pairs: 0 tied, 0 reversed" in text
    assert "controllability of MAGE-I: 0.6667 (target >= 0.95: FAIL); failing pairs: 1 tied, 0 reversed" in text
    # E: 2.5 ms per token, base 1 ms: one of two value models kept -> (1 + 1.5 / 2) / 2.5 = 0.70
    assert "MAGE-E-M vs MAGE-E: HV" in text and "time per token 0.67x (target <= 0.6x: FAIL; " in text
    assert "the least it could be, the base's forward kept: 0.70x" in text
    # I: 4 ms, base 1 ms: expert + reference of three forwards -> (1 + 3 * 2 / 3) / 4 = 0.75
    assert "MAGE-I-M vs MAGE-I: HV 1.000x (target within 5%: PASS); time per token 0.83x" in text
    assert "base's forward kept: 0.75x" in text
    assert lines[-2].endswith(": PASS") and lines[-1].endswith(": PASS")


@pytest.mark.parametrize("ehv,verdict", [(0.0, "FAIL"), (1.0, "PASS")])
def test_stage_two_line_follows_the_numbers(tmp_path, ehv, verdict):
    good = [[0.1, 0.3], [0.2, 0.2], [0.3, 0.1]]
    rows = {name: (good, 500.0) for name in ("base only", "Rewarded Soup", "MPAW token-level", "MPAW chunk search",
                                             "MAGE-E-M", "MAGE-I", "MAGE-I-M")}
    rows["Bone Soup"] = ([[0.2, 0.4], [0.3, 0.3], [0.4, 0.2]], 500.0)
    rows["Rewarded Soup"] = ([[0.05, 0.1], [0.1, 0.1], [0.1, 0.05]], 500.0)
    rows["MAGE-E"] = ([[x * (1 + ehv) for x in p] for p in rows["Bone Soup"][0]], 500.0)
    line = target_lines(tmp_path, _run(tmp_path, rows))[-2]
    assert line.startswith("- Stage 2 adds to Stage 1") and line.endswith(verdict)
