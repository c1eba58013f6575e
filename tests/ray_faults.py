"""Faults for the Ray sweep tests (tests/test_ray_sweep.py), injected into the workers of the tests' own Ray
instance by its ``worker_process_setup_hook``: nothing of this is in mogen itself.

:func:`install` wraps the decoding of a point in each worker. The wrapper appends one line per attempt,
``<method>|<mu_1>|<seed>|<torch threads>``, to ``attempts.log`` in the folder ``$MOGEN_TEST_FAULTS`` names; a
file ``<method>|<mu_1>|<seed>.exit`` there makes the worker process die (``os._exit``) once, after decoding the
point and before returning it (the file is removed first); ``<...>.raise`` makes every attempt raise.
"""

from __future__ import annotations

import os
from pathlib import Path


def point_key(method: str, mu_1: float, seed: int) -> str:
    """The name the fault files and the attempts log give a point."""
    return f"{method}|{mu_1:.2f}|{seed}"


def attempts(folder: Path) -> list:
    """``[(key, threads)]``: every attempt logged so far."""
    log = folder / "attempts.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return [(ln.rsplit("|", 1)[0], int(ln.rsplit("|", 1)[1])) for ln in lines]


def install() -> None:
    """The setup hook: wraps ``mogen.evaluation.ray_sweep._decode_point`` in this worker."""
    folder = os.environ.get("MOGEN_TEST_FAULTS")
    if not folder:
        return
    import torch
    from mogen.evaluation import ray_sweep

    real = ray_sweep._decode_point

    def decode(decoder, tok, cfg, mu, seed, device="cpu"):
        key = point_key(cfg.methods[0].name, mu[0], seed)
        with open(Path(folder) / "attempts.log", "a") as log:
            log.write(f"{key}|{torch.get_num_threads()}\n")
        if (Path(folder) / f"{key}.raise").exists():
            raise RuntimeError(f"injected failure at {key}")
        point = real(decoder, tok, cfg, mu, seed, device)
        try:
            os.unlink(Path(folder) / f"{key}.exit")
        except FileNotFoundError:
            return point
        os._exit(1)  # a real process death, its point decoded and lost

    ray_sweep._decode_point = decode
