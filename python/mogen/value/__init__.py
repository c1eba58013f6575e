"""Explicit value models: the format (a causal LM whose head is a value head), sampled training data on disk
(MAGE eq. 15, :mod:`.dataset`) and training (MAGE eq. 16) on transformers' Trainer (:mod:`.trainer`)."""

from .data import Example, spearman
from ..value_format import (VALUE_KEY, LinearHead, is_value_model, linear_head, make_value_model, plain_linear_head,
                            read_value_entry, value_entry)
from .dataset import ValueDataset, read_dataset, sample_dataset
from .train import ValueTrainingResult, fit_examples, predict_final_values, train_value_model

__all__ = [
    "VALUE_KEY",
    "Example",
    "ValueDataset",
    "LinearHead",
    "ValueTrainingResult",
    "fit_examples",
    "is_value_model",
    "linear_head",
    "make_value_model",
    "plain_linear_head",
    "predict_final_values",
    "read_dataset",
    "read_value_entry",
    "sample_dataset",
    "spearman",
    "train_value_model",
    "value_entry",
]
