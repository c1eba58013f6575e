"""``mogen sweep --ray``: a sweep's points decoded by Ray actors, filed by the driver as they arrive.

Each method's points go to ``actors`` Ray actors of that method (default 1), each holding the method's
decoder (:func:`~mogen.evaluation.methods.build_decoder`): its models are loaded once per actor, not once per
point. An actor takes one point at a time and reserves what the config's ``resources`` ask
(:mod:`mogen.evaluation.resources`) while it lives; when its method has no points left it is let go, so that
the methods still waiting get its CPUs and GPUs.

The driver files each point as it arrives, with the serial run's code (the same point files, written
atomically, with the same fingerprints): a killed driver loses no finished point, and a rerun, on Ray or not,
decodes only the missing ones. Scoring and the reports stay with the driver, after decoding, as in a serial
run.

A point that fails is retried ``max_retries`` times: an exception in decoding is retried on the same actor; a
worker that dies (killed, out of memory) is restarted by Ray, which loads the method's models again, and the
point runs again there. A point that still fails is reported when it does, the others go on, and the run
then raises :class:`PointsFailed` listing each failed point and its error, with no scoring and no reports
(they need every point).

Each point is seeded on its own, so the texts do not depend on which actor decodes which point, or in what
order. Unless the config says otherwise, the actors run torch with the driver's CPU thread count, and reserve
as many CPUs (:func:`threads_and_cpus`), so they compute as a serial run on the driver's machine does; on
other machines (other CPUs, GPUs) the texts may differ, as a serial run's would there.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections import deque
from pathlib import Path
from typing import Any, Callable, Union

import torch
from tqdm.auto import tqdm

from .._optional import require
from .config import SweepConfig
from .method_specs import MethodSpec
from .methods import SweepModels, build_decoder
from .resources import RESOURCE_DEFAULTS
from .sweep import Pending, decode_point, method_tokenizer

__all__ = ["decode_on_ray", "import_ray", "PointsFailed"]


class PointsFailed(RuntimeError):
    """Points that failed on Ray after their retries; ``failures`` lists ``(Pending, error text)``."""

    def __init__(self, folder: Path, failures: list, total: int, retries: int) -> None:
        self.folder, self.failures = folder, failures
        lines = [f"  {item.label()}: {error}" for item, error in failures]
        super().__init__(f"sweep --ray: {len(failures)} of {total} point(s) failed (each tried up to "
                         f"{retries + 1} time(s)); the {total - len(failures)} others are in {folder} (a rerun decodes only the "
                         "missing points; no reports until every point is done):\n" + "\n".join(lines))


def import_ray() -> Any:
    """The ``ray`` module; a :class:`~mogen._optional.MissingDependency` naming its extra when it is missing."""
    return require("ray", "ray", "sweep --ray")


class _MethodWorker:
    """One method's decoder in a Ray actor (made remote by :func:`decode_on_ray`, since Ray is optional)."""

    def __init__(self, cfg: SweepConfig, method: MethodSpec, threads: int) -> None:
        # Ray sets OMP_NUM_THREADS to the reserved CPUs (1 when fewer): the config's count, not Ray's, decides.
        torch.set_num_threads(threads)
        self.cfg = cfg
        self.models = SweepModels(cfg)
        self.decoder = build_decoder(method, self.models)
        self.tok = method_tokenizer(self.models, method)

    def decode(self, mu: tuple, seed: int) -> dict:
        """The point of this method at preference ``mu`` decoded with ``seed`` (the serial run's)."""
        return decode_point(self.decoder, self.tok, self.cfg, mu, seed, self.models.device)

    def pid(self) -> int:
        """This actor's process id; the driver calls it to learn that a restarted actor is back."""
        return os.getpid()


def threads_and_cpus(resources: dict) -> tuple[int, float]:
    """``(torch threads, CPUs reserved)`` of an actor with ``resources``: ``torch_threads``, else as many as its
    ``num_cpus`` (at least 1), else the driver's ``torch.get_num_threads()``; and ``num_cpus``, else as many as
    its threads, so that actors running several threads each do not share cores they were not given."""
    cpus = resources.get("num_cpus")
    threads = resources.get("torch_threads") or (max(1, int(cpus)) if cpus is not None else torch.get_num_threads())
    return threads, float(threads) if cpus is None else cpus


