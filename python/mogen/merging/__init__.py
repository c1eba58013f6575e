"""mogen's streaming merge engine (docs/design.md sections 1 and 3, kernel K3).

``merge`` writes merged checkpoints (K of them from one read of the inputs),
``merge_into`` merges into a live model's parameters, ``bone_soup_coefficients``
gives MAGE's Stage-1 coefficients. Merge methods are registered
:class:`MergeMethod` classes (``register_method``); ``METHODS`` names them.
"""

from . import builtin_methods  # noqa: F401  (registers the built-in methods before anything resolves one)
from .bone_soup import bone_soup_coefficients
from .engine import merge
from .inplace import merge_into
from .methods import METHODS, LinearMethod, MergeMethod, register_method, unregister_method
from .report import MergeReport

__all__ = ["merge", "merge_into", "bone_soup_coefficients", "MergeReport", "METHODS", "MergeMethod", "LinearMethod",
           "register_method", "unregister_method"]
