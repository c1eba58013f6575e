"""Guides: small models that steer the base model's next-token distribution.

Two kinds, mixed freely in one call (docs/design.md section 1):

A :class:`ProxyGuide` is an aligned "expert" and its unaligned "reference"
(MPAW's weak pair). At each step it contributes, for every base token ``v``,

    term(v) = log p_e(m(v)) - log p_r(m(v)),    log p = log_softmax(z / temperature)

taken over the guide tokenizer's real vocabulary, where ``m`` maps base ids to
guide ids (the identity when the guide shares the base's tokenizer; see
:mod:`mogen.vocab` otherwise). ``mogen.generate`` adds ``beta * sum_i w_i term_i``
to the base's log-probabilities.

A :class:`ValueGuide` is an explicit value model (:mod:`mogen.value_format`):
its head gives ``Q(x, y<t)[v]``, the expected reward if ``v`` comes next, and
``mogen.generate`` adds ``gamma * sum_j u_j Q_j(m_j(v))`` (MAGE eq. 25, a
weighted ensemble of value models). With ``top_k=k`` only the ``k`` best
candidates of the rest of the score are valued (kernel K2) and every other
token is out.

A guide with its own tokenizer gives its opinion on base tokens in one of two
ways (``cross_vocab``): ``"map"`` through a vocabulary map (a base token with a
same-bytes guide token gets the guide's score of it, every other one 0), or
``"text"``: the base's ``top_k`` best candidates of the rest of the score are
each scored by the guide on the text they append, in the guide's own
tokenization (:mod:`mogen.decoding.textcandidates`), and every other token is out.
"""

from __future__ import annotations

import json
import math
import weakref
from typing import Any, Optional, Union

import torch

from ..value_format import linear_head, read_value_entry
from .loading import load_causal_lm, own_tokenizer

__all__ = ["ProxyGuide", "ValueGuide", "Guide", "shares_tokenizer", "logits_width", "reads_candidates",
           "CROSS_VOCAB", "TEXT_TOP_K"]

CROSS_VOCAB = ("map", "text")
TEXT_TOP_K = 20  # candidates per row a cross_vocab="text" guide scores when top_k is not given


def _is_causal_lm(model: Any) -> bool:
    return isinstance(model, torch.nn.Module) and hasattr(model, "config") and callable(
        getattr(model, "forward", None)
    )


def _check_model(model: Any, name: str) -> None:
    if not _is_causal_lm(model):
        raise TypeError(
            f"{name} must be a transformers causal LM (torch.nn.Module with a config), got {type(model).__name__}"
        )
    if getattr(model.config, "is_encoder_decoder", False):
        raise ValueError(f"{name} is an encoder-decoder model; guides must be decoder-only LMs")


def _check_weight(weight: Any, name: str) -> float:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(weight).__name__}")
    if not math.isfinite(float(weight)):
        raise ValueError(f"{name} must be finite, got {weight}")
    return float(weight)


def _check_tokenizer(tokenizer: Any, name: str) -> None:
    if tokenizer is not None and not hasattr(tokenizer, "decode"):
        raise TypeError(f"{name} must be a transformers tokenizer, got {type(tokenizer).__name__}")


