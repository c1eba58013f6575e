"""MAGE: merge, then guide (docs/design.md section 1; the MAGE paper sections 3.3-3.4).

Stage 1 builds a base per preference ``mu``: the backbone checkpoints merged
with Bone Soup coefficients ``lambda = B^-1 mu`` (optionally extrapolated away
from an SFT checkpoint). Stage 2 steers it with one of

- ``"E"``: explicit value models, an ensemble weighted by ``mu``;
- ``"E-M"``: the value models merged with ``mu`` into one (MAGE-E-M);
- ``"I"``: proxy guides (experts sharing one reference), weighted by ``mu``;
- ``"I-M"``: the experts merged into one expert by Bone Soup (MAGE-I-M, MAGE
  section 5.6.1): coefficients ``lambda_e = B_e^-1 mu`` for the experts' own
  reward-mixing matrix (diagonal ``expert_beta``; 1 when each expert was trained
  on one reward, where ``lambda_e = mu``), extrapolated away from the shared
  reference, the small family's SFT model: ``(1 + expert_alpha) lambda_e`` on
  the experts and ``-expert_alpha`` on the reference;
- ``"I-M-linear"``: the experts merged linearly with ``mu`` (the paper's
  MAGE-I-M', the naive baseline of its Table 3);
- ``"none"``: Stage 1 only.

Merged models are live ``transformers`` models re-merged in place
(:func:`mogen.merge_into`) when the preference changes, so a preference costs
one merge per merged model and no reload. :meth:`MAGE.generate` takes one
preference or one per row; rows are grouped by preference, each group decoded
with :func:`mogen.generate` (or :func:`mogen.search` with ``search=``), in
the order the preferences first appear.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from .configs import ConfigError, checked_field, config_errors, parse
from .decoding import ProxyGuide, ValueGuide, generate, search
from .decoding.checks import check_prompt
from .decoding.guides import CROSS_VOCAB
from .decoding.loading import load_causal_lm, own_tokenizer
from .merging import bone_soup_coefficients, merge_into
from .numerics import off_simplex
from .value import read_value_entry

__all__ = ["MAGE", "MAGEConfig", "MergeRecord", "VARIANTS", "Variant", "check_preference"]

PathLike = Union[str, Path]


@dataclass(frozen=True)
class Variant:
    """What a MAGE variant guides with: ``guide`` ``"value"`` (explicit value models), ``"proxy"`` (experts
    over a shared reference) or None; ``merge`` None (an ensemble), ``"linear"`` (merged with ``mu``) or
    ``"bone_soup"`` (merged with ``B_e^-1 mu``, extrapolated from the reference)."""

    guide: Optional[str]
    merge: Optional[str] = None

    @property
    def merged(self) -> bool:
        return self.merge is not None

    @property
    def folders_arg(self) -> str:
        """The constructor argument that names this variant's guide folders."""
        return "value_models" if self.guide == "value" else "experts"


#: The variants by name.
VARIANTS: dict[str, Variant] = {
    "none": Variant(None),
    "E": Variant("value"),
    "E-M": Variant("value", "linear"),
    "I": Variant("proxy"),
    "I-M": Variant("proxy", "bone_soup"),
    "I-M-linear": Variant("proxy", "linear"),
}


def _variant(value: str, path: str) -> None:
    if value not in VARIANTS:
        raise ConfigError(path, f"variant must be one of {list(VARIANTS)}, got {value!r}")


def _cross_vocab(value: str, path: str) -> None:
    if value not in CROSS_VOCAB:
        raise ConfigError(path, f"cross_vocab must be one of {list(CROSS_VOCAB)}, got {value!r}")


def _finite(value: float, path: str) -> None:
    if not math.isfinite(value):
        raise ConfigError(path, f"must be finite, got {value!r}")


def _positive(value: Optional[int], path: str) -> None:
    if value is not None and value < 1:
        raise ConfigError(path, f"must be an int >= 1, got {value!r}")


def _num(default: float) -> Any:
    return checked_field(_finite, default)


