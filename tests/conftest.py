"""Test-suite options: ``--architectures-results`` writes the architecture matrix from the cells the run measured
(``tests/test_architectures.py``; the README's ``<!-- bench:architectures -->`` block shows that file)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest


@pytest.fixture
def datasets_cache(tmp_path, monkeypatch):
    """datasets writes its cache under the test's folder, not the user's (modules that read data files with
    datasets use it for every test: ``pytestmark = pytest.mark.usefixtures("datasets_cache")``)."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def pytest_addoption(parser):
    parser.addoption("--architectures-results", action="store_true",
                     help="write benchmarks/results/architectures.md from tests/test_architectures.py's cells")


def pytest_collection_modifyitems(config, items):
    """Tests skipped by ``markers.requires_cuda_kernels`` are CUDA tests: mark them ``cuda`` too, so
    ``pytest -m cuda`` (``make gpu-check``) selects them without each file marking them twice."""
    from markers import requires_cuda_kernels

    for item in items:
        if any(m == requires_cuda_kernels.mark for m in item.iter_markers("skipif")):
            item.add_marker(pytest.mark.cuda)


def pytest_sessionfinish(session, exitstatus):
    if not session.config.getoption("--architectures-results"):
        return
    module = sys.modules.get("test_architectures")
    outcomes = getattr(module, "OUTCOMES", {})
    import architectures as matrix

    missing = [c for c in module.CELLS if c not in outcomes] if module is not None else ["all"]
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if missing:
        if reporter is not None:
            reporter.write_line(f"architectures.md not written: {len(missing)} cell(s) did not run "
                                f"(run the whole of tests/test_architectures.py)", red=True)
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from results_file import write_results

    path = write_results("architectures", "## Architecture support (measured)", matrix.results_body(outcomes))
    if reporter is not None:
        reporter.write_line(f"wrote {path}")
