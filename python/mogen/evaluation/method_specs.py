"""The ``methods`` entries of a sweep config: the kinds a sweep knows, each entry checked against its kind's
parameters, as :class:`MethodSpec` rows (:mod:`mogen.evaluation.methods` turns them into decoders)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..configs import ConfigError, key_path, parse, unknown_keys
from ..mage import BONE_SOUP_KEYS, MAGE_KEYS, MAGEConfig
from .resources import parse_resources
from .schema import MpawParams, SearchParams

__all__ = ["METHOD_KINDS", "MethodSpec", "parse_methods", "check_sampling"]

#: method kind -> the parameters it takes (besides name and kind); mage and bone_soup's are MAGEConfig's
METHOD_KINDS: dict[str, tuple[str, ...]] = {
    "base": (),
    "rewarded_soup": (),
    "bone_soup": BONE_SOUP_KEYS,
    "mod": (),
    "mpaw": tuple(f.name for f in dataclasses.fields(MpawParams)),
    "mpaw_search": tuple(f.name for f in dataclasses.fields(SearchParams)),
    "mage": MAGE_KEYS,
}

_KIND_SCHEMAS = {"mpaw": MpawParams, "mpaw_search": SearchParams}


@dataclass(frozen=True)
class MethodSpec:
    """One row of the comparison: a name, a kind of :data:`METHOD_KINDS`, its parameters and what its Ray
    workers reserve (:mod:`mogen.evaluation.resources`; the top level's keys with the method's over them)."""

    name: str
    kind: str
    params: dict = field(default_factory=dict)
    resources: dict = field(default_factory=dict)


def _method(m: Any, where: str) -> MethodSpec:
    """One ``methods`` entry, its parameters checked by its kind's schema (MAGE's for mage and bone_soup)."""
    if not isinstance(m, dict) or "kind" not in m or "name" not in m:
        raise ConfigError(where, "must be a mapping with 'name' and 'kind'")
    kind = m["kind"]
    if kind not in METHOD_KINDS:
        raise ConfigError(key_path(where, "kind"), f"unknown kind {kind!r}; known: {list(METHOD_KINDS)}")
    if not isinstance(m["name"], str):
        raise ConfigError(key_path(where, "name"), f"expected a string, got {m['name']!r}")
    params = {k: v for k, v in m.items() if k not in ("name", "kind", "resources")}
    unknown_keys(params, METHOD_KINDS[kind], where, f" for kind {kind!r}")
    if kind in ("mage", "bone_soup"):
        parse(MAGEConfig, {"variant": "none", **params}, where)
    elif kind in _KIND_SCHEMAS:
        parse(_KIND_SCHEMAS[kind], params, where)
    return MethodSpec(m["name"], kind, params, parse_resources(m.get("resources"), key_path(where, "resources")))


def parse_methods(raw: list, resources: dict) -> list[MethodSpec]:
    """The ``methods`` entries, each with the top level's ``resources`` under its own."""
    if not raw:
        raise ConfigError("methods", "must be a non-empty list of {name, kind, ...}")
    out, names = [], set()
    for i, m in enumerate(raw):
        spec = _method(m, key_path("methods", i))
        if spec.name in names:
            raise ConfigError(key_path(key_path("methods", i), "name"), f"two methods are named {spec.name!r}")
        names.add(spec.name)
        out.append(dataclasses.replace(spec, resources={**resources, **spec.resources}))
    return out


def check_sampling(decoding: dict, methods: list[MethodSpec]) -> None:
    """``decoding.do_sample: false`` with a chunk search among the methods is refused now, not hours into a run:
    a search always samples its chunks."""
    if decoding.get("do_sample") is not False:
        return
    for m in methods:
        if m.kind == "mpaw_search" or (m.kind == "mage" and m.params.get("search")):
            raise ConfigError("decoding.do_sample", f"false, but method {m.name!r} is a chunk search, which always "
                                                    "samples its chunks; leave do_sample out (each method then "
                                                    "decodes as it does by default), or drop the method")
