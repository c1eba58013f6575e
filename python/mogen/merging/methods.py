"""Merge methods as registered classes (docs/design.md section 1).

A method is a :class:`MergeMethod` subclass registered under its ``name`` with
:func:`register_method`; the engine (:func:`mogen.merge`, :func:`mogen.merge_into`),
both config readers and ``mogen merge --help`` look methods up in the registry
only, so a method registered from outside ``mogen`` runs everywhere a built-in does.
The built-in methods live in :mod:`mogen.merging.builtin_methods`.

Inputs of a merge are numbered: the N sources first, then ``base`` (when the
method takes deltas from it), then the SFT checkpoint (Bone Soup with
``alpha != 0``). A *linear* method reduces to one coefficient matrix
``[K, inputs]`` run by the streaming kernel; any other computes a whole tensor
at a time (:meth:`MergeMethod.merge_tensor`, fp32, torch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import numpy as np
import torch

from ..numerics import NORMALIZE_ZERO_SUM

__all__ = ["METHODS", "MergeMethod", "LinearMethod", "MergeMethodSpec", "MethodParams", "register_method",
           "unregister_method", "get_method", "resolve", "as_matrix", "as_scalar", "per_source", "normalize_rows"]

_REGISTRY: dict[str, "MergeMethod"] = {}


@dataclass
class MergeMethodSpec:
    """A method with its arguments resolved: what the engine needs to merge."""

    method: "MergeMethod"
    num_sources: int
    num_outputs: int = 1  # K
    uses_base: bool = False
    uses_sft: bool = False
    coef: Optional[np.ndarray] = None  # [K, inputs] float64, linear methods
    params: dict = field(default_factory=dict)  # the method's own resolved parameters ("sft": the SFT checkpoint)

    @property
    def name(self) -> str:
        return self.method.name

    @property
    def linear(self) -> bool:
        return self.method.linear

    @property
    def num_inputs(self) -> int:
        return self.num_sources + int(self.uses_base) + int(self.uses_sft)

    def required_inputs(self) -> list[int]:
        """Inputs every merged tensor must be present in."""
        if self.linear:
            return [i for i in range(self.num_inputs) if np.any(self.coef[:, i] != 0.0)]
        return list(range(self.num_inputs))


class MethodParams:
    """A method's keyword parameters while it resolves them: each is taken once, by a declared name."""

    def __init__(self, method: "MergeMethod", params: dict):
        self.method = method
        self.left = dict(params)

    def _declared(self, name: str) -> str:
        if name not in self.method.parameters:
            raise RuntimeError(f"merge method {self.method.name!r} reads parameter {name!r}, which it does not declare")
        return name

    def take(self, name: str, default: Any = None) -> Any:
        return self.left.pop(self._declared(name), default)

    def given(self, name: str) -> bool:
        return self._declared(name) in self.left

    def finish(self) -> None:
        if self.left:
            raise TypeError(f"method {self.method.name!r} got unexpected parameters: {', '.join(sorted(self.left))}")


