"""Shared benchmark plumbing: the machine's copy bandwidth (the roofline every
kernel is compared with) and a summary table printed, and saved under
benchmarks/results/ (with the machine, commit and command), at the end of the run."""

from __future__ import annotations

import pytest
import torch

from mogen.bench import best_time, markdown_table
from results_file import write_results
_rows: dict[str, list[dict]] = {}
_copy_buffers: list[torch.Tensor] = []


@pytest.fixture(scope="session")
def copy_bandwidth() -> float:
    """Measured copy bandwidth in GB/s (bytes read + bytes written per second) of a 256 MB torch copy."""
    src = torch.randn(64 * 1024 * 1024)
    dst = torch.empty_like(src)
    t = best_time(lambda: dst.copy_(src), repeat=5, min_time=0.2)
    # Kept alive: freeing 256 MB blocks raises glibc's mmap threshold, after which
    # every large temporary of the eager baselines is page-faulted in again (6x slower).
    _copy_buffers.extend([src, dst])
    return 2 * src.numel() * src.element_size() / t / 1e9


@pytest.fixture(scope="session")
def read_bandwidth(copy_bandwidth) -> float:
    """Measured read bandwidth in GB/s: the faster of a sum and a BLAS dot over the 256 MB copy buffer.

    The roofline of a kernel that only reads (K2): a copy's bytes include its
    writes, which cost more than reads, so a read-mostly kernel can beat it.
    """
    src = _copy_buffers[0]
    t = min(best_time(lambda: src.sum(), repeat=5, min_time=0.3),
            best_time(lambda: torch.dot(src, src), repeat=5, min_time=0.3))  # dot reads each element once
    return src.numel() * src.element_size() / t / 1e9


def record(table: str, row: dict) -> None:
    _rows.setdefault(table, []).append(row)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _rows:
        return
    for table, rows in _rows.items():
        path = write_results(table, f"## {table}", markdown_table(rows))
        terminalreporter.write_line("")
        for ln in path.read_text().splitlines():
            terminalreporter.write_line(ln)
