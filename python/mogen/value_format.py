"""The value-model format (docs/design.md section 1, MAGE eq. 15-16).

A value model is an ordinary ``transformers`` causal-LM checkpoint whose
output head is a *value head*: entry ``v`` of its output at position ``t`` is
``Q(x, y<t)[v]``, the expected final reward of the response if ``v`` comes
next. ``config.json`` marks it with an entry::

    "mogen_value_model": {"version": 1, "objectives": ["harmless"],
                          "reward_scale": 1.0, "reward_offset": 0.0}

Training regresses ``(r - reward_offset) / reward_scale``, so ``Q`` is in those
normalised units; multiply by ``reward_scale`` and add ``reward_offset`` to get
rewards back.

A token that training never reached keeps its head row at the zero it started
from (:func:`make_value_model` resets the head), so its ``Q`` is 0 in every
state: the average training reward. Guidance then neither favours nor
penalises it against an average continuation, whatever the state; only the
base's own probability decides it. Training targets every response token
through the final eos (:func:`mogen.value.train_value_model`), so eos is valued
wherever the data ends responses; the training result reports how many head
rows no target reached (``untrained_rows``). Because the format is that of any causal LM, ``from_pretrained``
loads value models and :func:`mogen.merge` / :func:`mogen.merge_into` merge them
with no special case (MAGE-E-M: one value model merged with the preference).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch

__all__ = ["VALUE_KEY", "HEAD_TRANSFORMS", "LinearHead", "value_entry", "is_value_model", "make_value_model",
           "linear_head", "try_linear_head", "plain_linear_head", "read_value_entry"]

VALUE_KEY = "mogen_value_model"
FORMAT_VERSION = 1

# How a causal LM's forward() transforms its output head's result, by model class: config fields (read from
# the text config) and what forward does with each, in forward's order. Each row was read off the class's
# forward in transformers 5.24.0 (models/<name>/modeling_<name>.py) and is tested against that forward in
# tests/test_head_transforms.py. Ops, on the linear head's output x:
#   "softcap": x / cap, tanh, * cap (Gemma 2/3/3n/4, VaultGemma, NanoChat, Beam, Inkling2; Beam and Inkling2
#              cast x to fp32 first, as top-k scores are)
#   "mul":     x * value (Cohere's logit_scale, Falcon-H1's lm_head_multiplier, HyperCLOVA X's logits_scaling)
#   "div":     x / value (Granite's logits_scaling)
#   "hidden_div": the hidden state / value, before the head (MiniCPM3's logits_scaling)
# A field set to None is skipped (the Gemma-style forwards skip a None cap; the others need a number). A field
# of one name can mean another transform in another class (logits_scaling divides in Granite and multiplies in
# HyperCLOVA X), hence one row per class, not per field.
_SOFTCAP = (("final_logit_softcapping", "softcap"),)
HEAD_TRANSFORMS: dict[str, tuple[tuple[str, str], ...]] = {
    "Gemma2ForCausalLM": _SOFTCAP,
    "Gemma3ForCausalLM": _SOFTCAP,
    "Gemma3nForCausalLM": _SOFTCAP,
    "Gemma4ForCausalLM": _SOFTCAP,
    "VaultGemmaForCausalLM": _SOFTCAP,
    "NanoChatForCausalLM": _SOFTCAP,
    "BeamForCausalLM": _SOFTCAP,
    "Inkling2ForCausalLM": _SOFTCAP,
    "CohereForCausalLM": (("logit_scale", "mul"),),
    "Cohere2ForCausalLM": (("logit_scale", "mul"),),
    "Cohere2MoeForCausalLM": (("logit_scale", "mul"),),
    "GraniteForCausalLM": (("logits_scaling", "div"),),
    "GraniteMoeForCausalLM": (("logits_scaling", "div"),),
    "GraniteMoeSharedForCausalLM": (("logits_scaling", "div"),),
    "GraniteMoeHybridForCausalLM": (("logits_scaling", "div"),),
    "HyperCLOVAXForCausalLM": (("logits_scaling", "mul"),),
    "FalconH1ForCausalLM": (("lm_head_multiplier", "mul"),),
    "MiniCPM3ForCausalLM": (("logits_scaling", "hidden_div"),),
}

# Config fields through which some architectures rescale or cap the head's output inside forward(): a model
# of a class without a HEAD_TRANSFORMS row that sets one of them is refused in top-k mode (how its forward
# uses the field is unknown).
_TRANSFORM_FIELDS = tuple(dict.fromkeys(
    [field for steps in HEAD_TRANSFORMS.values() for field, _ in steps]
    + ["logit_softcapping", "logits_soft_cap", "output_multiplier", "output_multiplier_scale", "logit_multiplier"]))


def _config_of(model_or_config: Any) -> Any:
    return getattr(model_or_config, "config", model_or_config)


def value_entry(model_or_config: Any) -> Optional[dict]:
    """The ``mogen_value_model`` entry of a model's config (or a config), or None."""
    entry = getattr(_config_of(model_or_config), VALUE_KEY, None)
    return dict(entry) if isinstance(entry, dict) else None


