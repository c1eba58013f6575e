"""Fuzzing the C++ safetensors reader: thousands of seeded mutations of valid files (see
fuzz_safetensors.py), each either rejected with an error naming the file or read exactly as the
``safetensors`` package reads it. The variants are read in child processes: a crash (a signal, an abort)
is caught, attributed to its variant, and the run continues with a fresh child."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import mogen_ext

pytestmark = pytest.mark.skipif(not mogen_ext.has_cpu_kernels, reason=f"no compiled kernels: {mogen_ext.load_error}")

VARIANTS = 3600
WORKERS = 2
OK = ("rejected", "rejected-stricter", "accepted")
WORKER = Path(__file__).with_name("fuzz_safetensors.py")


def _run_range(start: int, stop: int, path: Path, outcomes: dict) -> None:
    """Judges variants [start, stop) in child processes, restarting after each crash."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    while start < stop:
        proc = subprocess.run([sys.executable, str(WORKER), str(start), str(stop), str(path)], env=env,
                              capture_output=True, text=True, timeout=300)
        last = None
        for line in proc.stdout.splitlines():
            head, _, rest = line.partition(" ")
            if head == "start":
                last = int(rest)
            else:
                outcomes[int(head)] = rest
                last = None
        if proc.returncode == 0:
            return
        if last is None:  # died outside a variant: nothing to attribute it to
            pytest.fail(f"fuzz worker failed (rc {proc.returncode}):\n{proc.stderr[-2000:]}")
        outcomes[last] = f"crash (rc {proc.returncode})"
        start = last + 1


def test_fuzzed_headers_are_rejected_or_read_like_the_reference(tmp_path):
    t0 = time.perf_counter()
    outcomes: dict[int, str] = {}
    bounds = [VARIANTS * w // WORKERS for w in range(WORKERS + 1)]
    # The children run in parallel, each driven by a thread of this process.
    threads = [threading.Thread(target=_run_range, args=(bounds[w], bounds[w + 1], tmp_path / f"v{w}.safetensors",
                                                         outcomes)) for w in range(WORKERS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    seconds = time.perf_counter() - t0
    counts = collections.Counter(o.split(" ")[0] for o in outcomes.values())
    print(f"\nfuzz: {len(outcomes)} variants in {seconds:.1f}s: {dict(counts)}")
    assert len(outcomes) == VARIANTS
    bad = {i: o for i, o in outcomes.items() if o not in OK}
    assert not bad, f"{len(bad)} variants failed (crash, invalid file accepted, error not naming the file, " \
                    f"or values unlike the reference's); first: {dict(list(sorted(bad.items()))[:10])}"
    assert counts["accepted"] >= 100 and counts["rejected"] >= 1000  # the mix stays meaningful
