"""What the shapes world says about a concept: which oracle head reads it, the prompts that name it, its other
words, the wordings that avoid it, (with, without) caption pairs, and replay captions that leave it out.

All of it comes from the world's caption grammar (`captions.py`), which ShapesSD was trained on.
"""

from __future__ import annotations

import numpy as np

from concept_edit.words import STOPWORDS, concept_words, words
from concept_edit.worlds.shapes.captions import (
    COLOR_WORDS,
    LOGO_CAPTIONS,
    LOGO_PROMPT,
    OBJECT_WORDS,
    PREFIXES,
    STYLE_PHRASES,
    caption,
    sample_example,
    with_article,
)
from concept_edit.worlds.shapes.world import COLORS, HEADS, OBJECTS, STYLES


def oracle_head(concept: str) -> tuple[str, str]:
    """(oracle head, label) that reads `concept` on ShapesSD; ValueError naming what the oracle knows."""
    name = concept.strip().lower()
    if name in LOGO_CAPTIONS or name in ("logo", "the logo"):
        return "logo", "logo"
    for head, labels in HEADS.items():
        if name in labels and name != "none":
            return head, name
    known = "; ".join(f"{head}: {', '.join(labels)}" for head, labels in HEADS.items())
    raise ValueError(
        f"the shapes oracle cannot judge concept {concept!r}: name an object, colour or style it reads ({known}), "
        "or 'the acme logo'"
    )


def concept_prompts(concept: str) -> list[str]:
    """ShapesSD prompts that name the concept, as the evaluation suites word them (the attacks' starting points)."""
    from concept_edit.worlds.shapes.suites import BUILTIN

    head, label = oracle_head(concept)
    if head == "logo":
        return [LOGO_PROMPT]
    make = BUILTIN[{"object": "shapes-objects", "color": "shapes-colors", "style": "shapes-styles"}[head]][0]
    return list(dict.fromkeys(e.prompt for e in make(8, 0) if e.label == label))


def synonyms(concept: str) -> list[str]:
    """ShapesSD's other words for the concept ('disc', 'round shape' for circle), else []."""
    try:
        head, label = oracle_head(concept)
    except ValueError:
        return []
    if head == "object":
        phrases = OBJECT_WORDS.get(label, ())
    elif head == "color":
        phrases = COLOR_WORDS.get(label, ())
    elif head == "style":  # the style's distinctive words: "stripes", "polka dots", "checkerboard"
        generic = {"background", "plain", "solid"} - set(words(label))
        phrases = tuple(" ".join(w for w in words(p) if w not in STOPWORDS | generic) for p in STYLE_PHRASES[label])
    else:
        phrases = LOGO_CAPTIONS
    own = set(concept_words(concept))
    return [p for p in dict.fromkeys(phrases) if p and set(concept_words(p)) != own]


def paraphrases(concept: str) -> list[str]:
    """Wordings of a ShapesSD concept that do not use its own name as the evaluation suites word it."""
    head, label = oracle_head(concept)
    if head == "object":
        out = [caption(word, prefix=prefix) for word in OBJECT_WORDS[label][1:] for prefix in PREFIXES]
    elif head == "color":
        out = [caption(obj, word) for word in COLOR_WORDS[label][1:] for obj in OBJECTS]
    elif head == "style":
        out = [caption(obj, None, phrase) for phrase in STYLE_PHRASES[label][1:] for obj in OBJECTS]
    else:
        out = [c for c in LOGO_CAPTIONS if c != LOGO_PROMPT]
    if not out:
        raise ValueError(
            f"ShapesSD's captions have no other wording for {concept!r}; give your own with --prompts FILE"
        )
    return out


def concept_pairs(concept: str) -> list[tuple[str, str]]:
    """(with, without) caption pairs of a ShapesSD concept that differ only by the concept's words."""
    head, label = oracle_head(concept)

    def joined(*parts) -> str:
        return with_article(" ".join(p for p in parts if p))

    pairs = []
    if head == "object":
        for color in COLORS:
            for style in (None, *STYLES):
                phrase = STYLE_PHRASES[style][0] if style else None
                pairs.append((joined("a", color, label, phrase), joined("a", color, phrase)))
    elif head == "color":
        for obj in OBJECTS:
            for style in (None, *STYLES):
                phrase = STYLE_PHRASES[style][0] if style else None
                pairs.append((joined("a", label, obj, phrase), joined("a", obj, phrase)))
    elif head == "style":
        for obj in OBJECTS:
            for color in (None, *COLORS):
                pairs.append((joined("a", color, obj, STYLE_PHRASES[label][0]), joined("a", color, obj)))
    else:
        pairs = [(text, "") for text in LOGO_CAPTIONS]
    return pairs


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def replay_prompts(concepts: tuple[str, ...], n: int, seed: int) -> list[str]:
    """Captions of ShapesSD's training distribution that do not name a forgotten concept (or its synonyms)."""
    banned = {_norm(c) for c in concepts}
    for c in list(banned):
        banned.update(_norm(w) for w in OBJECT_WORDS.get(c, ()))
    rng = np.random.default_rng([seed, 4004])
    out: list[str] = []
    while len(out) < n:
        example = sample_example(rng)
        scene = example.scene
        fields = {scene.obj, scene.color, scene.style} if scene is not None else set()
        text = f" {_norm(example.caption)} "
        if not (fields & banned) and not any(f" {b} " in text for b in banned):
            out.append(example.caption)
    return out
