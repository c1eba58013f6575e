"""Decoding-time multi-objective alignment (DESIGN.md section 1, token level).

- :func:`generate`: drop-in for ``base.generate`` with weighted proxy guides,
  per-row preferences, and guides with their own tokenizers.
- :class:`ProxyGuide`: an expert / reference pair.
- :class:`MultiObjectiveLogitsProcessor`: the same fusion inside
  ``base.generate(..., logits_processor=[...])`` for same-tokenizer guides.
"""

from .generation import generate
from .guides import ProxyGuide, ValueGuide, shares_tokenizer
from .processor import MultiObjectiveLogitsProcessor
from .sampling import TokenSelector, filter_scores

__all__ = [
    "generate",
    "ProxyGuide",
    "ValueGuide",
    "MultiObjectiveLogitsProcessor",
    "TokenSelector",
    "filter_scores",
    "shares_tokenizer",
]
