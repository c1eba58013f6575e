"""The demo's synthetic world: a corpus where two objectives conflict.

Sentences are built from templates whose open slots are filled from one of
two topics, *nature* and *city*, or from neutral words. The two objectives
are programmatic rewards on generated text:

- objective 1, ``nature``: the fraction of words that are nature words;
- objective 2, ``city``: the fraction of words that are city words.

A sentence is mostly about one topic, so more of one means less of the other:
a decoder can only trade them off, which the demo's weights control.
"""

from __future__ import annotations

import random
import re
from typing import Callable, Sequence

__all__ = ["NATURE", "CITY", "PROMPTS", "OBJECTIVES", "corpus", "topic_sentences", "neutral_prompts", "nature_rate", "city_rate"]

NATURE: tuple[str, ...] = (
    "forest", "river", "tree", "trees", "bird", "birds", "flower", "flowers", "mountain", "rain", "leaf",
    "leaves", "meadow", "moss", "fox", "deer", "lake", "stone", "wind", "grass", "valley", "owl", "fern",
    "creek", "pine", "snow", "hill", "sunrise", "wolf", "bee", "bees", "garden", "field", "oak", "clouds",
)
CITY: tuple[str, ...] = (
    "street", "train", "office", "tower", "car", "cars", "market", "bridge", "shop", "shops", "taxi", "crowd",
    "subway", "bus", "station", "traffic", "building", "buildings", "elevator", "cafe", "mall", "highway",
    "parking", "apartment", "neon", "sidewalk", "billboard", "downtown", "metro", "tram", "factory", "plaza",
    "lobby", "avenue", "rooftop",
)
_NEUTRAL_NOUNS = ("day", "morning", "friend", "sister", "teacher", "time", "moment", "week", "story", "idea")
_ADJ = {
    "nature": ("green", "wild", "quiet", "old", "tall", "wet", "misty", "golden", "fresh", "calm"),
    "city": ("busy", "loud", "bright", "new", "crowded", "grey", "modern", "noisy", "fast", "huge"),
}
_VERB = {
    "nature": ("grew", "bloomed", "sang", "flowed", "rustled", "swayed", "shone", "rested", "drifted", "hid"),
    "city": ("honked", "buzzed", "opened", "closed", "rushed", "glowed", "moved", "stopped", "filled", "waited"),
}
_SUBJECTS = ("we", "she", "he", "they", "i", "my friend", "my sister", "the teacher", "our group", "the child")
_MOTION = ("walked to", "looked at", "visited", "found", "saw", "passed", "reached", "painted", "watched", "left")
_OPENERS = (
    "in the morning", "after lunch", "on sunday", "yesterday", "at dawn", "later that day", "last week",
    "every evening", "one day", "this time",
)
_CONNECT = ("and then", "while", "because", "so", "where", "and")

#: Neutral prompts: nothing in them favours either topic.
PROMPTS: tuple[str, ...] = (
    "in the morning we walked to the",
    "after lunch she looked at the",
    "yesterday my friend found a",
    "on sunday they visited the",
    "one day i saw the",
    "later that day the teacher watched the",
    "every evening our group passed the",
    "last week my sister painted a",
)

_WORD = re.compile(r"[a-z]+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _rate(text: str, lexicon: frozenset) -> float:
    words = _words(text)
    return sum(w in lexicon for w in words) / len(words) if words else 0.0


_NATURE_SET = frozenset(NATURE)
_CITY_SET = frozenset(CITY)


def nature_rate(text: str) -> float:
    """Objective 1: fraction of the words of ``text`` that are nature words."""
    return _rate(text, _NATURE_SET)


def city_rate(text: str) -> float:
    """Objective 2: fraction of the words of ``text`` that are city words."""
    return _rate(text, _CITY_SET)


#: (name, reward function) of the demo's two objectives, in weight order.
OBJECTIVES: tuple[tuple[str, Callable[[str], float]], ...] = (("nature", nature_rate), ("city", city_rate))


def neutral_prompts(n: int, seed: int) -> list[str]:
    """``n`` neutral prompts in the style of :data:`PROMPTS` (opener, subject, motion, "the" / "a")."""
    rng = random.Random(f"prompts:{seed}")
    return [" ".join((rng.choice(_OPENERS), rng.choice(_SUBJECTS), rng.choice(_MOTION),
                      "the" if rng.random() < 0.7 else "a")) for _ in range(n)]


def _sentence(rng: random.Random, topic: str) -> str:
    """One sentence; ``topic`` is "nature", "city" or "mixed"."""
    if topic == "mixed":
        first, second = rng.sample(("nature", "city"), 2)
    else:
        first = second = topic
    lex = {"nature": NATURE, "city": CITY}
    parts = [
        rng.choice(_OPENERS),
        rng.choice(_SUBJECTS),
        rng.choice(_MOTION),
        "the" if rng.random() < 0.7 else "a",
        rng.choice(_ADJ[first]),
        rng.choice(lex[first]),
    ]
    if rng.random() < 0.8:
        parts += [
            rng.choice(_CONNECT),
            "the",
            rng.choice(lex[second]),
            rng.choice(_VERB[second]),
        ]
        if rng.random() < 0.5:
            parts += ["near the", rng.choice(lex[second])]
    elif rng.random() < 0.5:
        parts += ["with a", rng.choice(_NEUTRAL_NOUNS)]
    return " ".join(parts) + "."


def topic_sentences(topic: str, n: int, seed: int) -> list[str]:
    """``n`` sentences about ``topic`` ("nature", "city" or "mixed")."""
    rng = random.Random(f"{topic}:{seed}")
    return [_sentence(rng, topic) for _ in range(n)]


def corpus(n: int = 3000, seed: int = 0, mix: Sequence[float] = (0.45, 0.45, 0.10)) -> list[str]:
    """The balanced corpus: nature, city and mixed sentences in proportions ``mix``."""
    rng = random.Random(seed)
    topics = rng.choices(("nature", "city", "mixed"), weights=list(mix), k=n)
    return [_sentence(rng, t) for t in topics]
