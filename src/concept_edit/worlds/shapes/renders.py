"""True images of the shapes world: what a suite entry asks for (Frechet reference), or N renders of an object
(CAD-Amplify's images of a concept, `shapes:OBJECT[:N]`)."""

from __future__ import annotations

import numpy as np

from concept_edit.worlds.shapes.world import COLORS, OBJECTS, STYLES, Scene, logo, render

DEFAULT_RENDERS = 5  # CAD-Amplify: the paper uses 5 images per class


def entry_renders(entries) -> np.ndarray:
    """A true render for every entry: its named attributes, the rest drawn uniformly from its seed."""
    out = []
    for entry in entries:
        if entry.scene.get("logo"):
            out.append(logo())
            continue
        rng = np.random.default_rng([entry.seed, 7])
        obj = entry.scene.get("obj") or (entry.label if entry.label in OBJECTS else OBJECTS[rng.integers(8)])
        color = entry.scene.get("color") or (entry.label if entry.label in COLORS else list(COLORS)[rng.integers(8)])
        style = entry.scene.get("style") or (entry.label if entry.label in STYLES else STYLES[rng.integers(6)])
        out.append(render(Scene(obj, color, style, int(rng.integers(2**31)))))
    return np.stack(out)


def object_renders(spec: str, seed: int = 0) -> np.ndarray:
    """`shapes:OBJECT[:N]`: N true renders of the object (colours and backgrounds drawn from the seed)."""
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
    return np.stack([render(s) for s in scenes])
