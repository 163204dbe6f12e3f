"""Seeded image generation and image grids.

Each image gets its own generator seeded from its seed, so an image depends only on (prompt, seed, model,
steps, guidance) and not on how images were batched: the same prompt and seed give the same image before
and after an edit, which is what before/after comparisons need.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from concept_edit.models.loading import model_info
from concept_edit.validation import check_number, check_seed


@torch.no_grad()
def generate(
    pipe,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    steps: int | None = None,
    guidance: float | None = None,
    batch_size: int = 32,
    progress: bool = False,
) -> list[Image.Image]:
    """One image per (prompt, seed) pair."""
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")

    def inputs(start: int, stop: int) -> dict:
        return {"prompt": list(prompts[start:stop])}

    def name(start: int, i: int) -> str:
        return repr(prompts[start + i])

    return _draw(pipe, seeds, inputs, name, steps, guidance, batch_size, progress)


@torch.no_grad()
def generate_from_embeddings(
    pipe,
    embeds: torch.Tensor,
    seeds: Sequence[int],
    *,
    negative: torch.Tensor | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    batch_size: int = 32,
) -> np.ndarray:
    """(N, H, W, 3) uint8 images for per-token prompt embeddings (N, tokens, dim), each seeded as `generate`
    seeds a prompt; `negative` (tokens, dim) replaces the encoded "" of classifier-free guidance."""
    if len(embeds) != len(seeds):
        raise ValueError(f"{len(embeds)} prompt embeddings but {len(seeds)} seeds")
    if not len(seeds):
        return np.zeros((0, 1, 1, 3), np.uint8)
    dtype = pipe.unet.dtype

    def inputs(start: int, stop: int) -> dict:
        batch = {"prompt_embeds": embeds[start:stop].to(pipe.device, dtype)}
        if negative is not None:
            batch["negative_prompt_embeds"] = negative[None].expand(stop - start, -1, -1).to(pipe.device, dtype)
        return batch

    def name(start: int, i: int) -> str:
        return f"prompt embedding {start + i}"

    return to_array(_draw(pipe, seeds, inputs, name, steps, guidance, batch_size, False))


def _draw(pipe, seeds, inputs, name, steps, guidance, batch_size: int, progress: bool) -> list[Image.Image]:
    info = model_info(pipe)
    steps = check_number("steps", info.default_steps if steps is None else steps, low=1, integer=True)
    guidance = check_number("guidance", info.default_guidance if guidance is None else guidance, low=0)
    for seed in seeds:
        check_seed(seed)
    images: list[Image.Image] = []
    gen_device = "cpu" if pipe.device.type == "mps" else pipe.device
    starts = range(0, len(seeds), batch_size)
    for start in tqdm(starts, desc="generate", disable=not progress, leave=False):
        stop = min(start + batch_size, len(seeds))
        gens = [torch.Generator(gen_device).manual_seed(int(s)) for s in seeds[start:stop]]
        out = pipe(
            **inputs(start, stop),
            generator=gens,
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=info.resolution,
            width=info.resolution,
            output_type="np",
        )
        if not np.isfinite(out.images).all():
            bad = name(start, int(np.argwhere(~np.isfinite(out.images))[0][0]))
            raise ValueError(
                f"the model drew non-finite pixels (NaN or inf) for {bad}: its weights, or an edit applied to "
                "them, hold values that overflow"
            )
        images.extend(pipe.numpy_to_pil(out.images))
    return images


def image_grid(images: Sequence[Image.Image], cols: int | None = None, pad: int = 2) -> Image.Image:
    """Tile images left to right, top to bottom, with a thin white gutter."""
    if not images:
        raise ValueError("no images to tile")
    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w + (cols - 1) * pad, rows * h + (rows - 1) * pad), "white")
    for i, image in enumerate(images):
        grid.paste(image.convert("RGB"), ((i % cols) * (w + pad), (i // cols) * (h + pad)))
    return grid


def to_array(images: Sequence[Image.Image]) -> np.ndarray:
    """(N, H, W, 3) uint8."""
    return np.stack([np.asarray(im.convert("RGB")) for im in images])
