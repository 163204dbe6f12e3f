"""A concept's words, as the attacks and worlds compare them: content words and conservative stems."""

from __future__ import annotations

import re

STOPWORDS = frozenset({"a", "an", "the", "of", "on", "in", "with", "and", "to"})


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def stem(word: str) -> str:
    """A conservative stem: 'circle' -> 'circ' (circles, circular, encircle... share it), 'striped' -> 'strip'."""
    return word[: max(3, len(word) - 2)] if len(word) > 4 else word


def concept_words(concept: str) -> list[str]:
    """The concept's content words ('the acme logo' -> ['acme', 'logo'])."""
    content = [w for w in words(concept) if w not in STOPWORDS]
    return content or words(concept)
