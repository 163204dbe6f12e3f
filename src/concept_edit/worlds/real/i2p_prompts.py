"""The I2P suite: the Inappropriate Image Prompts benchmark (Schramowski et al., SLD) read by NudeNet.

The CSV is not shipped (4703 prompts, 1.3 MB, user-written prompts): `i2p:<path>` reads a local copy, and
`i2p` alone fetches `i2p_benchmark.csv` from the Hugging Face dataset AIML-TUDA/i2p at a pinned revision into
the hub cache. Columns (dataset card): prompt, categories, hard, inappropriate_percentage, nudity_percentage,
q16_percentage, sd_safety_percentage, prompt_toxicity, lexica_url, sd_seed, sd_guidance_scale,
sd_image_width, sd_image_height, sd_model. ESD/UCE's copy (unsafe-prompts4703.csv) adds evaluation_seed and
evaluation_guidance; sd_* is used when present.

Default: all prompts, in file order, one image each at the prompt's own seed, as UCE (Sec. 5.3, "4703
images ... I2P"), SA (Appendix B, "one image per prompt with the provided random seeds") and CAD (Table 2,
4702 prompts: the one empty prompt of the early file skipped) do, at guidance 7.5 for every prompt: SA
Appendix B ("guidance scale of 7.5 for all image generation with SD") and UCE's generate-images.py (one fixed
guidance scale; it never reads the CSV's) do not use the CSV's per-prompt guidance. `i2p:own-guidance` draws
each prompt at the CSV's own guidance instead (as the I2P/SLD paper generated them). `i2p:sexual` keeps the
prompts of I2P's "sexual" category (the one that holds nudity). `n` keeps the first n prompts in file order.
Prompts longer than the text encoder reads are cut, as the papers' scripts cut them (`truncate_prompts`).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from concept_edit.evaluation.suites import Entry, Suite
from concept_edit.validation import MAX_SEED, check_seed
from concept_edit.worlds.real.common import SA_DEFAULTS, SUITE_VERSION, csv_seed, file_sha256, protocol, read_text

HUB_REPO = "AIML-TUDA/i2p"
HUB_FILE = "i2p_benchmark.csv"
HUB_REVISION = "6594f223b0544fcbf63a6889417a6b9d2e40a77c"  # "Fix empty prompt text": 4703 prompts
DOWNLOAD_COMMAND = f"hf download {HUB_REPO} {HUB_FILE} --repo-type dataset --revision {HUB_REVISION}"
CATEGORY_FILTERS = ("sexual",)
SEED_COLUMNS = ("sd_seed", "evaluation_seed")
GUIDANCE_COLUMNS = ("sd_guidance_scale", "evaluation_guidance")


def i2p(n: int | None, seed: int, argument: str | None) -> Suite:
    """CAD Table 2, SA Table 3, UCE Figure 7: NudeNet over I2P; label 'nude', so the concept's accuracy is
    the share of images read as nude. Seeds are the file's own plus `seed` (0: exactly the file's)."""
    category, own_guidance, path = _parse(argument)
    source = str(path) if path else f"hf://datasets/{HUB_REPO}@{HUB_REVISION}/{HUB_FILE}"
    path = path or fetch()
    rows, seed_column, guidance_column, skipped = read_i2p_csv(path)
    if category:
        rows = [r for r in rows if category in r["categories"]]
    rows = rows[:n] if n else rows
    if not rows:
        raise ValueError(f"{path} holds no I2P prompts{f' in category {category!r}' if category else ''}")
    check_seed(seed)
    entries = [
        Entry(
            r["prompt"],
            "nude",
            (r["seed"] + seed) % (MAX_SEED + 1),
            "nudity",
            {"line": r["line"], "csv_guidance": r["guidance"]},
            r["guidance"] if own_guidance else None,
        )
        for r in rows
    ]
    name = ":".join(["i2p", *([category] if category else []), *(["own-guidance"] if own_guidance else [])])
    return Suite(
        name,
        SUITE_VERSION,
        "I2P prompts at their own seeds" + (" and guidance" if own_guidance else "") + ", read by NudeNet",
        tuple(entries),
        judge="nudenet",
        reference=None,
        features=None,
        truncate_prompts=True,
        protocol=protocol(
            entries,
            SA_DEFAULTS,
            **({"guidance": None} if own_guidance else {}),  # None: per prompt, Entry.guidance
            source=source,
            file_sha256=file_sha256(path),
            category=category or "all",
            selection=f"first {len(rows)} in file order",
            seed_column=seed_column,
            guidance_column=guidance_column,
            skipped_empty_prompts=skipped,
        ),
    )


def _parse(argument: str | None) -> tuple[str | None, bool, Path | None]:
    """(category, own guidance, path) from '[sexual:][own-guidance:][<path>]', in that order."""
    category, own_guidance, rest = None, False, argument or ""
    head, _, tail = rest.partition(":")
    if head in CATEGORY_FILTERS:
        category, rest = head, tail
        head, _, tail = rest.partition(":")
    if head == "own-guidance":
        own_guidance, rest = True, tail
    return category, own_guidance, Path(rest) if rest else None


def fetch() -> Path:
    """The pinned I2P CSV from the hub cache (downloading it when online); one clear error otherwise."""
    try:
        from huggingface_hub import hf_hub_download

        from concept_edit.hub import cache_only

        return Path(hf_hub_download(HUB_REPO, HUB_FILE, repo_type="dataset", revision=HUB_REVISION, **cache_only()))
    except Exception as err:  # offline, not cached, hub unreachable, package missing: all mean the same to the user
        from concept_edit.hub import offline_note

        raise ValueError(
            f"the I2P prompts ({HUB_REPO}/{HUB_FILE}) are not in the Hugging Face cache and could not be "
            f"fetched ({type(err).__name__}{offline_note()}). Download them once, online, with:\n  {DOWNLOAD_COMMAND}\n"
            f"or give a local copy of the CSV as the suite argument: i2p:<path to {HUB_FILE}>"
        ) from None


def read_i2p_csv(path: Path) -> tuple[list[dict], str, str, int]:
    """Rows {prompt, categories, seed, guidance, line}, the seed and guidance columns used, and the number of
    empty prompts skipped. ValueError naming the file and line of anything unreadable."""
    text = read_text(path, "the I2P CSV")
    return _read_rows(path, csv.DictReader(io.StringIO(text, newline="")))


def _read_rows(path: Path, reader: csv.DictReader) -> tuple[list[dict], str, str, int]:
    try:
        header = reader.fieldnames or []
    except csv.Error as err:
        raise ValueError(f"{path}:1: unreadable CSV header ({err})") from None
    seed_column = next((c for c in SEED_COLUMNS if c in header), None)
    guidance_column = next((c for c in GUIDANCE_COLUMNS if c in header), None)
    if "prompt" not in header or seed_column is None or guidance_column is None:
        raise ValueError(
            f"{path}:1: an I2P CSV needs the columns prompt, {' or '.join(SEED_COLUMNS)} and "
            f"{' or '.join(GUIDANCE_COLUMNS)}; the header has {', '.join(header) or 'nothing'}"
        )
    rows, skipped, line = [], 0, reader.line_num + 1
    try:
        for record in reader:
            if None in record or None in record.values():
                raise ValueError(f"{path}:{line}: expected {len(header)} fields, got {_field_count(record)}")
            if not record["prompt"].strip():
                skipped += 1
            else:
                rows.append(
                    {
                        "prompt": record["prompt"].strip(),
                        "categories": [c.strip() for c in (record.get("categories") or "").split(",")],
                        "seed": csv_seed(path, line, record[seed_column]),
                        "guidance": _guidance(path, line, record[guidance_column]),
                        "line": line,
                    }
                )
            line = reader.line_num + 1
    except csv.Error as err:
        raise ValueError(f"{path}:{line}: unreadable CSV ({err})") from None
    return rows, seed_column, guidance_column, skipped


def _field_count(record: dict) -> int:
    return sum(v is not None for k, v in record.items() if k is not None) + len(record.get(None) or [])


def _guidance(path: Path, line: int, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{path}:{line}: guidance scale {text!r} is not a number >= 0")
    return value
