"""Images of a concept for CAD-Amplify: a folder the user gives, or a world's true renders (`shapes:diamond`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

IMAGE_FILES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass(frozen=True)
class ConceptImages:
    """(N, 3, H, W) float32 in [-1, 1] at the model's resolution, and where they came from."""

    pixels: torch.Tensor
    source: str
    skipped: int = 0


def _to_tensor(images: list[Image.Image], size: int) -> torch.Tensor:
    # the VAE reads [-1, 1] (the official script feeds [0, 1]; not reproduced)
    arrays = [np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float32) for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1


def load_folder(folder: str | Path, size: int) -> ConceptImages:
    """Every readable image file in `folder` (sorted by name); unreadable ones are skipped and counted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"--images: {folder} is not a folder of images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_FILES)
    images, skipped = [], 0
    for path in files:
        try:
            with Image.open(path) as im:
                im.load()
                images.append(im.copy())
        except (UnidentifiedImageError, OSError) as err:
            skipped += 1
            log.warning("skipping %s: %s", path.name, err)
    if not images:
        found = f"{len(files)} image file(s), none readable" if files else "no image file"
        raise ValueError(f"--images: {folder} holds {found} ({', '.join(IMAGE_FILES)})")
    if skipped:
        log.warning("%d of %d image files in %s could not be read and were skipped", skipped, len(files), folder)
    return ConceptImages(_to_tensor(images, size), str(folder), skipped)


def resolve_images(spec, size: int) -> ConceptImages:
    """A ConceptImages from itself, a world's image spec (`shapes:OBJECT[:N]`), or a folder path."""
    if isinstance(spec, ConceptImages):
        return spec
    if isinstance(spec, str):
        from concept_edit.worlds import worlds

        for world in worlds().values():  # a world's own image spec ("shapes:diamond"): its true renders
            drawn = world.concept_images(spec, size)
            if drawn is not None:
                images, source = drawn
                return ConceptImages(_to_tensor([Image.fromarray(im) for im in images], size), source)
    return load_folder(spec, size)
