"""Explicit value models: the format (a causal LM whose head is a value head) and training (MAGE eq. 16)."""

from .data import Example, spearman
from ..value_format import VALUE_KEY, is_value_model, make_value_model, plain_linear_head, read_value_entry, value_entry
from .train import ValueTrainingResult, predict_final_values, train_value_model

__all__ = [
    "VALUE_KEY",
    "Example",
    "ValueTrainingResult",
    "is_value_model",
    "make_value_model",
    "plain_linear_head",
    "predict_final_values",
    "read_value_entry",
    "spearman",
    "train_value_model",
    "value_entry",
]
