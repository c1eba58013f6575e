"""Reward functions the sweep tests import by name."""


def not_finite(prompt: str, response: str) -> float:
    return float("nan")