class MergeMethod:
    """One merge method. Subclasses set the class attributes and implement :meth:`setup`, and
    :meth:`merge_tensor` unless linear (then subclass :class:`LinearMethod`)."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # one line for help texts
    needs_base: ClassVar[bool] = False  # merges deltas from base=: refuses to run without it; base is an input
    linear: ClassVar[bool] = False  # one coefficient matrix per merge (streaming kernel) or per-tensor math
    parameters: ClassVar[tuple] = ()  # keyword parameters of merge() / merge_into()
    config_parameters: ClassVar[tuple] = ()  # merge-wide keys of a config's ``parameters`` it takes
    model_parameters: ClassVar[tuple] = ("weight", "density")  # per-model keys of a config
    config_weight: ClassVar[Any] = 1.0  # a config model's weight when it names none (None: required)
    layerwise: ClassVar[bool] = True  # usable in configs with slices or per-layer parameters
    layerwise_only: ClassVar[bool] = False  # usable only there (passthrough)

    def resolve(self, num_sources: int, coefficients, has_base: bool, params: dict) -> MergeMethodSpec:
        """Validates the arguments and precomputes what the engine needs."""
        if num_sources < 1:
            raise ValueError("merge needs at least one source")
        if self.needs_base and not has_base:
            raise ValueError(f"method {self.name!r} merges deltas from a base checkpoint: pass base=")
        spec = MergeMethodSpec(self, num_sources, uses_base=self.needs_base)
        p = MethodParams(self, params)
        self.setup(spec, coefficients, p)
        p.finish()
        return spec

    def setup(self, spec: MergeMethodSpec, coefficients, params: MethodParams) -> None:
        """Fills ``spec`` (``num_outputs``, ``params``; ``coef`` for a linear method) from the
        coefficients and the parameters, taking each parameter it uses from ``params``."""
        raise NotImplementedError

    def merge_tensor(self, spec: MergeMethodSpec, k: int, name: str, xs: list,
                     base: Optional[torch.Tensor]) -> torch.Tensor:
        """Output ``k`` of tensor ``name`` from the sources ``xs`` (and ``base`` when the method uses it),
        all fp32; returns fp32."""
        raise NotImplementedError(f"merge method {self.name!r} is linear; the engine runs its coefficients")

    def config_args(self, sources: list, weights: list, densities: list, base: Optional[str], params: dict) -> dict:
        """The :func:`mogen.merge` keyword arguments (``sources``, ``coefficients``, ``base``, parameters) of
        a whole-model config: its models (the base left out when the method needs one), their weights and
        densities, the base and the merge-wide parameters."""
        if any(d != 1.0 for d in densities):
            raise ValueError(f"merge config: density applies to ties / dare methods, not {self.name}")
        return {"sources": sources, "base": base, "coefficients": weights, **params}


class LinearMethod(MergeMethod):
    """A method whose K outputs are fixed linear combinations of its inputs."""

    linear = True

    def setup(self, spec: MergeMethodSpec, coefficients, params: MethodParams) -> None:
        spec.coef = self.coefficients(spec, coefficients, params)
        spec.num_outputs = spec.coef.shape[0]

    def coefficients(self, spec: MergeMethodSpec, coefficients, params: MethodParams) -> np.ndarray:
        """The ``[K, inputs]`` float64 coefficient matrix (sets ``spec.uses_sft`` / ``uses_base`` as needed)."""
        raise NotImplementedError


# ---------------------------------------------------------------- the registry


def register_method(cls: type, replace: bool = False) -> type:
    """Registers a :class:`MergeMethod` subclass under its ``name`` (usable as a class decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, MergeMethod)) or not cls.name:
        raise TypeError(f"register_method takes a MergeMethod subclass with a name, got {cls!r}")
    if cls.name in _REGISTRY and not replace:
        raise ValueError(f"merge method {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls()
    return cls


def unregister_method(name: str) -> None:
    """Removes a registered method."""
    del _REGISTRY[name]


def get_method(name: str) -> MergeMethod:
    """The registered method called ``name``."""
    method = _REGISTRY.get(name) if isinstance(name, str) else None
    if method is None:
        raise ValueError(f"unknown merge method {name!r}; choose one of {', '.join(METHODS)}")
    return method


class _MethodNames(Sequence):
    """The registered methods' names, in registration order (a live view)."""

    def __getitem__(self, i):
        return tuple(_REGISTRY)[i]

    def __len__(self) -> int:
        return len(_REGISTRY)

    def __contains__(self, name) -> bool:
        return name in _REGISTRY

    def __repr__(self) -> str:
        return repr(tuple(_REGISTRY))


METHODS = _MethodNames()


def resolve(method: str, num_sources: int, coefficients, has_base: bool, params: dict) -> MergeMethodSpec:
    """The registered ``method``'s :meth:`MergeMethod.resolve`."""
    return get_method(method).resolve(num_sources, coefficients, has_base, params)


# ---------------------------------------------------------------- argument checks for methods


def as_matrix(values, n: int, what: str) -> np.ndarray:
    """``[n]`` or ``[K, n]`` finite numbers as a float64 ``[K, n]`` array."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    try:
        a = np.array(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be numbers, [N] or [K, N], got {values!r}") from None
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[1] != n or a.shape[0] == 0:
        raise ValueError(f"{what} must be [N] or [K, N] with N = {n} sources, got shape {tuple(np.shape(values))}")
    if not np.isfinite(a).all():
        raise ValueError(f"{what} must be finite, got {values!r}")
    return a


def as_scalar(x, what: str, lo: Optional[float] = None, hi: Optional[float] = None) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a number, got {x!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{what} must be finite, got {x!r}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ValueError(f"{what} must be in [{lo}, {hi}], got {v}")
    return v


def per_source(x, n: int, what: str, lo: float, hi: float) -> np.ndarray:
    a = np.array([x] * n if np.ndim(x) == 0 else x, dtype=np.float64)
    if a.shape != (n,):
        raise ValueError(f"{what} must be a number or one per source ({n}), got {x!r}")
    for v in a:
        as_scalar(v, what, lo, hi)
    return a


def normalize_rows(w: np.ndarray, what: str) -> np.ndarray:
    s = w.sum(axis=1, keepdims=True)
    if (np.abs(s) < NORMALIZE_ZERO_SUM).any():
        raise ValueError(f"normalize=True divides {what} by their sum, which is 0")
    return w / s