@dataclass(frozen=True)
class MAGEConfig:
    """What :class:`MAGE` does besides its folders, tokenizer, dtype and device; the sweep's ``mage``
    method kind reads the same keys (all but ``sft``, which the sweep takes from ``models``)."""

    variant: str = checked_field(_variant, "E-M")
    bone_beta: float = _num(0.8)
    alpha: float = _num(0.0)
    sft: Optional[Union[str, Path]] = None
    expert_beta: float = _num(1.0)
    expert_alpha: float = _num(0.0)
    beta: float = _num(1.0)
    gamma: float = _num(1.0)
    value_top_k: Optional[int] = checked_field(_positive, None)
    cross_vocab: str = checked_field(_cross_vocab, "map")
    text_top_k: Optional[int] = checked_field(_positive, None)
    search: Optional[dict] = None

    @classmethod
    def parse(cls, data: dict, path: str = "", file: Any = None, label: str = "MAGE config") -> "MAGEConfig":
        """A checked config from a mapping (errors name ``path.key``)."""
        with config_errors(file, label):
            return parse(cls, data, path)

    def replace(self, **changes: Any) -> "MAGEConfig":
        """This config with ``changes``, checked."""
        return MAGEConfig.parse({**asdict(self), **changes})


#: The keys of the sweep's ``mage`` and ``bone_soup`` method kinds.
MAGE_KEYS = tuple(k for k in MAGEConfig.__dataclass_fields__ if k != "sft")
BONE_SOUP_KEYS = ("bone_beta", "alpha")


@dataclass(frozen=True)
class MergeRecord:
    """One in-place re-merge: which live model, for which preference, how long it took."""

    model: str
    preference: tuple
    seconds: float


def check_preference(preference: Any, n: int) -> np.ndarray:
    """``preference`` as float64 ``[B, n]`` (one row broadcast as ``[1, n]``), every row on the simplex."""
    p = np.asarray(preference, dtype=np.float64)
    if p.ndim == 1:
        p = p[None]
    if p.ndim != 2 or p.shape[1] != n:
        raise ValueError(f"preference must be [n] = [{n}] or [B, {n}] (one per row), got shape {np.shape(preference)}")
    bad = off_simplex(p)
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(f"preference row {row} = {p[row].tolist()} is not on the simplex (entries >= 0 summing to 1)")
    return p


def bone_soup_sources(mu: Sequence[float], models: Sequence[PathLike], bone_beta: float, alpha: float,
                      anchor: Optional[PathLike]) -> tuple[list[Path], list[float]]:
    """``(sources, coefficients)`` of the Bone Soup merge of ``models`` for preference ``mu``:
    ``(1 + alpha) B^-1 mu`` on the models, and ``-alpha`` on ``anchor`` (their SFT model) when
    ``alpha != 0``."""
    lam, anchor_coef = bone_soup_coefficients(mu, bone_beta, alpha)
    sources, coefs = [Path(m) for m in models], [float(x) for x in lam]
    if alpha != 0.0:
        sources.append(Path(anchor))
        coefs.append(float(anchor_coef))
    return sources, coefs


def load_model(path: PathLike, dtype: torch.dtype, device: Any) -> Any:
    """A causal LM from a local folder, quietly (``mogen decode``'s loader), in eval mode on ``device``."""
    return load_causal_lm(path, dtype=dtype, device=device, what="checkpoint")


