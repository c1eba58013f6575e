"""Decoding-time multi-objective alignment (docs/design.md section 1, token level).

- :func:`generate`: drop-in for ``base.generate`` with weighted proxy guides,
  per-row preferences, and guides with their own tokenizers.
- :func:`search`: chunk-level beam search (MPAW Alg. 1, MAGE's b/c/l lookahead)
  scored by the same guides, each reading the text in its own tokenizer.
- :class:`ProxyGuide`: an expert / reference pair.
- :class:`MultiObjectiveLogitsProcessor`: the same fusion inside
  ``base.generate(..., logits_processor=[...])`` for same-tokenizer guides.
- :class:`GuideTerm`, :func:`register_guide_kind`: a new kind of guide as one
  class (:mod:`mogen.decoding.kinds`).
- :class:`DecodingSession`: the set-up and per-row state the drivers share.
"""

from .beams import Beam, SearchOutput
from .generation import generate
from .guides import ProxyGuide, ValueGuide, shares_tokenizer
from .kinds import GuideTerm, register_guide_kind
from .processor import MultiObjectiveLogitsProcessor
from .sampling import TokenSelector, filter_scores
from .search import RoundReport, search
from .session import DecodingSession

__all__ = [
    "generate",
    "search",
    "Beam",
    "SearchOutput",
    "RoundReport",
    "ProxyGuide",
    "ValueGuide",
    "MultiObjectiveLogitsProcessor",
    "TokenSelector",
    "filter_scores",
    "shares_tokenizer",
    "GuideTerm",
    "register_guide_kind",
    "DecodingSession",
]
