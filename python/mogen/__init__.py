"""mogen: controllable multi-objective generation for causal LMs.

Steer a strong base model toward a user-chosen mix of objectives at decoding
time with small aligned guides, value models and merged checkpoints.
"""

from . import ops, reference
from ._version import __version__

__all__ = ["ops", "reference", "__version__", "merge", "merge_into", "bone_soup_coefficients", "MergeReport"]

_LAZY = {"merge", "merge_into", "bone_soup_coefficients", "MergeReport"}


def __getattr__(name):
    # The merge engine is imported on first use, keeping `import mogen` light.
    if name in _LAZY:
        from . import merging

        return getattr(merging, name)
    raise AttributeError(f"module 'mogen' has no attribute {name!r}")
