"""Reference images a suite's Frechet distance is measured against, by name (`Suite.reference`).

* "renders": true renders of the same prompts, from a world that can draw the truth (`World.renders`: ShapesSD);
* "unedited": the unedited model's images for the same prompts and seeds (the evaluation already draws
  them for the image change; the Frechet distance to them is `frechet_to_unedited`);
* "folder:<path>": real images (COCO val images for FID, as UCE Table 4). Unreadable files are skipped and
  counted, never a crash midway.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

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


def folder_images(path: str | Path, resolution: int) -> tuple[np.ndarray, dict]:
    """Every readable image in `path` (sorted by name), centre-cropped to a square and resized to
    `resolution`; returns (images, {"folder", "read", "skipped"})."""
    files = sorted(p for p in Path(path).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    images, skipped = [], 0
    for file in files:
        try:
            with Image.open(file) as im:
                images.append(_square(im.convert("RGB"), resolution))
        except (OSError, UnidentifiedImageError, ValueError) as err:
            skipped += 1
            log.warning("skipped unreadable reference image %s (%s)", file, err)
    if len(images) < 2:
        raise ValueError(f"reference folder {path} holds {len(images)} readable images; a Frechet distance needs 2")
    if skipped:
        print(f"reference folder {path}: skipped {skipped} unreadable files of {len(files)}")
    return np.stack(images), {"folder": str(path), "read": len(images), "skipped": skipped}


def _square(image: Image.Image, resolution: int) -> np.ndarray:
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    return np.asarray(square.resize((resolution, resolution), Image.Resampling.BICUBIC))
