"""Images of a concept for CAD-Amplify: a folder the user gives, or ShapesSD renders (`shapes:diamond`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

IMAGE_FILES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
DEFAULT_RENDERS = 5  # the paper uses 5 images per class


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


def shapes_renders(spec: str, size: int, seed: int = 0) -> ConceptImages:
    """`shapes:OBJECT[:N]`: N true renders of the object (colours and backgrounds drawn from the seed)."""
    from concept_edit.shapes.world import COLORS, OBJECTS, STYLES, Scene, render

    parts = spec.split(":")
    obj = parts[1] if len(parts) > 1 else ""
    if obj not in OBJECTS or len(parts) > 3:
        known = ", ".join(OBJECTS)
        raise ValueError(f"--images {spec!r}: write shapes:OBJECT or shapes:OBJECT:N, OBJECT one of {known}")
    count = DEFAULT_RENDERS
    if len(parts) == 3:
        if not parts[2].isdigit() or int(parts[2]) < 1:
            raise ValueError(f"--images {spec!r}: N must be a positive integer")
        count = int(parts[2])
    rng = np.random.default_rng([seed, 77])
    colors = list(COLORS)
    scenes = [Scene(obj, colors[rng.integers(len(colors))], STYLES[rng.integers(len(STYLES))], int(rng.integers(2**31)))
              for _ in range(count)]  # fmt: skip
    return ConceptImages(_to_tensor([Image.fromarray(render(s)) for s in scenes], size), spec)


def resolve_images(spec, size: int) -> ConceptImages:
    """A ConceptImages from itself, a `shapes:` spec, or a folder path."""
    if isinstance(spec, ConceptImages):
        return spec
    if isinstance(spec, str) and spec.startswith("shapes:"):
        return shapes_renders(spec, size)
    return load_folder(spec, size)