def _check_cross_vocab(cross_vocab: Any, tokenizer: Any, top_k: Any, name: str) -> Optional[int]:
    """The candidate count of a guide scored at candidates (None for ``"map"`` without ``top_k``)."""
    if cross_vocab not in CROSS_VOCAB:
        raise ValueError(f"{name}.cross_vocab must be one of {CROSS_VOCAB}, got {cross_vocab!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"{name}.top_k must be None or an int >= 1, got {top_k!r}")
    if cross_vocab == "text":
        if tokenizer is None:
            raise ValueError(f"{name}.cross_vocab='text' scores candidates in the guide's own tokenization: pass "
                             f"{name.split('.')[0]}(..., tokenizer=<the guide's tokenizer>)")
        return TEXT_TOP_K if top_k is None else top_k
    return top_k


class ProxyGuide:
    """An expert / reference pair of causal LMs that share one tokenizer.

    Args:
        expert: the aligned small model (a ``transformers`` causal LM).
        reference: the same-size model before alignment; the guide's signal is
            the expert's log-probability minus the reference's. Several guides
            may share one reference object: it then runs once per step.
        weight: the default weight ``w_i`` of this guide (``mogen.generate``'s
            ``weights`` overrides it). Any finite real; 0 disables the guide.
        tokenizer: the tokenizer of expert and reference, or None when it is
            the base model's. A guide with its own tokenizer follows the
            generated *text* (see :mod:`mogen.decoding.retokenize`).
        temperature: ``t_i`` applied to expert and reference logits (> 0).
        cross_vocab: with its own tokenizer, how the guide scores base tokens:
            ``"map"`` (through the vocabulary map) or ``"text"`` (the base's
            ``top_k`` candidates, each by the log-probability of the text it
            appends; every other token is out). Ignored when the guide shares
            the base's tokenizer (it then scores every token exactly).
        top_k: candidates per row with ``cross_vocab="text"`` (default 20).

    Raises:
        ValueError: a bad ``temperature``, ``cross_vocab``, ``top_k``; ``top_k`` with ``cross_vocab="map"``;
        ``cross_vocab="text"`` without ``tokenizer``.
    """

    def __init__(self, expert: Any, reference: Any, weight: float = 1.0, *, tokenizer: Any = None,
                 temperature: float = 1.0, cross_vocab: str = "map", top_k: Optional[int] = None) -> None:
        for name, model in (("expert", expert), ("reference", reference)):
            _check_model(model, f"ProxyGuide.{name}")
        t = float(temperature)
        if not math.isfinite(t) or t <= 0.0:
            raise ValueError(f"ProxyGuide.temperature must be a finite number > 0, got {temperature}")
        _check_tokenizer(tokenizer, "ProxyGuide.tokenizer")
        self.top_k = _check_cross_vocab(cross_vocab, tokenizer, top_k, "ProxyGuide")
        if cross_vocab == "map" and top_k is not None:
            raise ValueError("ProxyGuide.top_k counts the candidates of cross_vocab='text'; with cross_vocab='map' "
                             "a proxy guide scores every token (leave top_k None)")
        self.cross_vocab = cross_vocab
        self.expert = expert
        self.reference = reference
        self.weight = _check_weight(weight, "ProxyGuide.weight")
        self.tokenizer = tokenizer
        self.temperature = t

    def __repr__(self) -> str:
        tok = "base's" if self.tokenizer is None else type(self.tokenizer).__name__
        return (f"ProxyGuide(expert={type(self.expert).__name__}, reference={type(self.reference).__name__}, "
                f"weight={self.weight}, tokenizer={tok}, temperature={self.temperature}"
                + (f", cross_vocab='text', top_k={self.top_k})" if self.cross_vocab == "text" else ")"))


class ValueGuide:
    """An explicit value model: a causal LM whose output head is a value head.

    Args:
        model: the value model (``transformers`` causal LM; see
            :mod:`mogen.value_format`). Its head is ``|V|`` wide for its tokenizer.
        weight: the default weight ``u_j`` (``mogen.generate``'s ``weights``
            overrides it, one column per guide in order). Finite; 0 disables it.
        tokenizer: the value model's tokenizer, or None when it is the base's.
            One of its own makes the guide follow the generated text, as a
            :class:`ProxyGuide` with its own tokenizer does.
        top_k: None values every token with the full head (MAGE eq. 25
            exactly). ``k`` runs the backbone only and values the ``k`` best
            candidates of the rest of the fused score with kernel K2; every
            other token is out (``-inf``). Needs an ``nn.Linear`` head, whose
            output forward() leaves as it is or transforms as a class of
            :data:`mogen.value_format.HEAD_TRANSFORMS` does (soft-capping,
            logit scales: applied to the k scores); except with
            ``cross_vocab="text"``, where it defaults to 20.
        cross_vocab: with its own tokenizer, ``"map"`` (``Q`` of the mapped
            guide token) or ``"text"``: each of the ``top_k`` candidates gets
            the value at the last guide token of the text it appends.

    Raises:
        ValueError: ``top_k`` < 1, a head whose width differs from
        ``len(tokenizer)``, a head that is not an ``nn.Linear`` (or that an
        unknown class transforms) in top-k mode,
        a bad ``cross_vocab``, ``cross_vocab="text"`` without ``tokenizer``.
    """

    def __init__(self, model: Any, weight: float = 1.0, *, tokenizer: Any = None,
                 top_k: Optional[int] = None, cross_vocab: str = "map") -> None:
        _check_model(model, "ValueGuide.model")
        _check_tokenizer(tokenizer, "ValueGuide.tokenizer")
        linear_head_needed = top_k is not None and cross_vocab == "map"
        top_k = _check_cross_vocab(cross_vocab, tokenizer, top_k, "ValueGuide")
        if tokenizer is not None and logits_width(model) != len(tokenizer):
            raise ValueError(
                f"ValueGuide.model has a value head of {logits_width(model)} entries but its tokenizer has "
                f"{len(tokenizer)} tokens; a value head has one entry per token of its tokenizer"
            )
        if linear_head_needed:
            linear_head(model)
        self.cross_vocab = cross_vocab
        self.model = model
        self.weight = _check_weight(weight, "ValueGuide.weight")
        self.tokenizer = tokenizer
        self.top_k = top_k

    @classmethod
    def from_pretrained(cls, path: Any, weight: float = 1.0, *, tokenizer: Any = "auto", top_k: Optional[int] = None,
                        dtype: Optional[torch.dtype] = None, device: Any = "cpu",
                        cross_vocab: str = "map") -> "ValueGuide":
        """Load a value model folder (``config.json`` with a ``mogen_value_model`` entry).

        ``tokenizer="auto"`` loads the folder's tokenizer when it has one (the
        guide then reads text through it; pass None to share the base's).
        """
        read_value_entry(path)
        model = load_causal_lm(path, dtype=dtype, device=device, what="value model")
        if isinstance(tokenizer, str) and tokenizer == "auto":
            tokenizer = own_tokenizer(path, "value model")
        return cls(model, weight, tokenizer=tokenizer, top_k=top_k, cross_vocab=cross_vocab)

    def __repr__(self) -> str:
        tok = "base's" if self.tokenizer is None else type(self.tokenizer).__name__
        mode = "full head" if self.top_k is None else f"top_k={self.top_k}"
        mode += ", cross_vocab='text'" if self.cross_vocab == "text" else ""
        return f"ValueGuide(model={type(self.model).__name__}, weight={self.weight}, tokenizer={tok}, {mode})"


Guide = Union[ProxyGuide, ValueGuide]


# id(tokenizer) -> (weakref, serialized form); serialising a large tokenizer
# takes milliseconds, and generate() asks once per call and guide.
_SERIAL_CACHE: dict[int, tuple[weakref.ref, Optional[str]]] = {}


def _serialized(tok: Any) -> Optional[str]:
    key = id(tok)
    hit = _SERIAL_CACHE.get(key)
    if hit is not None and hit[0]() is tok:
        return hit[1]
    backend = getattr(tok, "backend_tokenizer", None)
    value: Optional[str] = None
    if backend is not None:
        # Added tokens and special-token roles live outside the backend's JSON
        # in some tokenizers; include them so "same JSON" means "same ids".
        extra = {
            "added": sorted((str(k), str(v)) for k, v in getattr(tok, "added_tokens_decoder", {}).items()),
            "len": len(tok),
        }
        spec = json.loads(backend.to_str())
        # Padding / truncation are call-time settings, not part of how text maps to ids.
        spec.pop("padding", None)
        spec.pop("truncation", None)
        value = json.dumps([spec, extra], sort_keys=True)
    try:
        _SERIAL_CACHE[key] = (weakref.ref(tok, lambda _r, key=key: _SERIAL_CACHE.pop(key, None)), value)
    except TypeError:  # pragma: no cover - tokenizers are weak-referenceable
        pass
    return value


def shares_tokenizer(base_tokenizer: Any, guide_tokenizer: Any) -> bool:
    """Whether a guide with ``guide_tokenizer`` can take the base's token ids as they are.

    True for ``guide_tokenizer is None``, the same object, or two fast
    tokenizers with identical serialized pipelines (e.g. one folder loaded
    twice). Such guides skip re-tokenization and run in lockstep with the base.
    """
    if guide_tokenizer is None or guide_tokenizer is base_tokenizer:
        return True
    if base_tokenizer is None:
        return False
    a, b = _serialized(base_tokenizer), _serialized(guide_tokenizer)
    return a is not None and a == b


def reads_candidates(guide: Any, shared: bool) -> bool:
    """Whether ``guide`` scores the base's candidates on the text they append (``cross_vocab="text"`` and a
    tokenizer of its own: ``shared`` False)."""
    return not shared and getattr(guide, "cross_vocab", "map") == "text"


def logits_width(model: Any) -> int:
    """Width of the model's LM head (may exceed the tokenizer's vocabulary: padded rows)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    size = getattr(model.config, "vocab_size", None)
    if size is None:  # pragma: no cover - every causal LM config has one
        raise ValueError(f"cannot tell the vocabulary size of {type(model).__name__}")
    return int(size)
