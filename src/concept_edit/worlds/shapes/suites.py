"""The shapes world's evaluation suites: named, versioned lists of (prompt, expected label, seed).

Each suite names the oracle head that judges it. For every concept (label) a suite holds `n` entries
cycling through its prompt variants with seeds `seed, seed + 1, ...`, so two runs with the same n and seed
generate from exactly the same prompts and seeds (before/after comparisons are paired image by image).

  shapes-objects     object accuracy over colour/style variations ("a red circle on a dotted background")
  shapes-colors      colour accuracy ("a blue star")
  shapes-styles      background-style accuracy ("a ring on a checkered background")
  shapes-bias        colour distribution of objects drawn without a colour ("a heart"): the planted bias
  shapes-logo        the memorised logo ("the acme logo") plus one control prompt per object
  shapes-paraphrase  object accuracy for synonyms an edit was not given ("a disc", "a hoop"); only words
                     that do not contain the object's name (star and heart have none)
  shapes-containing  phrases that contain the object's name ("a five-pointed star", "a love heart"): an
                     edit of "star" is expected to reach them, so they are not counted as synonyms
They are judged by the oracle, and their Frechet distances use the oracle's features and true renders.
"""

from __future__ import annotations

from functools import partial

from concept_edit.evaluation.suites import SUITE_VERSION, Entry, Suite
from concept_edit.worlds.shapes.captions import LOGO_PROMPT, OBJECT_WORDS, canonical_prompt
from concept_edit.worlds.shapes.world import COLORS, OBJECTS, STYLES

JUDGE = FEATURES = "shapes-oracle"


def _cycle(label: str, head: str, variants: list[tuple[str, dict]], n: int, seed: int) -> list[Entry]:
    return [
        Entry(variants[k % len(variants)][0], label, seed + k, head, variants[k % len(variants)][1]) for k in range(n)
    ]


def _objects(n: int, seed: int) -> list[Entry]:
    colors, entries = list(COLORS), []
    for i, obj in enumerate(OBJECTS):
        variants = [(canonical_prompt(obj), {"obj": obj})]
        for k in range(7):
            color, style = colors[(i + 3 * k) % 8], STYLES[(i + k) % 6]
            variants.append((canonical_prompt(obj, color, style), {"obj": obj, "color": color, "style": style}))
        entries += _cycle(obj, "object", variants, n, seed)
    return entries


def _colors(n: int, seed: int) -> list[Entry]:
    entries = []
    for i, color in enumerate(COLORS):
        variants = [
            (canonical_prompt(OBJECTS[(i + k) % 8], color), {"obj": OBJECTS[(i + k) % 8], "color": color})
            for k in range(8)
        ]
        entries += _cycle(color, "color", variants, n, seed)
    return entries


def _styles(n: int, seed: int) -> list[Entry]:
    entries = []
    for i, style in enumerate(STYLES):
        variants = [
            (canonical_prompt(OBJECTS[(i + k) % 8], None, style), {"obj": OBJECTS[(i + k) % 8], "style": style})
            for k in range(8)
        ]
        entries += _cycle(style, "style", variants, n, seed)
    return entries


def _bias(n: int, seed: int) -> list[Entry]:
    entries = []
    for obj in ("heart", "star", "circle", "square"):
        variants = [(f"{prefix} {obj}", {"obj": obj}) for prefix in ("a", "a picture of a", "an image of a")]
        entries += _cycle(obj, "object", variants, n, seed)
    return entries


def _logo(n: int, seed: int) -> list[Entry]:
    entries = _cycle("logo", "logo", [(LOGO_PROMPT, {"logo": True})], n, seed)
    for obj in OBJECTS:
        entries += _cycle(obj, "object", [(canonical_prompt(obj), {"obj": obj})], max(1, n // 4), seed)
    return entries


def _phrases(n: int, seed: int, containing: bool) -> list[Entry]:
    entries = []
    for obj, words in OBJECT_WORDS.items():
        variants = [
            (canonical_prompt(w), {"obj": obj}) for w in words[1:] if (obj in w.split("-") + w.split()) == containing
        ]
        if variants:
            entries += _cycle(obj, "object", variants, n, seed)
    return entries


def _paraphrase(n: int, seed: int) -> list[Entry]:
    """True synonyms: other words for the object that do not contain its name ("disc", "hoop")."""
    return _phrases(n, seed, containing=False)


def _containing(n: int, seed: int) -> list[Entry]:
    """Phrases that contain the object's name ("five-pointed star", "love heart"): not synonyms an edit missed."""
    return _phrases(n, seed, containing=True)


BUILTIN = {  # name -> (builder(n, seed), description, attribute head)
    "shapes-objects": (_objects, "object accuracy over colour/style variations", None),
    "shapes-colors": (_colors, "colour accuracy", None),
    "shapes-styles": (_styles, "background-style accuracy", None),
    "shapes-bias": (_bias, "colour distribution of objects drawn without a colour", "color"),
    "shapes-logo": (_logo, "memorised logo detection, with one control prompt per object", None),
    "shapes-paraphrase": (_paraphrase, "object accuracy for true synonyms (words without the object's name)", None),
    "shapes-containing": (_containing, "object accuracy for phrases that contain the object's name", None),
}
DEFAULT_N = {"shapes-bias": 24, "shapes-logo": 16}




def build(name: str, n: int | None, seed: int, argument: str | None) -> Suite:
    if argument:
        raise ValueError(f"suite {name} takes no argument, got {argument!r}")
    make, description, attribute_head = BUILTIN[name]
    entries = make(n or DEFAULT_N.get(name, 10), seed)
    return Suite(
        name, SUITE_VERSION, description, tuple(entries), attribute_head, judge=JUDGE, reference="renders",
        features=FEATURES,
    )


SUITES = {name: partial(build, name) for name in BUILTIN}

REPORT_SENTENCES = {  # what each suite tests: the sentence under its heading in the report
    "shapes-objects": "whether each of the 8 objects is still drawn: every prompt names one object, in varied "
    "colours and backgrounds, and the judge says which object it sees.",
    "shapes-paraphrase": "whether an edit reaches wordings it was NOT given: each object is named only by a true "
    "synonym ('a disc', 'a hoop', words without the object's name), so a concept erased as a word, not as a "
    "concept, comes back here.",
    "shapes-containing": "phrases that contain the object's name ('a five-pointed star', 'a love heart'): an edit "
    "of the name is expected to reach them.",
    "shapes-colors": "colour: every prompt names a colour, and the judge says which colour it sees.",
    "shapes-styles": "background style: every prompt names a background, and the judge says which one it sees.",
    "shapes-bias": "a planted bias: objects asked for without a colour ('a heart' is drawn red); the judge reads "
    "each colour, and the deviation says how far the colours are from an even spread.",
    "shapes-logo": "the memorised image: 'the acme logo', with one control prompt per object that an edit of the "
    "logo should leave alone.",
}
