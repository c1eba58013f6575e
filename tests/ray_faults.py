"""Faults for the Ray sweep tests (tests/test_ray_sweep.py), injected into the workers of the tests' own Ray
instance by its ``worker_process_setup_hook``: nothing of this is in mogen itself.

:func:`install` wraps the decoding of a point in each worker. The wrapper appends one line per attempt,
``<method>|<mu_1>|<seed>|<torch threads>``, to ``attempts.log`` in the folder ``$MOGEN_TEST_FAULTS`` names; a
file ``<method>|<mu_1>|<seed>.exit`` there makes the worker process die (``os._exit``) once, after decoding the
point and before returning it (the file is removed first); ``<...>.raise`` makes every attempt raise.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
from pathlib import Path


def point_key(method: str, mu_1: float, seed: int) -> str:
    """The name the fault files and the attempts log give a point."""
    return f"{method}|{mu_1:.2f}|{seed}"


def attempts(folder: Path) -> list:
    """``[(key, threads)]``: every attempt logged so far."""
    log = folder / "attempts.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return [(ln.rsplit("|", 1)[0], int(ln.rsplit("|", 1)[1])) for ln in lines]


def _wrap(ray_sweep) -> None:
    """Wraps ``ray_sweep.decode_point`` with the faults of the module docstring."""
    import torch

    folder = Path(os.environ["MOGEN_TEST_FAULTS"])
    real = ray_sweep.decode_point

    def decode(decoder, tok, cfg, mu, seed, device="cpu"):
        key = point_key(cfg.methods[0].name, mu[0], seed)
        with open(folder / "attempts.log", "a") as log:
            log.write(f"{key}|{torch.get_num_threads()}\n")
        if (folder / f"{key}.raise").exists():
            raise RuntimeError(f"injected failure at {key}")
        point = real(decoder, tok, cfg, mu, seed, device)
        try:
            os.unlink(folder / f"{key}.exit")
        except FileNotFoundError:
            return point
        os._exit(1)  # a real process death, its point decoded and lost

    ray_sweep.decode_point = decode


class _WrapOnImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Wraps ray_sweep when the worker imports it: importing it (and torch) here, at the worker's start, would
    read torch's thread count before Ray sets the actor's ``OMP_NUM_THREADS``, unlike a worker without faults."""

    NAME = "mogen.evaluation.ray_sweep"

    def find_spec(self, name, path, target=None):
        if name != self.NAME:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        self.real = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec):
        return self.real.create_module(spec)

    def exec_module(self, module):
        self.real.exec_module(module)
        _wrap(module)


def install() -> None:
    """The setup hook: wraps ``mogen.evaluation.ray_sweep.decode_point`` in this worker once it is imported."""
    if os.environ.get("MOGEN_TEST_FAULTS"):
        sys.meta_path.insert(0, _WrapOnImport())
