"""What a merge did: bytes, seconds per phase, throughput, peak resident memory."""

from __future__ import annotations

import resource
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Optional


@contextmanager
def timed(seconds: dict, phase: str) -> Iterator[None]:
    """Adds the block's wall time to ``seconds[phase]`` (a report's seconds per phase)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        seconds[phase] = seconds.get(phase, 0.0) + time.perf_counter() - t0


def _status_kb(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class RssTracker:
    """Peak resident memory (file-backed pages included, as the OS counts it) over a region.

    On Linux the process's high-water mark is reset at the start (``/proc/self/clear_refs``)
    so the peak is that of the region; elsewhere it is the process's lifetime peak."""

    def __init__(self) -> None:
        self.reset_ok = False
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.reset_ok = True
        except OSError:
            pass
        kb = _status_kb("VmRSS")
        self.baseline = (kb or 0) * 1024

    def peak(self) -> int:
        """The region's peak, never below its baseline: the kernel's RSS counters are batched per
        CPU, so a high-water mark read later can trail an RSS read earlier by a few pages."""
        kb = _status_kb("VmHWM")
        if kb is None:
            kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return max(kb * 1024, self.baseline)


@dataclass
class MergeReport:
    """Returned by :func:`mogen.merge` and :func:`mogen.merge_into`."""

    method: str
    outputs: list = field(default_factory=list)  # output folders (merge) or [] (merge_into)
    num_tensors: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    seconds: dict = field(default_factory=dict)  # phase -> seconds: open, plan, merge, finalize
    baseline_rss: int = 0  # resident bytes when the merge started
    peak_rss: int = 0  # peak resident bytes during the merge (file-backed pages included)

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())

    @property
    def gb_per_s(self) -> float:
        """(bytes read + bytes written) / wall time, in GB/s (10^9 bytes)."""
        t = self.total_seconds
        return (self.bytes_read + self.bytes_written) / t / 1e9 if t > 0 else float("inf")

    @property
    def peak_rss_above_baseline(self) -> int:
        return max(0, self.peak_rss - self.baseline_rss)

    def __str__(self) -> str:
        phases = ", ".join(f"{k} {v:.2f}s" for k, v in self.seconds.items())
        return (
            f"mogen {self.method} merge: {self.num_tensors} tensors, read {self.bytes_read / 1e9:.3f} GB, "
            f"wrote {self.bytes_written / 1e9:.3f} GB in {self.total_seconds:.2f}s ({self.gb_per_s:.2f} GB/s; "
            f"{phases}); peak RSS {self.peak_rss / 2**20:.0f} MiB "
            f"(+{self.peak_rss_above_baseline / 2**20:.0f} MiB over {self.baseline_rss / 2**20:.0f} MiB)"
        )
