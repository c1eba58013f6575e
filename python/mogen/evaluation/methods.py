"""The methods a sweep compares, each a decoder for one preference at a time.

Every method turns a preference ``mu`` and a batch of prompts into responses:

- ``base``: the base (SFT) model alone;
- ``rewarded_soup``: the base-family single-objective policies merged with ``mu`` (in place);
- ``bone_soup``: MAGE Stage 1 only (backbones merged with ``B^-1 mu``);
- ``mod``: logit mixing of the policies, ``sum_i mu_i log pi_i`` (MOD), written as
  proxy guides ``(pi_i, pi_1)`` on base ``pi_1`` so that K1 fuses it;
- ``mpaw`` / ``mpaw_search``: the small experts and their reference as proxy guides,
  token level or chunk-level beam search;
- ``mage``: :class:`mogen.MAGE` with a variant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..configs import config_errors
from ..decoding import ProxyGuide, generate, search
from ..decoding.loading import FolderCache
from ..dtypes import torch_dtype
from ..mage import MAGE, VARIANTS, MAGEConfig
from ..merging import merge_into
from .config import SweepConfig
from .method_specs import MethodSpec

__all__ = ["Decoder", "SweepModels", "build_decoder"]

Decode = Callable[[torch.Tensor, torch.Tensor, tuple, dict], torch.Tensor]


class Decoder:
    """``decode(ids, mask, mu, kwargs)`` -> ``[B, T + new]`` for one method (``mage``: the method's
    :class:`~mogen.MAGE`, for ``bone_soup`` and ``mage``)."""

    def __init__(self, decode: Decode, mage: Optional[MAGE] = None) -> None:
        self.decode = decode
        self.mage = mage


class SweepModels:
    """Folders loaded once per sweep, shared by the methods that read them."""

    def __init__(self, cfg: SweepConfig) -> None:
        self.cfg = cfg
        self.paths = cfg.models
        self._folders = FolderCache(dtype=torch_dtype(self.paths.get("dtype", "float32"),
                                                      what="sweep config: models.dtype"),
                                    device=torch.device(self.paths.get("device", "cpu")))

    @property
    def device(self) -> Any:
        """Where the sweep's models are (reward models go there too)."""
        return self._folders.device

    @property
    def dtype(self) -> Any:
        """The sweep's model dtype (``models.dtype``; reward models load in it too)."""
        return self._folders.dtype

    def need(self, key: str, method: str) -> Any:
        value = self.paths.get(key)
        if value is None:
            raise ValueError(f"sweep config: method {method!r} needs models.{key}")
        return value

    def load(self, path: Path, fresh: bool = False) -> Any:
        return self._folders.model(path, "sweep", fresh=fresh)  # fresh: a model the method merges into

    def tokenizer(self, path: Optional[Path]) -> Any:
        return None if path is None else self._folders.own_tokenizer(path, "sweep")

    def guide_tokenizer(self, folders: list) -> Any:
        """The guides' tokenizer: ``models.guide_tokenizer``, else the first guide folder's own (None: the guides
        read the base's tokens); loaded once, so every method's guides share one vocabulary map."""
        return self.tokenizer(self.paths.get("guide_tokenizer") or folders[0])


def _generate(base: Any, tok: Any, guides: list, weights: Any, beta: float = 1.0, gamma: float = 1.0) -> Decode:
    def decode(ids, mask, mu, kwargs):
        w = weights(mu) if callable(weights) else weights
        return generate(base, ids, mask, guides=guides, tokenizer=tok, weights=w, beta=beta, gamma=gamma,
                              **kwargs)

    return decode


def _rewarded_soup(models: SweepModels, spec: MethodSpec, tok: Any) -> Decode:
    policies = models.need("policies", spec.name)
    live = models.load(policies[0], fresh=True)
    state = {"mu": None}

    def decode(ids, mask, mu, kwargs):
        if state["mu"] != mu:
            merge_into(live, policies, list(mu))
            state["mu"] = mu
        return generate(live, ids, mask, guides=None, tokenizer=tok, **kwargs)

    return decode


