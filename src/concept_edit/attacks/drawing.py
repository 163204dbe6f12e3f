"""What every attack draws and returns: the attacked (prompt, seed) items, seeded images from text or from
embeddings (the same per-image generators as `concept_edit.generation`), the stage lines of a long probe, and
the outcome an attack hands back.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np
import torch

from concept_edit.generation import generate, generate_from_embeddings, to_array
from concept_edit.models.loading import model_info

log = logging.getLogger(__name__)


# set by `probe(progress=True)`: each phase logs a stage line and every drawing shows a bar, without every
# attack's signature carrying the flag
_PROGRESS: ContextVar[bool] = ContextVar("concept_edit_attack_progress", default=False)


@contextlib.contextmanager
def showing_progress(on: bool) -> Iterator[None]:
    token = _PROGRESS.set(on)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def stage(message: str, *args) -> None:
    """A line on stderr (the CLI's log) saying which phase of a long probe runs now, when progress is shown."""
    if _PROGRESS.get():
        log.info(message, *args)


@dataclass(frozen=True)
class Item:
    """One attacked prompt of the concept and the seed its image is drawn with."""

    prompt: str
    seed: int


def cycle_items(prompts: Sequence[str], n: int, seed: int) -> list[Item]:
    """n items cycling through `prompts`, seeds seed, seed + 1, ... (as the evaluation suites do)."""
    if not prompts:
        raise ValueError("no prompts to attack")
    return [Item(prompts[k % len(prompts)], seed + k) for k in range(n)]


def images_from_prompts(pipe, items: Sequence[Item], steps: int, guidance: float) -> np.ndarray:
    """(N, H, W, 3) uint8 images, one per item, exactly as `concept_edit.generation.generate` draws them."""
    if not items:
        return np.zeros((0, 1, 1, 3), np.uint8)
    prompts, seeds = [i.prompt for i in items], [i.seed for i in items]
    images = generate(pipe, prompts, seeds, steps=steps, guidance=guidance, progress=_PROGRESS.get())
    return to_array(images)


def _generators(pipe, seeds: Sequence[int]) -> list[torch.Generator]:
    device = "cpu" if pipe.device.type == "mps" else pipe.device
    return [torch.Generator(device).manual_seed(int(s)) for s in seeds]


def images_from_embeddings(
    pipe, embeds: torch.Tensor, seeds: Sequence[int], steps: int, guidance: float, batch_size: int = 32
) -> np.ndarray:
    """Images for per-token prompt embeddings (N, tokens, dim), each seeded as `generate` seeds a prompt."""
    return generate_from_embeddings(pipe, embeds, seeds, steps=steps, guidance=guidance, batch_size=batch_size)


@torch.no_grad()
def latents_from_prompts(pipe, items: Sequence[Item], steps: int, guidance: float, batch_size: int = 32):
    """The final latents z_0 (as the UNet sees them) of each item's image, drawn as `generate` draws it."""
    info = model_info(pipe)
    out = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        result = pipe(
            prompt=[i.prompt for i in chunk],
            generator=_generators(pipe, [i.seed for i in chunk]),
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=info.resolution,
            width=info.resolution,
            output_type="latent",
        )
        out.append(result.images.float())
    return torch.cat(out)


@dataclass
class Outcome:
    """What an attack returns: one row per attack image (prompt, seed, success, what the judge read, ...),
    the attack's protocol (its budget and settings) and any further figures."""

    rows: list[dict]
    protocol: dict
    extra: dict
