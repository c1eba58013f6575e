"""The architecture matrix (``tests/architectures.py``): every (architecture, feature) cell passes, or mogen
refuses it with the expected reason. ``pytest tests/test_architectures.py --architectures-results`` also writes
``benchmarks/results/architectures.md`` from these same cells (``make architectures``)."""

from __future__ import annotations

import re

import pytest

import architectures as matrix

CELLS = [(a, f) for a in matrix.ARCHITECTURES for f in matrix.FEATURES]
#: Outcomes of the cells this run measured, for the results file (tests/conftest.py writes it).
OUTCOMES: dict = {}


@pytest.mark.parametrize("arch,feature", CELLS, ids=[f"{a}-{f}" for a, f in CELLS])
def test_cell(arch, feature):
    outcome = matrix.run_cell(arch, feature)
    OUTCOMES[(arch, feature)] = outcome
    want = matrix.expected(arch, feature)
    if want is None:
        assert outcome.status == "pass", f"{arch} x {feature}: {outcome.status}: {outcome.message}"
    else:
        assert outcome.status == "refused", f"{arch} x {feature} should be refused ({want}), got {outcome.status}"
        assert re.search(want, outcome.message, re.S), f"{arch} x {feature}: unexpected refusal: {outcome.message}"


def test_refusals_name_the_architecture_or_the_reason():
    """A refusal says what is refused and why, in words a user can act on."""
    for (arch, feature), pattern in matrix.EXPECTED_REFUSALS.items():
        outcome = OUTCOMES.get((arch, feature)) or matrix.run_cell(arch, feature)
        assert outcome.status == "refused"
        assert len(matrix._short(outcome.message)) > 40, outcome.message


def test_position_windows_count_positions_not_cache_columns():
    """Brute force: key j is visible to query i iff live, not after i, and pos(i) - pos(j) < window."""
    import torch

    from mogen.decoding.windows import FULL, SLIDING, PositionWindows

    mask = torch.tensor([[0, 1, 1, 0, 1, 1, 0, 1], [1, 1, 1, 1, 1, 1, 1, 1]])
    positions = torch.tensor([[0, 0, 1, 9, 2, 3, 9, 4], [0, 1, 2, 3, 4, 5, 6, 7]])  # 9: holes, any value
    windows = PositionWindows(3, {SLIDING, FULL}, torch.float32)
    masks = windows.masks(mask, positions, queries=3)
    assert set(masks) == {SLIDING, FULL}
    for kind, window in ((SLIDING, 3), (FULL, 10 ** 6)):
        got = masks[kind] == 0  # additive masks: 0 visible
        assert got.shape == (2, 1, 3, 8)
        for b in range(2):
            for i, col in enumerate(range(5, 8)):
                for j in range(8):
                    want = bool(mask[b, j]) and j <= col and int(positions[b, col] - positions[b, j]) < window
                    assert bool(got[b, 0, i, j]) == want, (kind, b, i, j)
    only = PositionWindows(3, {SLIDING}, torch.float32).masks(mask, positions, queries=1)
    assert isinstance(only, torch.Tensor) and only.shape == (2, 1, 1, 8)


def test_a_model_that_ignores_the_cache_is_refused():
    """A forward that takes the cache through **kwargs but never fills it (its state lives elsewhere)."""
    import torch

    import mogen

    inner = matrix.model("llama", "bl", 0)

    class NoCache(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.config = inner, inner.config
            self.generation_config = inner.generation_config

        def get_input_embeddings(self):
            return inner.get_input_embeddings()

        def get_output_embeddings(self):
            return inner.get_output_embeddings()

        def forward(self, input_ids, **kwargs):
            return inner(input_ids=input_ids, use_cache=False)

    bl, ids, mask, _ = matrix._prompts()
    guide = mogen.ProxyGuide(NoCache(), NoCache())
    with pytest.raises(TypeError, match=r"guides\[0\]\.expert: NoCache does not keep its state in a transformers KV"):
        mogen.generate(inner, ids, mask, guides=[guide], tokenizer=bl, max_new_tokens=2)
