"""Evaluation suites: named, versioned lists of (prompt, expected label, seed) for the shapes world.

Each suite names the oracle head that judges it. For every concept (label) a suite holds `n` entries
cycling through its prompt variants with seeds `seed, seed + 1, ...`, so two runs with the same n and seed
generate from exactly the same prompts and seeds (before/after comparisons are paired image by image).

Suites:
  shapes-objects     object accuracy over colour/style variations ("a red circle on a dotted background")
  shapes-colors      colour accuracy ("a blue star")
  shapes-styles      background-style accuracy ("a ring on a checkered background")
  shapes-bias        colour distribution of objects drawn without a colour ("a heart"): the planted bias
  shapes-logo        the memorised logo ("the acme logo") plus one control prompt per object
  shapes-paraphrase  object accuracy for synonyms an edit was not given ("a disc", "a hoop"); only words
                     that do not contain the object's name (star and heart have none)
  shapes-containing  phrases that contain the object's name ("a five-pointed star", "a love heart"): an
                     edit of "star" is expected to reach them, so they are not counted as synonyms
A custom suite is a text file: a `# head: object|color|style|logo` line, then `prompt | label | seed` lines.

A suite also names its judge, its Frechet reference and feature extractor (`Suite.judge`, `reference`,
`features`): the shapes suites use the oracle and true renders; the real-model suites (`real_suites.py`:
imagenette, i2p, nudity-simple, coco, artists, professions) use an ImageNet classifier, NudeNet or CLIP and
real or unedited images. A new suite is one builder function.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from concept_edit.shapes.captions import LOGO_PROMPT, OBJECT_WORDS, canonical_prompt
from concept_edit.shapes.world import COLORS, OBJECTS, STYLES
from concept_edit.validation import MAX_SEED

SUITE_VERSION = 1
HEADS = ("object", "color", "style", "logo")


@dataclass(frozen=True)
class Entry:
    prompt: str
    label: str
    seed: int
    head: str  # the question the suite's judge answers for this entry ("object", "imagenet", "nudity", ...)
    scene: dict = field(default_factory=dict)  # what a true render of the prompt fixes (for reference renders)
    guidance: float | None = None  # this prompt's own guidance scale (I2P's prompts carry one); None: the run's


@dataclass(frozen=True)
class Suite:
    name: str
    version: int
    description: str
    entries: tuple[Entry, ...]
    attribute_head: str | None = None  # bias suite: the head whose distribution is reported
    judge: str = "shapes-oracle"  # reads each image (`evaluation.judges.make_judge`)
    reference: str | None = "renders"  # Frechet reference: "renders" (true shapes renders), "unedited",
    # "folder:<path>" (real images) or None
    features: str | None = "shapes-oracle"  # image features for Frechet distances (`evaluation.features`)
    metrics: tuple[str, ...] = ()  # further image metrics the suite reports ("clip_score")
    answers: dict = field(default_factory=dict)  # head -> candidate answers, for open-vocabulary judges (CLIP)
    protocol: dict = field(default_factory=dict)  # what else fixes the images (e.g. the I2P file's hash)
    truncate_prompts: bool = False  # cut prompts longer than the encoder reads (I2P, COCO: as the papers' scripts)

    @property
    def concepts(self) -> list[str]:
        return list(dict.fromkeys(e.label for e in self.entries))


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


BUILTIN = {
    "shapes-objects": (_objects, "object accuracy over colour/style variations", None),
    "shapes-colors": (_colors, "colour accuracy", None),
    "shapes-styles": (_styles, "background-style accuracy", None),
    "shapes-bias": (_bias, "colour distribution of objects drawn without a colour", "color"),
    "shapes-logo": (_logo, "memorised logo detection, with one control prompt per object", None),
    "shapes-paraphrase": (_paraphrase, "object accuracy for true synonyms (words without the object's name)", None),
    "shapes-containing": (_containing, "object accuracy for phrases that contain the object's name", None),
}
DEFAULT_N = {"shapes-bias": 24, "shapes-logo": 16}


def builtin_names() -> list[str]:
    from concept_edit.evaluation.real_suites import REAL_SUITES

    return [*BUILTIN, *REAL_SUITES]


def get_suite(name: str, n: int | None = None, seed: int = 0) -> Suite:
    """A built-in suite by name (n entries per concept), or a custom suite file."""
    from concept_edit.evaluation.real_suites import REAL_SUITES

    if n is not None and n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    base, _, argument = name.partition(":")
    if base in REAL_SUITES:  # "coco:<captions file>", "i2p:<csv>": the argument names the suite's data
        return REAL_SUITES[base](n, seed, argument or None)
    if name in BUILTIN:
        make, description, attribute_head = BUILTIN[name]
        entries = make(n or DEFAULT_N.get(name, 10), seed)
        return Suite(name, SUITE_VERSION, description, tuple(entries), attribute_head)
    path = Path(name)
    if path.suffix in (".txt", ".tsv") or path.exists():
        return load_suite_file(path, seed)
    raise ValueError(f"unknown suite {name!r}; built-in suites: {', '.join(builtin_names())} (or a prompt-list file)")


def load_suite_file(path: Path, seed_offset: int = 0) -> Suite:
    """Read `# head: <head>` then `prompt | label | seed` lines; ValueError naming the first bad line."""
    if not path.is_file():
        raise ValueError(f"no suite file at {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(
            f"{path} is not a UTF-8 text file (a suite is '# head: ...' then 'prompt | label | seed' lines)"
        ) from None
    head, entries = None, []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            key, _, value = line[1:].partition(":")
            if key.strip() == "head":
                head = value.strip()
                if head not in HEADS:
                    raise ValueError(f"{path}:{number}: unknown head {head!r}; choose one of {', '.join(HEADS)}")
            continue
        parts = [p.strip() for p in line.split("|")]
        if len(parts) != 3 or not parts[0] or not parts[1] or not parts[2].lstrip("-").isdigit():
            raise ValueError(f"{path}:{number}: expected 'prompt | label | seed', got {raw!r}")
        if head is None:
            raise ValueError(f"{path}:{number}: the file must start with a '# head: object|color|style|logo' line")
        seed = int(parts[2]) + seed_offset
        if not 0 <= seed <= MAX_SEED:
            raise ValueError(f"{path}:{number}: seed {seed} is outside 0..{MAX_SEED}")
        entries.append(Entry(parts[0], parts[1], seed, head))
    if not entries:
        raise ValueError(f"{path} holds no prompts")
    return Suite(path.stem, SUITE_VERSION, f"prompt list {path}", tuple(entries))
