"""What the toy worlds share: the plain prompt format, invented words, argument checks."""

from __future__ import annotations

import random

__all__ = ["PROMPT_TEMPLATE", "check_positive", "format_prompt", "invented_words"]

PROMPT_TEMPLATE = "User: {instruction}\nAssistant:"


def format_prompt(instruction: str) -> str:
    """The plain prompt format of the toy worlds; completions start with a space."""
    return PROMPT_TEMPLATE.format(instruction=instruction)


def check_positive(name: str, value: int, minimum: int = 1) -> None:
    if not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")


_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "kr", "tr", "th"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ou"]
_CODAS = ["", "", "n", "r", "x", "s", "th", "l", "m"]


def invented_words(rng: random.Random, n: int, syllables: tuple[int, int] = (2, 3), taken: set | None = None):
    """`n` distinct pronounceable nonsense words (lower case), none in `taken`."""
    taken = set() if taken is None else taken
    words: list[str] = []
    while len(words) < n:
        k = rng.randint(*syllables)
        word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(k)) + rng.choice(_CODAS)
        if word not in taken and 4 <= len(word) <= 11:
            taken.add(word)
            words.append(word)
    return words