def is_value_model(model_or_config: Any) -> bool:
    return value_entry(model_or_config) is not None


def read_value_entry(path: Union[str, Path]) -> dict:
    """The ``mogen_value_model`` entry of the ``config.json`` in folder ``path``.

    Raises FileNotFoundError for a missing folder or config, ValueError (with a
    hint) for a checkpoint that is not a value model.
    """
    folder = Path(path).expanduser()
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{str(folder)!r} has no config.json; a value model is a transformers model folder")
    with open(cfg_path, encoding="utf-8") as f:
        cfg = json.load(f)
    entry = cfg.get(VALUE_KEY)
    if not isinstance(entry, dict):
        raise ValueError(
            f"{str(folder)!r} is not a mogen value model: its config.json has no '{VALUE_KEY}' entry. Train one "
            "with mogen.value.train_value_model, or mark a model whose head already predicts values with "
            "mogen.value.make_value_model(model, reset_head=False) and save it"
        )
    return entry


def make_value_model(model: Any, *, objectives: Sequence[str] = ("reward",), reward_scale: float = 1.0,
                     reward_offset: float = 0.0, reset_head: bool = True) -> Any:
    """Turn causal LM ``model`` into a value model, in place; returns it.

    The output head becomes the value head: untied from the input embedding
    (so training it leaves the backbone's embedding alone, and merging treats
    it as its own tensor), zero-initialised with ``reset_head`` (an untrained
    value model then steers nothing), and the config gets the
    ``mogen_value_model`` entry.
    """
    scale, offset = float(reward_scale), float(reward_offset)
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"reward_scale must be a finite number > 0, got {reward_scale}")
    if not math.isfinite(offset):
        raise ValueError(f"reward_offset must be finite, got {reward_offset}")
    head = model.get_output_embeddings()
    if head is None or getattr(head, "weight", None) is None:
        raise ValueError(f"{type(model).__name__} has no output head to turn into a value head")
    emb = model.get_input_embeddings()
    if emb is not None and emb.weight.data_ptr() == head.weight.data_ptr():
        head.weight = torch.nn.Parameter(head.weight.detach().clone())
    for cfg in {id(c): c for c in (model.config, _text_config(model.config))}.values():
        cfg.tie_word_embeddings = False
    if reset_head:
        with torch.no_grad():
            head.weight.zero_()
            if getattr(head, "bias", None) is not None:
                head.bias.zero_()
    setattr(model.config, VALUE_KEY, {
        "version": FORMAT_VERSION, "objectives": [str(o) for o in objectives],
        "reward_scale": scale, "reward_offset": offset,
    })
    return model


def _text_config(config: Any) -> Any:
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


