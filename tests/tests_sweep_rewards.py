"""Reward functions the sweep tests import by name."""


def not_finite(prompt: str, response: str) -> float:
    return float("nan")


def count_e(response: str) -> float:
    """How many times 'e' occurs in the response: known, non-zero on random text, and easy to recompute."""
    return float(response.count("e"))


def count_a(response: str) -> float:
    return float(response.count("a"))


def count_o(response: str) -> float:
    return float(response.count("o"))


#: How many times :func:`counted_e` ran (the resume tests count scoring calls).
CALLS = {"counted_e": 0}


def counted_e(response: str) -> float:
    """:func:`count_e`, counting its calls."""
    CALLS["counted_e"] += 1
    return float(response.count("e"))
