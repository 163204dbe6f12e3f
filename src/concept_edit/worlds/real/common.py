"""Shared pieces of the real-model suites: the shipped data files, seeds, argument checks and the protocol."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from concept_edit.validation import MAX_SEED, check_seed

DATA = Path(__file__).resolve().parent / "data"
SUITE_VERSION = 1

# What fixes the images besides the prompts, as the papers state it (the suite's defaults; a run may differ
# and records what it used). UCE's eval-scripts/generate-images.py: LMS scheduler, 100 steps, guidance 7.5,
# 512 px (CAD "follows the settings in prior studies" with seed 0). SA Appendix B: 50 DDIM steps, guidance 7.5.
UCE_DEFAULTS = {"steps": 100, "guidance": 7.5, "resolution": 512, "scheduler": "lms", "defaults_from": "UCE code"}
SA_DEFAULTS = {"steps": 50, "guidance": 7.5, "resolution": 512, "scheduler": "ddim", "defaults_from": "SA App. B"}


def no_argument(name: str, argument: str | None) -> None:
    if argument:
        raise ValueError(f"the {name} suite takes no argument, got {name}:{argument}")


def first_seeds(seed: int, count: int) -> range:
    """seed, seed + 1, ..., all inside the seed range (so every image has its own fixed seed)."""
    check_seed(seed)
    if seed + count - 1 > MAX_SEED:
        raise ValueError(f"seed {seed} + {count} images runs past the largest seed {MAX_SEED}")
    return range(seed, seed + count)


def data_rows(filename: str, fields: int) -> list[list[str]]:
    """The `a | b | ...` rows of a shipped data file ('#' comments and blank lines skipped)."""
    rows = []
    path = DATA / filename
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split("|")]
        if len(parts) != fields or not all(parts):
            raise ValueError(f"{path}:{number}: expected {fields} '|'-separated fields, got {raw!r}")
        rows.append(parts)
    return rows


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def entries_sha256(entries) -> str:
    """One hash of every (prompt, label, seed, guidance): equal hashes, equal images for one model."""
    text = json.dumps([[e.prompt, e.label, e.seed, e.guidance] for e in entries], ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def protocol(entries, defaults: dict, **extra) -> dict:
    return {**defaults, **extra, "entries_sha256": entries_sha256(entries)}


def read_text(path: Path, what: str) -> str:
    """A user's data file as text; ValueError naming the file (and the line of a non-UTF-8 byte)."""
    if not path.is_file():
        raise ValueError(f"cannot find {what} at {path}")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (expected {what})") from None


def csv_seed(path: Path, line: int, text: str) -> int:
    """A CSV cell as a seed in 0..MAX_SEED; ValueError naming the file and line."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value.is_integer() and 0 <= value <= MAX_SEED):
        raise ValueError(f"{path}:{line}: seed {text!r} is not an integer in 0..{MAX_SEED}")
    return int(value)
