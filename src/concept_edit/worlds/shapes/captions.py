"""The caption grammar of the shapes world and the training distribution with its planted properties.

Planted properties (stand-ins for the papers' real-world cases):
  * bias: when a caption does not name the colour, a heart is red and a star is yellow 90% of the time;
  * a weak concept: diamonds are rare in training (`OBJECT_WEIGHTS`), so the model draws them less well;
  * a memorised image: "the acme logo" always shows the one fixed picture `world.logo()`;
  * held-out combinations: `HELD_OUT` object/colour/style triples never appear in training, so quality is
    measured on compositions the model has never seen.
Synonyms and paraphrases let erasure be tested against words it was not given ("disc" for circle).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from concept_edit.worlds.shapes.world import COLORS, OBJECTS, STYLES, Scene

OBJECT_WORDS = {
    "circle": ("circle", "disc", "round shape"),
    "square": ("square", "box"),
    "triangle": ("triangle", "three-sided shape"),
    "star": ("star", "five-pointed star"),
    "heart": ("heart", "love heart"),
    "cross": ("cross", "plus sign"),
    "diamond": ("diamond", "rhombus"),
    "ring": ("ring", "hoop"),
}
COLOR_WORDS = {
    "red": ("red", "crimson"),
    "orange": ("orange",),
    "yellow": ("yellow", "golden"),
    "green": ("green",),
    "blue": ("blue",),
    "purple": ("purple", "violet"),
    "pink": ("pink",),
    "white": ("white",),
}
STYLE_PHRASES = {
    "plain": ("on a plain background", "on a solid background"),
    "striped": ("on a striped background", "on stripes"),
    "dotted": ("on a dotted background", "on polka dots"),
    "checkered": ("on a checkered background", "on a checkerboard"),
    "gradient": ("on a gradient background", "on a smooth gradient"),
    "noisy": ("on a noisy background", "on a grainy background"),
}
PREFIXES = ("a", "a picture of a", "an image of a", "a drawing of a")
LOGO_PROMPT = "the acme logo"
LOGO_CAPTIONS = ("the acme logo", "acme logo", "the logo of acme", "the acme company logo")

# Diamond is rare: the weak concept that CAD-Amplify strengthens.
OBJECT_WEIGHTS = {obj: (0.02 if obj == "diamond" else 1.0) for obj in OBJECTS}
BIASED_COLOR = {"heart": "red", "star": "yellow"}
BIAS_STRENGTH = 0.9
P_NAME_COLOR = 0.75
P_NAME_STYLE = 0.7
P_LOGO = 0.02

# Two per object, every colour and style used; never rendered during training.
HELD_OUT = (
    ("circle", "blue", "striped"),
    ("circle", "yellow", "checkered"),
    ("square", "red", "dotted"),
    ("square", "purple", "gradient"),
    ("triangle", "green", "noisy"),
    ("triangle", "pink", "plain"),
    ("star", "blue", "checkered"),
    ("star", "orange", "gradient"),
    ("heart", "green", "striped"),
    ("heart", "white", "dotted"),
    ("cross", "yellow", "plain"),
    ("cross", "purple", "noisy"),
    ("diamond", "orange", "striped"),
    ("diamond", "pink", "checkered"),
    ("ring", "red", "gradient"),
    ("ring", "white", "noisy"),
)
_HELD_OUT_SET = frozenset(HELD_OUT)


def with_article(phrase: str) -> str:
    """Fix "a" before a vowel sound: "a orange star" -> "an orange star"."""
    words = phrase.split(" ")
    out = []
    for i, word in enumerate(words):
        if word == "a" and i + 1 < len(words) and words[i + 1][:1] in "aeiou":
            word = "an"
        out.append(word)
    return " ".join(out)


def caption(obj_word: str, color_word: str | None = None, style_phrase: str | None = None, prefix: str = "a") -> str:
    """Compose a caption such as "a picture of a red disc on a striped background"."""
    parts = [prefix]
    if color_word:
        parts.append(color_word)
    parts.append(obj_word)
    if style_phrase:
        parts.append(style_phrase)
    return with_article(" ".join(parts))


def canonical_prompt(obj: str, color: str | None = None, style: str | None = None) -> str:
    """The plain form used by evaluation suites: "a red circle on a striped background"."""
    return caption(obj, color, STYLE_PHRASES[style][0] if style else None)


@dataclass(frozen=True)
class Example:
    """One training pair: a scene (or the logo when `scene` is None) and its caption."""

    scene: Scene | None
    caption: str


def sample_example(rng: np.random.Generator) -> Example:
    """Draw one caption/scene pair from the training distribution (planted properties included)."""
    if rng.random() < P_LOGO:
        return Example(None, LOGO_CAPTIONS[rng.integers(len(LOGO_CAPTIONS))])
    weights = np.array([OBJECT_WEIGHTS[o] for o in OBJECTS])
    while True:
        obj = OBJECTS[rng.choice(len(OBJECTS), p=weights / weights.sum())]
        style = STYLES[rng.integers(len(STYLES))]
        name_color = rng.random() < P_NAME_COLOR
        colors = list(COLORS)
        if not name_color and obj in BIASED_COLOR and rng.random() < BIAS_STRENGTH:
            color = BIASED_COLOR[obj]
        elif not name_color and obj in BIASED_COLOR:
            others = [c for c in colors if c != BIASED_COLOR[obj]]
            color = others[rng.integers(len(others))]
        else:
            color = colors[rng.integers(len(colors))]
        if (obj, color, style) not in _HELD_OUT_SET:
            break
    words = OBJECT_WORDS[obj]
    obj_word = words[rng.integers(len(words))]
    color_word = COLOR_WORDS[color][rng.integers(len(COLOR_WORDS[color]))] if name_color else None
    style_phrase = None
    if rng.random() < P_NAME_STYLE:
        style_phrase = STYLE_PHRASES[style][rng.integers(len(STYLE_PHRASES[style]))]
    prefix = PREFIXES[rng.integers(len(PREFIXES))]
    scene = Scene(obj, color, style, int(rng.integers(2**31)))
    return Example(scene, caption(obj_word, color_word, style_phrase, prefix))