def _actor_options(method: MethodSpec, retries: int, points: int) -> dict:
    """Ray options of an actor of ``method`` that will decode up to ``points`` points."""
    res = {**RESOURCE_DEFAULTS, **method.resources}
    options = {"num_cpus": threads_and_cpus(res)[1], "num_gpus": res["num_gpus"],
               # Each attempt of each point may kill the worker once: enough restarts for every retry, bounded,
               # so that a worker that dies while loading its models does not restart forever.
               "max_restarts": (retries + 1) * points, "max_task_retries": retries}
    if "memory" in res:
        options["memory"] = res["memory"]
    return options


def _connect(ray: Any, address: Union[bool, str]) -> bool:
    """Connects this process to Ray unless it is already; True when it did (and should disconnect)."""
    if ray.is_initialized():
        return False
    ray.init(address=None if address is True else str(address))
    return True


def _reason(exc: BaseException) -> str:
    """A failed point's error in one line: the decoder's own exception; for an actor that could not start (its
    models did not load) the exception its start-up raised; else Ray's account of the death."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and not isinstance(cause, type(exc)):
        return f"{type(cause).__name__}: {' '.join(str(cause).split())}"
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines() if ln.strip()] or [""]
    if getattr(exc, "actor_init_failed", False):  # the traceback of __init__ ends with its exception
        return f"the method's actor did not start: {lines[-1]}"
    detail = f"{lines[0]} ({lines[-1]})" if len(lines) > 1 else lines[0]
    return f"{type(exc).__name__}: {detail}"[:600]


def decode_on_ray(cfg: SweepConfig, todo: list, store: Callable[[Pending, dict], None], *,
                  address: Union[bool, str] = True, max_retries: int = 2, progress: bool = True) -> None:
    """Decodes the :class:`~mogen.evaluation.sweep.Pending` points ``todo`` on Ray, calling ``store(item, point)``
    in this process as each arrives; raises :class:`PointsFailed` after the rest when some fail for good.
    ``address``: True for ``ray.init()``'s default, else a cluster address; a connected process keeps its
    connection (this call disconnects only one it made)."""
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ValueError(f"sweep --ray: max_retries must be an int >= 0, got {max_retries!r}")
    ray = import_ray()
    if not todo:
        return
    started = _connect(ray, address)
    try:
        failures = _run(ray, cfg, todo, store, max_retries, progress)
    finally:
        if started:
            ray.shutdown()
    if failures:
        raise PointsFailed(Path(cfg.output), failures, len(todo), max_retries)


def _actors(ray: Any, cfg: SweepConfig, queues: dict, retries: int) -> list:
    """``[(actor, method name)]``: each method's actors (its ``resources.actors``, at most one per point)."""
    worker = ray.remote(_MethodWorker)
    out = []
    for name, queue in queues.items():
        method = queue[0].method
        # The workers need no rewards (the driver scores); reward functions may live in modules they lack.
        lean = dataclasses.replace(cfg, rewards=[], methods=[method])
        threads = threads_and_cpus(method.resources)[0]
        count = min(method.resources.get("actors", RESOURCE_DEFAULTS["actors"]), len(queue))
        options = _actor_options(method, retries, len(queue))
        out += [(worker.options(**options).remote(lean, method, threads), name) for _ in range(count)]
    return out


def _run(ray: Any, cfg: SweepConfig, todo: list, store: Callable, retries: int, progress: bool) -> list:
    """The ``ray.wait`` loop: one point in flight per actor; returns ``[(Pending, error text)]`` that failed."""
    queues: dict = {}
    for item in todo:
        queues.setdefault(item.method.name, deque()).append(item)
    in_flight: dict = {}

    def next_point(actor: Any, name: str) -> None:
        if queues[name]:
            item = queues[name].popleft()
            ref = actor.decode.options(retry_exceptions=True).remote(item.mu, item.seed)
            in_flight[ref] = (actor, name, item)
        else:
            ray.kill(actor)  # its CPUs and GPUs go to the methods still waiting for theirs

    for actor, name in _actors(ray, cfg, queues, retries):
        next_point(actor, name)
    failures: list = []
    bar = tqdm(total=len(todo), desc="sweep (ray)", disable=not progress)
    while in_flight:
        (ref,), _ = ray.wait(list(in_flight), num_returns=1)
        actor, name, item = in_flight.pop(ref)
        try:
            point = ray.get(ref)
        except ray.exceptions.RayError as exc:
            failures.append((item, _reason(exc)))
            tqdm.write(f"sweep --ray: {item.label()} failed: {failures[-1][1]}", file=sys.stderr)
        else:
            store(item, point)
            bar.set_postfix_str(item.label())
        bar.update(1)
        next_point(actor, name)
    bar.close()
    return failures
