"""Evaluation suites: named, versioned lists of (prompt, expected label, seed), each naming its judge.

Every world registers its own suites (`World.suites()`: the shapes world's `shapes-objects`, ...; the real-model
world's imagenette, i2p, nudity-simple, coco, artists, professions); `get_suite(name)` finds one by name across
the worlds, or reads a custom suite file: a `# head: <question>` line (`object`, `color`, `style`, `logo` for the
shapes oracle), then `prompt | label | seed` lines, judged by the judge of the model it is run on.

A suite also names its judge, its Frechet reference and feature extractor (`Suite.judge`, `reference`,
`features`); None means the world's own (`World.judge`, `World.features`). A new suite is one builder function
in a world.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from concept_edit.validation import MAX_SEED

SUITE_VERSION = 1


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
    judge: str | None = None  # reads each image (`evaluation.judges.make_judge`); None: the model's world's judge
    reference: str | None = "renders"  # Frechet reference: "renders" (the world's true renders), "unedited",
    # "folder:<path>" (real images) or None
    features: str | None = None  # image features for Frechet distances (`evaluation.features`); None: the world's
    metrics: tuple[str, ...] = ()  # further image metrics the suite reports ("clip_score")
    answers: dict = field(default_factory=dict)  # head -> candidate answers, for open-vocabulary judges (CLIP)
    protocol: dict = field(default_factory=dict)  # what else fixes the images (e.g. the I2P file's hash)
    truncate_prompts: bool = False  # cut prompts longer than the encoder reads (I2P, COCO: as the papers' scripts)

    @property
    def concepts(self) -> list[str]:
        return list(dict.fromkeys(e.label for e in self.entries))


def builtin_names() -> list[str]:
    from concept_edit.worlds import all_suites

    return list(all_suites())


def get_suite(name: str, n: int | None = None, seed: int = 0) -> Suite:
    """A built-in suite by name (n entries per concept), or a custom suite file."""
    from concept_edit.worlds import all_suites

    if n is not None and n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    base, _, argument = name.partition(":")
    suites = all_suites()
    if base in suites:  # "coco:<captions file>", "i2p:<csv>": the argument names the suite's data
        return suites[base](n, seed, argument or None)
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
                known = file_heads()
                if head not in known:
                    raise ValueError(f"{path}:{number}: unknown head {head!r}; choose one of {', '.join(known)}")
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


def file_heads() -> list[str]:
    """The questions a custom suite file may ask: every world judge's heads."""
    from concept_edit.worlds import worlds

    return list(dict.fromkeys(h for w in worlds().values() for h in w.heads))
