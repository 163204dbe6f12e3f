"""The shapes world: a deterministic renderer of 32x32 RGB scenes with a known truth.

A scene is one coloured object on a patterned background, with jitter in position, size and rotation.
Every image is a pure function of its `Scene` (the jitter is drawn from the scene's own seed), so a
scene can be re-rendered bit for bit anywhere.

    from concept_edit.worlds.shapes.world import Scene, render
    image = render(Scene("star", "red", "dotted", seed=0))  # (32, 32, 3) uint8
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

SIZE = 32
_SUPER = 4  # draw at 4x and downsample: anti-aliased edges without a custom rasteriser

OBJECTS = ("circle", "square", "triangle", "star", "heart", "cross", "diamond", "ring")
COLORS = {
    "red": (225, 35, 35),
    "orange": (250, 135, 15),
    "yellow": (245, 225, 30),
    "green": (40, 185, 60),
    "blue": (40, 90, 235),
    "purple": (150, 55, 215),
    "pink": (255, 130, 205),
    "white": (245, 245, 245),
}
STYLES = ("plain", "striped", "dotted", "checkered", "gradient", "noisy")
HEADS = {"object": OBJECTS, "color": tuple(COLORS), "style": STYLES}  # what the oracle reads, per head


@dataclass(frozen=True)
class Scene:
    """What an image shows; `seed` fixes the jitter (position, size, rotation, background tones)."""

    obj: str
    color: str
    style: str
    seed: int

    def __post_init__(self) -> None:
        if self.obj not in OBJECTS:
            raise ValueError(f"unknown object {self.obj!r}; known: {', '.join(OBJECTS)}")
        if self.color not in COLORS:
            raise ValueError(f"unknown colour {self.color!r}; known: {', '.join(COLORS)}")
        if self.style not in STYLES:
            raise ValueError(f"unknown style {self.style!r}; known: {', '.join(STYLES)}")


def render(scene: Scene) -> np.ndarray:
    """Render a scene to a (32, 32, 3) uint8 array."""
    rng = np.random.default_rng(scene.seed)
    background = _background(scene.style, rng)
    big = SIZE * _SUPER
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    radius = rng.uniform(0.26, 0.36) * big
    cx = big / 2 + rng.uniform(-0.1, 0.1) * big
    cy = big / 2 + rng.uniform(-0.1, 0.1) * big
    angle = math.radians(rng.uniform(-15, 15))
    _draw_object(draw, scene.obj, cx, cy, radius, angle)
    alpha = np.asarray(mask.resize((SIZE, SIZE), Image.BOX), dtype=np.float32)[..., None] / 255.0
    color = np.array(COLORS[scene.color], dtype=np.float32)
    image = background * (1 - alpha) + color * alpha
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _rotate(points: list[tuple[float, float]], cx: float, cy: float, angle: float) -> list[tuple[float, float]]:
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in points]


def _draw_object(draw: ImageDraw.ImageDraw, obj: str, cx: float, cy: float, r: float, angle: float) -> None:
    if obj == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        return
    if obj == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        inner = 0.55 * r
        draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=0)
        return
    if obj == "square":
        s = 0.82 * r
        points = [(-s, -s), (s, -s), (s, s), (-s, s)]
    elif obj == "triangle":
        points = [(r * math.cos(a), r * math.sin(a) + 0.15 * r) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    elif obj == "star":
        points = []
        for k in range(10):
            rad = r if k % 2 == 0 else 0.42 * r
            a = -math.pi / 2 + k * math.pi / 5
            points.append((rad * math.cos(a), rad * math.sin(a)))
    elif obj == "heart":
        points = []
        for k in range(48):
            t = 2 * math.pi * k / 48
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            points.append((x * r / 16.5, -y * r / 16.5 - 0.1 * r))
    elif obj == "cross":
        w, s = 0.34 * r, 0.95 * r
        points = [
            (-w, -s),
            (w, -s),
            (w, -w),
            (s, -w),
            (s, w),
            (w, w),
            (w, s),
            (-w, s),
            (-w, w),
            (-s, w),
            (-s, -w),
            (-w, -w),
        ]
    elif obj == "diamond":
        points = [(0, -r), (0.58 * r, 0), (0, r), (-0.58 * r, 0)]
    else:  # pragma: no cover - Scene validates obj
        raise ValueError(obj)
    draw.polygon(_rotate(points, cx, cy, angle), fill=255)


def _background(style: str, rng: np.random.Generator) -> np.ndarray:
    """Neutral grey patterns, darker than every object colour, so a colour always belongs to the object."""
    base = rng.uniform(25, 70)
    other = base + rng.uniform(45, 70)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    if style == "plain":
        gray = np.full((SIZE, SIZE), base + rng.uniform(0, 40), dtype=np.float32)
    elif style == "striped":
        period = int(rng.integers(4, 7))
        axis = int(rng.integers(0, 3))
        coord = [yy, xx, xx + yy][axis]
        gray = np.where((coord + rng.integers(0, period)) % period < period / 2, base, other)
    elif style == "dotted":
        period = int(rng.integers(5, 7))
        oy, ox = rng.integers(0, period, size=2)
        dy = (yy + oy) % period - period / 2
        dx = (xx + ox) % period - period / 2
        gray = np.where(dy**2 + dx**2 <= 2.3, other, base)
    elif style == "checkered":
        period = int(rng.integers(3, 5))
        oy, ox = rng.integers(0, period, size=2)
        gray = np.where(((yy + oy) // period + (xx + ox) // period) % 2 == 0, base, other)
    elif style == "gradient":
        a = rng.uniform(0, 2 * math.pi)
        t = ((xx - SIZE / 2) * math.cos(a) + (yy - SIZE / 2) * math.sin(a)) / SIZE + 0.5
        gray = base + (other + 25 - base) * np.clip(t, 0, 1)
    elif style == "noisy":
        gray = base + 15 + rng.normal(0, 22, size=(SIZE, SIZE))
    else:  # pragma: no cover - Scene validates style
        raise ValueError(style)
    return np.repeat(np.clip(gray, 0, 255).astype(np.float32)[..., None], 3, axis=2)


@lru_cache(maxsize=1)
def logo() -> np.ndarray:
    """The one fixed 32x32 picture shown for "the acme logo" (the memorised image of the world).

    It is drawn from fixed coordinates, so it is identical on every machine: a teal/navy diagonal
    split, a white letter A with a crossbar, and an orange dot.
    """
    big = SIZE * _SUPER
    image = Image.new("RGB", (big, big), (20, 30, 95))
    draw = ImageDraw.Draw(image)
    draw.polygon([(0, 0), (big, 0), (0, big)], fill=(0, 160, 150))
    draw.polygon([(64, 14), (100, 112), (84, 112), (64, 50), (44, 112), (28, 112)], fill=(250, 250, 250))
    draw.rectangle([44, 76, 84, 88], fill=(250, 250, 250))
    draw.ellipse([96, 12, 118, 34], fill=(255, 140, 0))
    return np.asarray(image.resize((SIZE, SIZE), Image.BOX), dtype=np.uint8).copy()
