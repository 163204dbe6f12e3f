"""The COCO captions suite (UCE Table 4 layout): CLIP score, FID and LPIPS to the unedited model.

`coco:<path>` reads the user's captions (COCO's caption licence and the 30k-caption size keep them out of the
package; no hub copy is part of the papers' protocol):
  * a text file, one caption per line (blank lines skipped), seeds `seed, seed + 1, ...`;
  * a COCO annotations JSON (captions_val2014.json format): the first caption of each image in file order,
    one image per COCO image as COCO-30k does, seeds `seed, seed + 1, ...`;
  * a CSV with a `prompt` column, e.g. ESD/UCE's data/coco_30k.csv (UCE Table 4's prompts): its
    `evaluation_seed` column, plus `seed`, when present.
`n` keeps the first n captions in file order.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from concept_edit.evaluation.suites import Entry, Suite
from concept_edit.validation import MAX_SEED, check_seed
from concept_edit.worlds.real.common import (
    SUITE_VERSION,
    UCE_DEFAULTS,
    file_sha256,
    first_seeds,
    protocol,
    read_text,
)

LABEL = "coco"  # one concept: the image change and CLIP score are reported over all captions


def coco(n: int | None, seed: int, argument: str | None) -> Suite:
    """UCE Table 4 (and the COCO columns of CAD Table 2, UCE Table 1): metric-only, no judge."""
    if not argument:
        raise ValueError(
            "the coco suite needs a caption file: coco:<path> with one caption per line, a COCO annotations "
            "JSON (annotations/captions_val2014.json from cocodataset.org) or a CSV with a 'prompt' column "
            "(ESD/UCE's data/coco_30k.csv)"
        )
    path = Path(argument)
    captions, file_format = read_captions(path)
    captions = captions[:n] if n else captions
    check_seed(seed)
    default_seeds = first_seeds(seed, len(captions))
    entries = [
        Entry(text, LABEL, default if own is None else (own + seed) % (MAX_SEED + 1), "", scene)
        for (text, own, scene), default in zip(captions, default_seeds, strict=True)
    ]
    return Suite(
        "coco",
        SUITE_VERSION,
        f"{len(entries)} COCO captions: CLIP score, FID and LPIPS to the unedited model",
        tuple(entries),
        judge="none",
        reference="unedited",
        features="inception",
        metrics=("clip_score",),
        truncate_prompts=True,
        protocol=protocol(
            entries,
            UCE_DEFAULTS,
            source=str(path),
            file_sha256=file_sha256(path),
            format=file_format,
            selection=f"first {len(entries)} in file order",
        ),
    )


def read_captions(path: Path) -> tuple[list[tuple[str, int | None, dict]], str]:
    """(caption, its own seed or None, scene) per caption, and the file's format."""
    text = read_text(path, "a caption file")
    if path.suffix.lower() == ".json":
        captions, file_format = _from_json(path, text), "coco-json"
    elif path.suffix.lower() == ".csv":
        captions, file_format = _from_csv(path, text), "csv"
    else:
        captions = [(line.strip(), None, {"line": i}) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
        file_format = "text"
    if not captions:
        raise ValueError(f"{path} holds no captions")
    return captions, file_format


def _from_json(path: Path, text: str) -> list[tuple[str, None, dict]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    annotations = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(annotations, list):
        raise ValueError(f"{path}: expected a COCO annotations object with an 'annotations' list")
    captions, seen = [], set()
    for i, item in enumerate(annotations):
        if not (isinstance(item, dict) and isinstance(item.get("caption"), str) and "image_id" in item):
            raise ValueError(f"{path}: annotation {i} has no 'image_id' and 'caption' (COCO captions format)")
        if item["image_id"] not in seen and item["caption"].strip():
            seen.add(item["image_id"])
            captions.append((item["caption"].strip(), None, {"image_id": item["image_id"]}))
    return captions


def _from_csv(path: Path, text: str) -> list[tuple[str, int | None, dict]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = reader.fieldnames or []
        if "prompt" not in header:
            raise ValueError(f"{path}:1: a caption CSV needs a 'prompt' column; the header has {', '.join(header)}")
        captions, line = [], reader.line_num + 1
        for record in reader:
            if None in record or None in record.values():
                raise ValueError(f"{path}:{line}: expected {len(header)} fields")
            own = record.get("evaluation_seed")
            if own is not None and not own.strip().isdigit():
                raise ValueError(f"{path}:{line}: evaluation_seed {own!r} is not a non-negative integer")
            if record["prompt"].strip():
                scene = {"line": line, **({"image_id": record["image_id"]} if record.get("image_id") else {})}
                captions.append((record["prompt"].strip(), None if own is None else int(own), scene))
            line = reader.line_num + 1
    except csv.Error as err:
        raise ValueError(f"{path}:{line if 'line' in locals() else 1}: unreadable CSV ({err})") from None
    return captions