@dataclass(frozen=True)
class LinearHead:
    """A model's output head as top-k value scoring reads it: ``logits = transform(hidden @ weight.T + bias)``.

    ``weight [V, H]``, ``bias [V]`` or None; ``steps`` what forward() does around the linear layer, in order:
    ``(op, value)`` with op ``"hidden_div"`` (the hidden state divided by ``value`` before the layer), or after
    it ``"softcap"`` (``value * tanh(x / value)``), ``"mul"`` or ``"div"``; none: a plain head.
    """

    weight: torch.Tensor
    bias: Optional[torch.Tensor]
    steps: tuple[tuple[str, float], ...] = ()

    def prepare(self, hidden: torch.Tensor) -> torch.Tensor:
        """What the linear layer reads from hidden states ``[..., H]`` (forward's ``hidden_div`` steps)."""
        for op, value in self.steps:
            if op == "hidden_div":
                hidden = hidden / value
        return hidden

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """forward()'s transform of linear outputs ``x`` (any shape), in ``x``'s dtype (fp32 in decoding)."""
        for op, value in self.steps:
            if op == "softcap":
                x = torch.tanh(x / value) * value
            elif op == "mul":
                x = x * value
            elif op == "div":
                x = x / value
        return x

    def scores(self, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The head's output at ids ``[B, k]`` from hidden states ``[B, H]``: fp32 ``[B, k]`` (kernel K2)."""
        from . import ops

        return self.transform(ops.topk_value_scores(self.prepare(hidden), self.weight, ids, self.bias))

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """The head's full output ``[N, V]`` at hidden states ``[N, H]``: the weight's dtype for a plain head,
        else fp32 (fp64 for an fp64 weight), where the transform runs."""
        out = torch.nn.functional.linear(self.prepare(hidden.to(self.weight.dtype)), self.weight, self.bias)
        return self.transform(out if out.dtype == torch.float64 else out.float()) if self.steps else out

    def rows(self, n: int) -> "LinearHead":
        """The head restricted to its first ``n`` rows (views; a runner slices padded head rows off)."""
        return LinearHead(self.weight[:n], None if self.bias is None else self.bias[:n], self.steps)


def _no_transform(value: Any) -> bool:
    return value is None or value is False or (isinstance(value, (int, float)) and value in (0, 1))


def linear_head(model: Any, name: str = "ValueGuide.model") -> LinearHead:
    """The output head of ``model`` as a :class:`LinearHead`: its ``nn.Linear`` and forward()'s transform.

    The transform comes from :data:`HEAD_TRANSFORMS` (the model's class, or the class it inherits forward()
    from, with the values of its text config). Raises ValueError for a head that is not a plain
    ``torch.nn.Linear``, and for a model of another class whose config sets a field through which some
    architectures transform the head's output (:data:`_TRANSFORM_FIELDS`): how its forward uses the field is
    not known.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if type(head) is not torch.nn.Linear:
        raise ValueError(
            f"{name}'s output head is {type(head).__name__}, not a plain torch.nn.Linear; top_k value scoring "
            "needs one (use top_k=None for the full head)"
        )
    cfg = _text_config(model.config)
    known = next((c for c in type(model).__mro__ if c.__name__ in HEAD_TRANSFORMS
                  and getattr(c, "forward", None) is getattr(type(model), "forward", None)), None)
    if known is None:
        for field in _TRANSFORM_FIELDS:
            value = getattr(cfg, field, None)
            if not _no_transform(value):
                raise ValueError(
                    f"{name}'s config sets {field}={value!r}, through which some architectures transform the head's "
                    f"output in forward(), and mogen does not know how {type(model).__name__}'s forward uses it "
                    "(top_k value scoring applies the transforms of the classes in "
                    "mogen.value_format.HEAD_TRANSFORMS); use top_k=None for the full head"
                )
        return LinearHead(head.weight, head.bias)
    steps = []
    for field, op in HEAD_TRANSFORMS[known.__name__]:
        value = getattr(cfg, field, None)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
                op != "mul" and value == 0):
            raise ValueError(f"{name}'s config sets {field}={value!r}; top_k value scoring needs a finite number"
                             + ("" if op == "mul" else " other than 0"))
        steps.append((op, float(value)))
    return LinearHead(head.weight, head.bias, tuple(steps))


def try_linear_head(model: Any, name: str = "ValueGuide.model") -> Optional[LinearHead]:
    """:func:`linear_head`, or None where it raises (the caller then runs the full head instead)."""
    try:
        return linear_head(model, name)
    except ValueError:
        return None


def plain_linear_head(model: Any, name: str = "ValueGuide.model") -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(weight [V, H], bias [V] or None)`` of a head that is exactly ``logits = hidden @ W.T + b``.

    Raises ValueError where :func:`linear_head` does, and for heads whose output the model's forward()
    transforms (use :func:`linear_head`, which returns the transform too).
    """
    head = linear_head(model, name)
    if head.steps:
        raise ValueError(f"{name}'s forward() transforms the head's output ({head.steps}); it is not a plain "
                         "linear head (mogen.value_format.linear_head returns the head with its transform)")
    return head.weight, head.bias
