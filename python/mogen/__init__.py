"""mogen: controllable multi-objective generation for causal LMs.

Steer a strong base model toward a user-chosen mix of objectives at decoding
time with small aligned guides, value models and merged checkpoints.
"""

from . import ops, reference
from ._version import __version__

__all__ = ["ops", "reference", "__version__"]
