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
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch

__all__ = ["VALUE_KEY", "value_entry", "is_value_model", "make_value_model", "plain_linear_head",
           "read_value_entry"]

VALUE_KEY = "mogen_value_model"
FORMAT_VERSION = 1

# Config fields through which some architectures rescale or cap the head's
# output inside forward(); K2 scores candidates from the bare linear head, so
# top-k mode refuses them.
_HEAD_TRANSFORMS = ("final_logit_softcapping", "logit_softcapping", "logit_scale", "logits_scaling",
                    "lm_head_multiplier", "output_multiplier_scale", "logit_multiplier")


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


def plain_linear_head(model: Any, name: str = "ValueGuide.model") -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(weight [V, H], bias [V] or None)`` of a head that is exactly ``logits = hidden @ W.T + b``.

    Raises ValueError for heads that are not a plain ``torch.nn.Linear`` or whose
    outputs the model rescales or caps in ``forward`` (top-k value scoring reads
    the weight directly and would miss the transform).
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if type(head) is not torch.nn.Linear:
        raise ValueError(
            f"{name}'s output head is {type(head).__name__}, not a plain torch.nn.Linear; top_k value scoring "
            "needs one (use top_k=None for the full head)"
        )
    cfg = _text_config(model.config)
    for field in _HEAD_TRANSFORMS:
        value = getattr(cfg, field, None)
        if value is not None and value is not False and not (isinstance(value, (int, float)) and value in (0, 1)):
            raise ValueError(
                f"{name}'s config sets {field}={value!r}: its forward() transforms the head's output, which top_k "
                "value scoring cannot reproduce from the head's weight (use top_k=None for the full head)"
            )
    return head.weight, head.bias
