"""Reference images a suite's Frechet distance is measured against, by name (`Suite.reference`).

* "renders": true renders of the same prompts, from a world that can draw the truth (`World.renders`: ShapesSD);
* "unedited": the unedited model's images for the same prompts and seeds (the evaluation already draws
  them for the image change; the Frechet distance to them is `frechet_to_unedited`);
* "folder:<path>": real images (COCO val images for FID, as UCE Table 4), read chunk by chunk into Frechet
  statistics before anything is drawn: an unreadable file, or images of mixed sizes (unless the caller asks
  for them to be centre-cropped and resized: `--reference-resize`), is one clear error before any drawing,
  never a crash after hours of it. Images of one size are resized to the model's side when it differs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from concept_edit.evaluation.frechet import FrechetStats

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def check_reference(spec: str | None) -> None:
    """ValueError for an unknown reference or a folder that is not there, before anything is generated."""
    if spec in (None, "renders", "unedited"):
        return
    kind, _, path = spec.partition(":")
    if kind != "folder" or not path:
        raise ValueError(f"unknown reference {spec!r}; use 'renders', 'unedited' or 'folder:<path>'")
    if not Path(path).is_dir():
        raise ValueError(f"reference folder {path} does not exist")


def folder_stats(path: str | Path, resolution: int, features, *, resize: bool = False, chunk_size: int = 256):
    """(FrechetStats of `features` over every image in `path` (sorted by name; None without features),
    {"folder", "read", "size", "resized"}). ValueError naming the files for unreadable or mixed-size images."""
    files = sorted(p for p in Path(path).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    sizes, unreadable = {}, []
    for file in files:  # headers only: cheap, and every size is known before a pixel is decoded
        try:
            with Image.open(file) as im:
                sizes[file] = im.size
        except (OSError, UnidentifiedImageError, ValueError):
            unreadable.append(file)
    if unreadable:
        raise ValueError(f"reference folder {path}: {len(unreadable)} of {len(files)} files are not readable images "
                         f"({', '.join(f.name for f in unreadable[:3])}{', ...' if len(unreadable) > 3 else ''}); "
                         "remove them")  # fmt: skip
    if len(files) < 2:
        raise ValueError(f"reference folder {path} holds {len(files)} images; a Frechet distance needs 2")
    distinct = sorted(set(sizes.values()))
    if len(distinct) > 1 and not resize:
        raise ValueError(f"reference folder {path} mixes image sizes ({', '.join(f'{w}x{h}' for w, h in distinct[:4])}"
                         f"{', ...' if len(distinct) > 4 else ''}); give --reference-resize to centre-crop and resize "
                         f"each to {resolution} px, or prepare them at one size")  # fmt: skip
    stats = FrechetStats() if features is not None else None
    for start in range(0, len(files), chunk_size):
        images = []
        for file in files[start : start + chunk_size]:
            try:
                with Image.open(file) as im:
                    images.append(_square(im.convert("RGB"), resolution))
            except (OSError, UnidentifiedImageError, ValueError) as err:
                raise ValueError(f"reference folder {path}: {file.name} cannot be decoded ({err}); remove it") from None
        if stats is not None:
            stats.add(features(np.stack(images)))
    size = distinct[0] if len(distinct) == 1 else None
    info = {"folder": str(path), "read": len(files), "size": list(size) if size else "mixed",
            "resized": size != (resolution, resolution)}  # fmt: skip
    return stats, info


def _square(image: Image.Image, resolution: int) -> np.ndarray:
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    if square.size == (resolution, resolution):
        return np.asarray(square)
    return np.asarray(square.resize((resolution, resolution), Image.Resampling.BICUBIC))
