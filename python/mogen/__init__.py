"""mogen: controllable multi-objective generation for causal LMs.

Steer a strong base model toward a user-chosen mix of objectives at decoding
time with small aligned guides, value models and merged checkpoints.
"""

import importlib
from typing import Any

from . import ops, reference
from ._version import __version__

# Decoding pulls in transformers and merging the merge engine (seconds to
# import together); load each on first use so `import mogen` stays light.
_LAZY = {
    "generate": "mogen.decoding",
    "search": "mogen.decoding",
    "ProxyGuide": "mogen.decoding",
    "ValueGuide": "mogen.decoding",
    "MultiObjectiveLogitsProcessor": "mogen.decoding",
    "merge": "mogen.merging",
    "merge_into": "mogen.merging",
    "bone_soup_coefficients": "mogen.merging",
    "MergeReport": "mogen.merging",
    "MAGE": "mogen.mage",
}

__all__ = ["ops", "reference", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mogen' has no attribute {name!r}")
