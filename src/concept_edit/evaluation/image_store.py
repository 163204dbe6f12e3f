"""The image store itself: what decides an image (its key), and on disk PNGs named by key with per-process
JSONL indexes merged on read.

    DIR/images/<key>.png     one image, written atomically (a temporary file renamed into place)
    DIR/index.<rank>.jsonl   one JSON line per stored image, appended by process `rank` only

An index line holds the fields that decide the image (`FIELDS`, whose sha256 is the key), the PNG's sha256,
and how it was drawn (device, attention processors, versions; not part of the key). A PNG is trusted only
if its bytes match a checksum in the index, so a truncated or damaged file, or an index line cut short by a
crash, is reported and treated as missing: nothing half-written is read back. The PNGs of a batch are in
place before its index lines are appended, all in one write, so an index line never names an unfinished
image. Each process appends to its own file, so several processes never race on one file.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from concept_edit.edit import Edit
from concept_edit.edit.file import StoredChange
from concept_edit.edit.state import combine, current_digest, named_tensors, sha256
from concept_edit.io import atomic_path, write_text
from concept_edit.models.loading import model_info

log = logging.getLogger(__name__)

# -- what decides an image (its key) ------------------------------------------------------------------------------
FIELDS = ("model", "base_hash", "edits", "protocol", "prompt", "seed", "guidance")
_KEY = re.compile(r"[0-9a-f]{64}")


def item_key(fields: dict) -> str:
    """sha256 of the canonical JSON of the fields that decide an image."""
    canonical = json.dumps({k: fields[k] for k in FIELDS}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def edit_identity(edit: Edit) -> str:
    """sha256 over the edit's base hash and each change (its manifest entry and its tensors' sha256), in order.

    Stable across runs and processes (unlike `Edit.identity`, which is per object for an in-memory edit), and
    the same for an edit in memory and after a save and load. A loaded edit costs no tensor read: the
    checksums are in its manifest.
    """
    changes = []
    for entry in edit.entries:
        if isinstance(entry, StoredChange):
            info = {k: v for k, v in entry.info.items() if k != "tensors"}
            sums = {part: t["sha256"] for part, t in entry.info["tensors"].items()}
        else:
            info, sums = entry.info(), {part: sha256(t) for part, t in entry.parts().items()}
        changes.append({"info": info, "sha256": sums})
    text = json.dumps([edit.manifest.get("base_hash"), changes], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def model_hash(pipe) -> str:
    """One hash of every parameter of every component (float16-rounded, as edits' base hashes are); cached on
    the pipeline per tensor, so only the first call on a model pays for it (measured 240M parameters/s on one
    loaded CPU core: about 5 s for SD 1.5's 1.07B)."""
    return combine({k: current_digest(pipe, k, t) for k, t in named_tensors(pipe).items()})


def protocol(pipe, steps: int) -> dict:
    """How images are drawn, beside the prompt, seed and guidance. The noise device matters: CUDA and CPU
    generators draw different noise from the same seed."""
    # Without diffusers' private entries: `_use_default_values` lists a set, in another order in every process.
    public = {k: v for k, v in pipe.scheduler.config.items() if not k.startswith("_")}
    config = json.dumps(public, sort_keys=True, default=str)
    return {
        "steps": steps,
        "resolution": model_info(pipe).resolution,
        "scheduler": type(pipe.scheduler).__name__,
        "scheduler_config": hashlib.sha256(config.encode()).hexdigest()[:16],
        "dtype": str(pipe.unet.dtype).removeprefix("torch."),
        "noise": "cpu" if pipe.device.type in ("cpu", "mps") else pipe.device.type,  # as generation.py seeds
    }


# -- on disk ------------------------------------------------------------------------------------------------------
def _parse(line: str) -> dict | None:
    """An index entry, or None when the line is damaged (bad JSON, missing fields, key not matching them)."""
    try:
        entry = json.loads(line)
        ok = isinstance(entry, dict) and isinstance(entry.get("png_sha256"), str) and _KEY.fullmatch(entry["key"])
        return entry if ok and item_key(entry) == entry["key"] else None
    except (ValueError, KeyError, TypeError):
        return None


def _parse_lines(data: bytes, first_line: int) -> tuple[list[dict], list[int], int, int]:
    """(good entries, numbers of damaged lines, bytes and lines consumed) of index bytes starting at line
    `first_line`: an unfinished last line counts as damaged but is not consumed (a writer may be finishing it)."""
    *lines, rest = data.split(b"\n")
    good, bad = [], []
    for number, raw in enumerate(lines, first_line):
        entry = _parse(raw.decode("utf-8", errors="replace") + "\n")
        if entry is None:
            bad.append(number)
        else:
            good.append(entry)
    if rest:
        bad.append(first_line + len(lines))
    return good, bad, len(data) - len(rest), len(lines)


class ImageStore:
    """A folder of generated images and their index; see the module docstring for the layout."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._repaired: set[int] = set()  # ranks whose index file this object has already cleaned
        # index file -> (its identity, bytes and lines parsed, good entries, first and last parsed bytes, where an
        # unfinished last line was said)
        self._read: dict[Path, tuple] = {}

    def __repr__(self) -> str:
        return f"ImageStore({str(self.root)!r})"

    def image_path(self, key: str) -> Path:
        return self.root / "images" / f"{key}.png"

    def index_path(self, rank: int) -> Path:
        return self.root / f"index.{rank}.jsonl"

    def index(self) -> dict[str, list[dict]]:
        """Every process's index merged: key -> its entries (one per time it was written). Damaged lines are
        skipped with a warning; their images count as missing and are generated again.

        Each index file is parsed once: a later call reads only the lines appended since (a file rewritten
        meanwhile, by a repair, is read again whole), so asking once per chunk of a large suite stays cheap.
        """
        merged: dict[str, list[dict]] = {}
        for path in sorted(self.root.glob("index.*.jsonl")):
            for entry in self._entries_of(path):
                merged.setdefault(entry["key"], []).append(entry)
        return merged

    def _entries_of(self, path: Path) -> list[dict]:
        """The good entries of one index file, parsing only the bytes appended since the last call. A file that
        is another file now (a repair writes a new one), or whose first or last parsed bytes changed, is parsed
        again whole; an edit inside the file that keeps its size, start and end is seen by a new store object
        (each `generate_stored` / `evaluate` call makes one), not by this one."""
        try:
            with open(path, "rb") as f:
                identity = (os.fstat(f.fileno()).st_dev, os.fstat(f.fileno()).st_ino)
                cached = self._read.get(path)
                if cached is not None:
                    same, offset, lines, entries, head, tail, warned = cached
                    f.seek(0)
                    start = f.read(len(head))
                    f.seek(offset - len(tail))
                    if same != identity or start != head or f.read(len(tail)) != tail:
                        cached = None
                if cached is None:
                    offset, lines, entries, head, tail, warned = 0, 0, [], b"", b"", None
                f.seek(offset)
                data = f.read()
        except OSError as err:
            log.warning("%s cannot be read (%s); its images will be generated again", path, err)
            return []
        good, bad, consumed, read = _parse_lines(data, lines + 1)
        unfinished = bool(bad) and consumed < len(data)  # the last line has no newline yet: not consumed
        said = [n for n in bad if not (unfinished and n == bad[-1] and warned == offset + consumed)]
        if said:  # a damaged line is said once; an unfinished last line once per place it sits
            log.warning(
                "%s: %d damaged line(s) ignored (first: line %d); their images will be generated again",
                path,
                len(said),
                said[0],
            )
        entries = entries + good
        head, tail = (head + data[:consumed])[:256], (tail + data[:consumed])[-256:]  # of the parsed bytes only
        warned = offset + consumed if unfinished else None
        self._read[path] = (identity, offset + consumed, lines + read, entries, head, tail, warned)
        return entries

    @staticmethod
    def _read_index(path: Path) -> tuple[list[dict], list[int]]:
        """(good entries, line numbers of damaged lines); an unfinished last line counts as damaged."""
        try:
            data = path.read_bytes()
        except OSError as err:
            log.warning("%s cannot be read (%s); its images will be generated again", path, err)
            return [], []
        good, bad, _, _ = _parse_lines(data, 1)
        return good, bad

    def load(self, key: str, entries: Sequence[dict]) -> np.ndarray | None:
        """The stored image of `key` as (H, W, 3) uint8, or None if it is not stored or fails its checksum."""
        if not entries:
            return None
        path = self.image_path(key)
        try:
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() in {e["png_sha256"] for e in entries}:
                return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            problem = "is damaged (its checksum does not match the index)"
        except OSError as err:  # missing file; PIL's decoding errors are OSErrors too
            problem = f"cannot be read ({type(err).__name__})"
        log.warning(
            "stored image %s (prompt %r, seed %s) %s; generating it again",
            path,
            entries[-1]["prompt"],
            entries[-1]["seed"],
            problem,
        )
        return None

    def add(self, rank: int, fields: Sequence[dict], images: np.ndarray, drawn_with: dict) -> None:
        """Write a batch: every PNG atomically, then all its index lines in one append."""
        lines = []
        for item, image in zip(fields, images, strict=True):
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, format="PNG")
            key = item_key(item)
            with atomic_path(self.image_path(key)) as tmp:
                tmp.write_bytes(buf.getvalue())
            entry = {"key": key, **{k: item[k] for k in FIELDS}}
            entry.update(png_sha256=hashlib.sha256(buf.getvalue()).hexdigest(), file=f"images/{key}.png")
            lines.append(json.dumps({**entry, "drawn_with": drawn_with}) + "\n")
        self._append(rank, "".join(lines).encode())

    def _append(self, rank: int, data: bytes) -> None:
        path = self.index_path(rank)
        if rank not in self._repaired:
            self._repair(path)
            self._repaired.add(rank)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            view = memoryview(data)
            while view:  # one write for a regular file; the loop only guards against a short write
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)

    def _repair(self, path: Path) -> None:
        """Rewrite this process's own index without its damaged lines (an unfinished last line included),
        before appending to it: appending after a cut-off line would damage the new line too."""
        if not path.exists():
            return
        good, bad = self._read_index(path)
        if bad:
            write_text(path, "".join(json.dumps(e) + "\n" for e in good))
            log.warning("%s: removed %d damaged line(s)", path, len(bad))