def _proxies(models: SweepModels, name: str, params: dict) -> list:
    """The experts with their reference; ``cross_vocab`` / ``text_top_k`` from the method's parameters when the
    guides have their own tokenizer (ignored otherwise: they then read the base's ids)."""
    experts = models.need("experts", name)
    ref = models.load(models.need("reference", name))
    gtok = models.guide_tokenizer(experts)
    text = gtok is not None and params.get("cross_vocab") == "text"
    extra = dict(cross_vocab="text", top_k=params.get("text_top_k")) if text else {}
    return [ProxyGuide(models.load(e), ref, tokenizer=gtok, **extra) for e in experts]


def mage_config(models: SweepModels, spec: MethodSpec) -> MAGEConfig:
    """The :class:`~mogen.mage.MAGEConfig` of a ``mage`` or ``bone_soup`` method: its parameters over the
    models' defaults (bone_beta, alpha, sft; expert_beta and expert_alpha for the proxy variants)."""
    p = {"variant": "none", **spec.params}
    guide = VARIANTS[p["variant"]].guide if p["variant"] in VARIANTS else None  # the parse names a bad variant
    keys = ("bone_beta", "alpha", "sft") + (("expert_beta", "expert_alpha") if guide == "proxy" else ())
    defaults = {k: models.paths[k] for k in keys if models.paths.get(k) is not None}
    with config_errors(label=f"sweep config: method {spec.name!r}"):
        return MAGEConfig.parse({**defaults, **p})


def _mage(models: SweepModels, spec: MethodSpec, tok: Any) -> Decoder:
    cfg = mage_config(models, spec)
    guide = VARIANTS[cfg.variant].guide
    extra: dict = {}
    if guide == "value":
        extra["value_models"] = models.need("value_models", spec.name)
    if guide == "proxy":
        extra.update(experts=models.need("experts", spec.name), reference=models.need("reference", spec.name))
    folders = extra.get("value_models") or extra.get("experts")
    mage = MAGE(models.need("backbones", spec.name), tokenizer=tok, config=cfg,
                guide_tokenizer=models.guide_tokenizer(folders) if folders else None,
                dtype=models.dtype, device=models.device, **extra)
    return Decoder(lambda ids, mask, mu, kwargs: mage.generate(ids, mask, preference=list(mu), **kwargs), mage)


def build_decoder(spec: MethodSpec, models: SweepModels) -> Decoder:
    """The decoder of one method (models loaded on first use, shared across methods)."""
    tok = models.tokenizer(models.need("tokenizer", spec.name))
    kind, p = spec.kind, spec.params
    if kind == "base":
        return Decoder(_generate(models.load(models.need("base", spec.name)), tok, [], None))
    if kind == "rewarded_soup":
        return Decoder(_rewarded_soup(models, spec, tok))
    if kind in ("bone_soup", "mage"):
        return _mage(models, spec, tok)
    if kind == "mod":
        pol = [models.load(q) for q in models.need("policies", spec.name)]
        guides = [ProxyGuide(q, pol[0]) for q in pol[1:]]
        return Decoder(_generate(pol[0], tok, guides, lambda mu: list(mu[1:])))
    base = models.load(models.need("base", spec.name))
    guides = _proxies(models, spec.name, p)
    if kind == "mpaw":
        return Decoder(_generate(base, tok, guides, lambda mu: list(mu), beta=p.get("beta", 1.0)))
    search_args = {k: p[k] for k in ("beam_width", "expansion", "chunk_length", "proposal") if k in p}

    def decode(ids, mask, mu, kwargs):
        return search(base, ids, mask, guides=guides, tokenizer=tok, weights=list(mu), beta=p.get("beta", 1.0),
                      **search_args, **kwargs)

    return Decoder(decode)
