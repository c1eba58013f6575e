"""The demo's synthetic world: a corpus where two (or three) objectives conflict.

Sentences are built from templates whose open slots are filled from one of
two topics, *nature* and *city*, or from neutral words. The two objectives
are programmatic rewards on generated text:

- objective 1, ``nature``: the fraction of words that are nature words;
- objective 2, ``city``: the fraction of words that are city words.

A sentence is mostly about one topic, so more of one means less of the other:
a decoder can only trade them off, which the demo's weights control.

The three-objective variant (:func:`objectives` ``(3)``, ``topics=TOPICS_3``)
adds a third topic, *ocean*, and objective 3, ``ocean``: the fraction of
words that are ocean words. The two-topic defaults are untouched, so the
two-objective corpus, topic sentences and prompts are the same texts as
before the variant existed (and the cached two-objective models stay valid).
"""

from __future__ import annotations

import random
import re
from typing import Callable, Optional, Sequence

__all__ = ["NATURE", "CITY", "OCEAN", "PROMPTS", "OBJECTIVES", "OBJECTIVES_3", "TOPICS", "TOPICS_3", "objectives",
           "corpus", "topic_sentences", "neutral_prompts", "nature_rate", "city_rate", "ocean_rate"]

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
#: The third topic (three-objective variant only); no word is shared with NATURE, CITY or the templates.
OCEAN: tuple[str, ...] = (
    "sea", "wave", "waves", "boat", "boats", "shell", "shells", "sand", "harbor", "whale", "tide", "beach",
    "coral", "reef", "island", "sailor", "ship", "ships", "anchor", "gull", "gulls", "dolphin", "crab",
    "lighthouse", "surf", "pier", "dock", "fish", "shore", "coast", "bay", "lagoon", "octopus", "seaweed",
    "jellyfish",
)
#: The topics of the two- and three-objective corpora, in objective order.
TOPICS: tuple[str, ...] = ("nature", "city")
TOPICS_3: tuple[str, ...] = ("nature", "city", "ocean")
_LEXICON = {"nature": NATURE, "city": CITY, "ocean": OCEAN}
_NEUTRAL_NOUNS = ("day", "morning", "friend", "sister", "teacher", "time", "moment", "week", "story", "idea")
_ADJ = {
    "nature": ("green", "wild", "quiet", "old", "tall", "wet", "misty", "golden", "fresh", "calm"),
    "city": ("busy", "loud", "bright", "new", "crowded", "grey", "modern", "noisy", "fast", "huge"),
    "ocean": ("blue", "salty", "deep", "sandy", "sunny", "windy", "warm", "shiny", "foamy", "stormy"),
}
_VERB = {
    "nature": ("grew", "bloomed", "sang", "flowed", "rustled", "swayed", "shone", "rested", "drifted", "hid"),
    "city": ("honked", "buzzed", "opened", "closed", "rushed", "glowed", "moved", "stopped", "filled", "waited"),
    "ocean": ("splashed", "sailed", "floated", "crashed", "sparkled", "dived", "washed", "rolled", "swam", "roared"),
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
_OCEAN_SET = frozenset(OCEAN)


def nature_rate(text: str) -> float:
    """Objective 1: fraction of the words of ``text`` that are nature words."""
    return _rate(text, _NATURE_SET)


def city_rate(text: str) -> float:
    """Objective 2: fraction of the words of ``text`` that are city words."""
    return _rate(text, _CITY_SET)


def ocean_rate(text: str) -> float:
    """Objective 3 (three-objective variant): fraction of the words of ``text`` that are ocean words."""
    return _rate(text, _OCEAN_SET)


#: (name, reward function) of the demo's two objectives, in weight order.
OBJECTIVES: tuple[tuple[str, Callable[[str], float]], ...] = (("nature", nature_rate), ("city", city_rate))
#: The three-objective variant: OBJECTIVES, then ocean.
OBJECTIVES_3: tuple[tuple[str, Callable[[str], float]], ...] = OBJECTIVES + (("ocean", ocean_rate),)


def objectives(n: int = 2) -> tuple[tuple[str, Callable[[str], float]], ...]:
    """(name, reward function) of the demo's ``n`` objectives (2 or 3), in weight order."""
    if n == 2:
        return OBJECTIVES
    if n == 3:
        return OBJECTIVES_3
    raise ValueError(f"the demo has 2 or 3 objectives, got {n!r}")


def neutral_prompts(n: int, seed: int) -> list[str]:
    """``n`` neutral prompts in the style of :data:`PROMPTS` (opener, subject, motion, "the" / "a")."""
    rng = random.Random(f"prompts:{seed}")
    return [" ".join((rng.choice(_OPENERS), rng.choice(_SUBJECTS), rng.choice(_MOTION),
                      "the" if rng.random() < 0.7 else "a")) for _ in range(n)]


def _sentence(rng: random.Random, topic: str, topics: Sequence[str] = TOPICS) -> str:
    """One sentence; ``topic`` is one of ``topics`` or "mixed" (two distinct ``topics``, in random order)."""
    if topic == "mixed":
        first, second = rng.sample(tuple(topics), 2)
    else:
        first = second = topic
    parts = [
        rng.choice(_OPENERS),
        rng.choice(_SUBJECTS),
        rng.choice(_MOTION),
        "the" if rng.random() < 0.7 else "a",
        rng.choice(_ADJ[first]),
        rng.choice(_LEXICON[first]),
    ]
    if rng.random() < 0.8:
        parts += [
            rng.choice(_CONNECT),
            "the",
            rng.choice(_LEXICON[second]),
            rng.choice(_VERB[second]),
        ]
        if rng.random() < 0.5:
            parts += ["near the", rng.choice(_LEXICON[second])]
    elif rng.random() < 0.5:
        parts += ["with a", rng.choice(_NEUTRAL_NOUNS)]
    return " ".join(parts) + "."


def topic_sentences(topic: str, n: int, seed: int, topics: Sequence[str] = TOPICS) -> list[str]:
    """``n`` sentences about ``topic`` (one of ``topics``, or "mixed": two of ``topics`` per sentence)."""
    rng = random.Random(f"{topic}:{seed}")
    return [_sentence(rng, topic, topics) for _ in range(n)]


def corpus(n: int = 3000, seed: int = 0, mix: Optional[Sequence[float]] = None,
           topics: Sequence[str] = TOPICS) -> list[str]:
    """The balanced corpus: sentences about each of ``topics`` and "mixed" ones, in proportions ``mix``.

    ``mix`` has ``len(topics) + 1`` weights (the topics', then mixed); by default 0.9 split evenly over
    the topics and 0.1 mixed, i.e. ``(0.45, 0.45, 0.10)`` for two topics and ``(0.3, 0.3, 0.3, 0.1)``
    for :data:`TOPICS_3`.
    """
    unknown = sorted(set(topics) - set(_LEXICON))
    if len(topics) < 2 or unknown:
        raise ValueError(f"topics must be two or more of {sorted(_LEXICON)}, got {list(topics)}")
    weights = list(mix) if mix is not None else [0.9 / len(topics)] * len(topics) + [0.1]
    if len(weights) != len(topics) + 1:
        raise ValueError(f"mix needs {len(topics) + 1} weights (one per topic, then mixed), got {len(weights)}")
    rng = random.Random(seed)
    chosen = rng.choices((*topics, "mixed"), weights=weights, k=n)
    return [_sentence(rng, t, topics) for t in chosen]