class MAGE:
    """The two-stage pipeline over checkpoint folders.

    Args:
        backbones: n backbone checkpoint folders, one per objective (Bone Soup).
        tokenizer: the backbones' tokenizer.
        variant: one of :data:`VARIANTS`.
        bone_beta: the backbones' dominant reward weight (Bone Soup ``beta``).
        alpha, sft: extrapolation away from the SFT checkpoint (``alpha`` 0: none).
        value_models: n value-model folders (``E`` / ``E-M``).
        experts, reference: n expert folders and their shared reference (``I`` / ``I-M`` / ``I-M-linear``).
        expert_beta: ``I-M``: the experts' dominant reward weight (their Bone Soup ``beta``; 1 when each
            expert was trained on one reward alone).
        expert_alpha: ``I-M``: extrapolation away from the reference (0: none).
        guide_tokenizer: the guides' tokenizer; ``"auto"`` loads the first
            guide folder's when it has one, else the guides share the base's.
        beta, gamma: scales of proxy and value guidance.
        value_top_k: value only the k best candidates (K2) instead of the full head.
        cross_vocab, text_top_k: how guides with their own tokenizer score the base's tokens (the guides'
            ``cross_vocab``): ``"map"``, through the vocabulary map; ``"text"``, each of the base's
            ``text_top_k`` best candidates (default: value guides ``value_top_k``, else 20) by the text
            it appends.
            Ignored when the guides share the base's tokenizer.
        search: ``dict(beam_width=b, expansion=c, chunk_length=l, ...)`` to decode
            with chunk-level beam search instead of token-level fusion.
        dtype, device: of every loaded model.
        config: a :class:`MAGEConfig` (or a mapping of its keys) holding variant, bone_beta, alpha, sft,
            expert_beta, expert_alpha, beta, gamma, value_top_k, cross_vocab, text_top_k and search; those
            given as keywords override it.
    """

    def __init__(self, backbones: Sequence[PathLike], *, tokenizer: Any, config: Optional[MAGEConfig] = None,
                 value_models: Optional[Sequence[PathLike]] = None, experts: Optional[Sequence[PathLike]] = None,
                 reference: Optional[PathLike] = None, guide_tokenizer: Any = "auto",
                 dtype: torch.dtype = torch.float32, device: Any = "cpu", **options: Any) -> None:
        cfg = self._config(config, options)
        self.config = cfg
        self.backbones = [Path(b) for b in backbones]
        self.n = len(self.backbones)
        if self.n < 2:
            raise ValueError(f"MAGE needs at least 2 backbones (one per objective), got {self.n}")
        self._check_bone_soup(cfg)
        self.variant, self.kind, self.tokenizer = cfg.variant, VARIANTS[cfg.variant], tokenizer
        self.bone_beta, self.alpha, self.sft = cfg.bone_beta, cfg.alpha, cfg.sft
        self.expert_beta, self.expert_alpha = cfg.expert_beta, cfg.expert_alpha
        self.reference = Path(reference) if reference is not None else None
        self.beta, self.gamma, self.value_top_k, self.search = cfg.beta, cfg.gamma, cfg.value_top_k, cfg.search
        self.cross_vocab, self.text_top_k = cfg.cross_vocab, cfg.text_top_k
        self.dtype, self.device = dtype, device
        self.guide_folders = self._guide_folders(value_models, experts, reference)
        self.guide_tokenizer = self._guide_tokenizer(guide_tokenizer)
        self.base = load_model(self.backbones[0], dtype, device)
        self._loaded = self._load_guides(reference)
        self.merges: list[MergeRecord] = []
        self._current: dict[str, Optional[tuple]] = {"base": None, "guide": None}

    @staticmethod
    def _config(config: Optional[MAGEConfig], options: dict) -> MAGEConfig:
        """``config`` (default: the defaults) with the keyword ``options`` (its fields) applied, checked."""
        unknown = sorted(set(options) - set(MAGEConfig.__dataclass_fields__))
        if unknown:
            raise TypeError(f"MAGE() got unexpected keyword argument(s) {unknown}")
        if config is not None and not isinstance(config, MAGEConfig):
            config = MAGEConfig.parse(config)  # a mapping
        return (config or MAGEConfig()).replace(**options)

    def _check_bone_soup(self, cfg: MAGEConfig) -> None:
        """Both Bone Soup merges' beta and alpha for n objectives (``B`` is singular at beta = 1/n)."""
        one_hot = [1.0] + [0.0] * (self.n - 1)
        for b, a in (("bone_beta", "alpha"), ("expert_beta", "expert_alpha")):
            try:
                bone_soup_coefficients(one_hot, getattr(cfg, b), getattr(cfg, a))
            except ValueError as exc:
                raise ConfigError(b, str(exc), label="MAGE config") from None
        if cfg.alpha != 0.0 and cfg.sft is None:
            raise ConfigError("alpha", "alpha != 0 extrapolates away from the SFT checkpoint: "
                              "pass sft=<its folder>", label="MAGE config")

    # -- set-up --------------------------------------------------------------------
    def _guide_folders(self, value_models, experts, reference) -> list[Path]:
        if self.kind.guide is None:
            return []
        need = value_models if self.kind.guide == "value" else experts
        if need is None or len(need) != self.n:
            raise ValueError(f"variant {self.variant!r} needs {self.kind.folders_arg}: {self.n} folders, "
                             "one per backbone")
        if self.kind.guide == "proxy" and reference is None:
            raise ValueError(f"variant {self.variant!r} needs reference=<the experts' shared reference folder>")
        return [Path(p) for p in need]

    def _guide_tokenizer(self, guide_tokenizer: Any) -> Any:
        if not (isinstance(guide_tokenizer, str) and guide_tokenizer == "auto"):
            return guide_tokenizer
        return own_tokenizer(self.guide_folders[0], "guide") if self.guide_folders else None

    def _load_guides(self, reference: Optional[PathLike]) -> dict:
        if self.kind.guide == "value":
            for f in self.guide_folders:
                read_value_entry(f)
        folders = self.guide_folders[:1] if self.kind.merged else self.guide_folders
        loaded = {"models": [load_model(f, self.dtype, self.device) for f in folders]}
        if self.kind.guide == "proxy":
            loaded["reference"] = load_model(reference, self.dtype, self.device)
        return loaded

    def _guides(self) -> list:
        tok = self.guide_tokenizer
        # "text" needs the guides' own tokenizer; guides reading the base's ids have no map to bypass.
        text = tok is not None and self.cross_vocab == "text"
        if self.kind.guide == "value":
            top_k = self.text_top_k if text and self.text_top_k is not None else self.value_top_k
            mode = dict(cross_vocab="text") if text else {}
            return [ValueGuide(m, tokenizer=tok, top_k=top_k, **mode) for m in self._loaded["models"]]
        if self.kind.guide == "proxy":
            mode = dict(cross_vocab="text", top_k=self.text_top_k) if text else {}
            return [ProxyGuide(m, self._loaded["reference"], tokenizer=tok, **mode) for m in self._loaded["models"]]
        return []

    # -- stage 1 and the merged guide -----------------------------------------------
    def _remerge(self, which: str, model: Any, sources: list, coefficients: list, mu: tuple) -> None:
        if self._current[which] == mu:
            return
        t0 = time.perf_counter()
        merge_into(model, sources, coefficients)
        self.merges.append(MergeRecord(which, mu, time.perf_counter() - t0))
        self._current[which] = mu

    def prepare(self, preference: Sequence[float]) -> None:
        """Re-merge the live base (and the merged guide) for one preference, if it changed."""
        mu = tuple(float(x) for x in check_preference(preference, self.n)[0])
        self._remerge("base", self.base, *bone_soup_sources(mu, self.backbones, self.bone_beta, self.alpha,
                                                            self.sft), mu)
        if self.kind.merge == "linear":
            self._remerge("guide", self._loaded["models"][0], self.guide_folders, list(mu), mu)
        elif self.kind.merge == "bone_soup":
            self._remerge("guide", self._loaded["models"][0], *bone_soup_sources(
                mu, self.guide_folders, self.expert_beta, self.expert_alpha, self.reference), mu)

    def _weights(self, mu: tuple) -> Optional[list[float]]:
        if self.kind.guide is None:
            return None
        return [1.0] if self.kind.merged else list(mu)

    # -- decoding ----------------------------------------------------------------------
    def generate(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, *,
                 preference: Any, **decode_kwargs: Any) -> torch.Tensor:
        """Decode every row at its preference; ``[B, T + new]`` (shorter groups right-padded with the pad id).

        ``preference`` is ``[n]`` (all rows) or ``[B, n]``; ``decode_kwargs`` go to
        :func:`mogen.generate` (or :func:`mogen.search`): ``max_new_tokens``,
        ``do_sample``, ``top_p``, ``generator``, ...
        """
        ids, mask, _ = check_prompt(input_ids, attention_mask, torch.device("cpu"))
        prefs = check_preference(preference, self.n)
        if prefs.shape[0] == 1:
            prefs = np.repeat(prefs, ids.shape[0], axis=0)
        elif prefs.shape[0] != ids.shape[0]:
            raise ValueError(f"preference has {prefs.shape[0]} rows but input_ids has {ids.shape[0]}")
        groups: dict[tuple, list[int]] = {}
        for b, row in enumerate(prefs):
            groups.setdefault(tuple(float(x) for x in row), []).append(b)
        outs: dict[int, torch.Tensor] = {}
        for mu, rows in groups.items():
            self.prepare(mu)
            got = self._decode(ids[rows], mask[rows], mu, decode_kwargs)
            for b, out in zip(rows, got):
                outs[b] = out
        return self._stack([outs[b] for b in range(ids.shape[0])], decode_kwargs)

    def _decode(self, ids: torch.Tensor, mask: torch.Tensor, mu: tuple, kwargs: dict) -> torch.Tensor:
        args = dict(guides=self._guides(), tokenizer=self.tokenizer, weights=self._weights(mu), beta=self.beta,
                    gamma=self.gamma, **kwargs)
        if self.search is not None:  # do_sample=False reaches search's refusal, which names top_k=1
            return search(self.base, ids, mask, **dict(self.search), **args)
        return generate(self.base, ids, mask, **args)

    def _stack(self, rows: list[torch.Tensor], kwargs: dict) -> torch.Tensor:
        pad = kwargs.get("pad_token_id")
        if pad is None:
            pad = getattr(self.base.generation_config, "pad_token_id", None)
        if pad is None:
            pad = getattr(self.tokenizer, "pad_token_id", None) or 0
        width = max(r.shape[0] for r in rows)
        out = torch.full((len(rows), width), int(pad), dtype=torch.long)
        for b, r in enumerate(rows):
            out[b, : r.shape[0]] = r.cpu()
        return out
