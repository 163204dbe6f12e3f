"""UCE's imagenette CSV (data/imagenette.csv of rohitgandikota/unified-concept-editing): one row per image,
`case_number, prompt, class, evaluation_seed`, each with its own random seed, as UCE's generate-images.py
draws them. Read here so `imagenette:<csv>` reproduces UCE's images seed for seed."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from concept_edit.worlds.real.common import csv_seed, read_text

COLUMNS = ("prompt", "class", "evaluation_seed")


def imagenette_rows(path: Path, classes: dict[str, int]) -> list[dict]:
    """Rows {prompt, class, seed, line}; ValueError naming the file and line of a missing column, an unknown
    class, a prompt that does not name its class or a seed out of range."""
    reader = csv.DictReader(io.StringIO(read_text(path, "UCE's imagenette CSV"), newline=""))
    try:
        header = reader.fieldnames or []
    except csv.Error as err:
        raise ValueError(f"{path}:1: unreadable CSV header ({err})") from None
    if missing := [c for c in COLUMNS if c not in header]:
        raise ValueError(f"{path}:1: UCE's imagenette CSV has the columns {', '.join(COLUMNS)}; missing "
                         f"{', '.join(missing)}")  # fmt: skip
    rows, line = [], reader.line_num + 1
    try:
        for record in reader:
            if None in record or None in record.values():
                raise ValueError(f"{path}:{line}: expected {len(header)} fields")
            name, prompt = record["class"].strip(), record["prompt"].strip()
            if name not in classes:
                raise ValueError(f"{path}:{line}: class {name!r} is not an Imagenette class ({', '.join(classes)})")
            if name.lower() not in prompt.lower():
                raise ValueError(f"{path}:{line}: the prompt {prompt!r} does not name its class {name!r}")
            rows.append({"prompt": prompt, "class": name, "seed": csv_seed(path, line, record["evaluation_seed"]),
                         "line": line})  # fmt: skip
            line = reader.line_num + 1
    except csv.Error as err:
        raise ValueError(f"{path}:{line}: unreadable CSV ({err})") from None
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows
