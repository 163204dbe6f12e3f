"""Cross-attention maps of one token, per layer and denoising step (the eigen paper's Figures B.1-B.2).

    concept-edit attention --model shapes --prompt "a red circle on a striped background" --token circle --out maps.png

Each cross-attention layer's softmax(QK^T / sqrt(d)) is read during an ordinary guided generation (the
conditional half of the batch, averaged over heads, summed over the token's word pieces) and laid out as a
grid: one row per layer (its index is what `edit eigen --layers` takes), one column per shown step. The maps
show where in the image each layer reads the word, which is how the paper picks the layers to edit.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from concept_edit.edit.file import get_module
from concept_edit.models.loading import model_info
from concept_edit.models.prompts import concept_token_positions
from concept_edit.models.targets import cross_attention_layers
from concept_edit.validation import check_number, check_seed


@contextmanager
def _reading_attention(pipe, sink: dict[int, list[torch.Tensor]], columns: list[int]) -> Iterator[None]:
    """Run every cross-attention layer with the plain processor and keep its attention to `columns`."""
    from diffusers.models.attention_processor import AttnProcessor

    modules = [get_module(pipe, layer.path) for layer in cross_attention_layers(pipe)]
    saved = [m.processor for m in modules]

    def reader(index: int, module):
        original = type(module).get_attention_scores

        def scores(query, key, attention_mask=None):
            probs = original(module, query, key, attention_mask)
            heads = module.heads
            per_sample = probs.reshape(-1, heads, *probs.shape[1:])  # (batch, heads, pixels, tokens)
            cond = per_sample[per_sample.shape[0] // 2 :] if pipe.do_classifier_free_guidance else per_sample
            sink[index].append(cond[..., columns].sum(-1).mean(1)[0].float().cpu())
            return probs

        return scores

    try:
        for index, module in enumerate(modules):
            sink[index] = []
            module.set_processor(AttnProcessor())
            module.get_attention_scores = reader(index, module)
        yield
    finally:
        for module, processor in zip(modules, saved, strict=True):
            module.__dict__.pop("get_attention_scores", None)
            module.set_processor(processor)


@torch.no_grad()
def attention_maps(
    pipe, prompt: str, token: str, *, seed: int = 0, steps: int | None = None, guidance: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(maps, image): `maps[layer][step]` is an h x w map (layers may differ in size, so a list of arrays)."""
    info = model_info(pipe)
    steps = check_number("steps", info.default_steps if steps is None else steps, low=1, integer=True)
    guidance = check_number("guidance", info.default_guidance if guidance is None else guidance, low=0)
    check_seed(seed)
    columns = concept_token_positions(pipe, prompt, token)
    sink: dict[int, list[torch.Tensor]] = {}
    with _reading_attention(pipe, sink, columns):
        out = pipe(
            prompt=[prompt],
            generator=torch.Generator("cpu").manual_seed(seed),
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=info.resolution,
            width=info.resolution,
            output_type="np",
        )
    maps = []
    for index in sorted(sink):
        layer = torch.stack(sink[index])  # (steps, pixels)
        side = math.isqrt(layer.shape[1])
        maps.append(layer.reshape(len(layer), side, side).numpy())
    return maps, out.images[0]


def save_attention_grid(maps, image: np.ndarray, path: str | Path, *, title: str, columns: int = 8) -> None:
    """A PNG grid: the generated image, then per layer `columns` evenly spaced steps (each map scaled to its max)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = len(maps[0])
    shown = sorted({round(i * (steps - 1) / max(columns - 1, 1)) for i in range(min(columns, steps))})
    fig, axes = plt.subplots(len(maps), len(shown) + 1, figsize=(1.3 * (len(shown) + 1), 1.3 * len(maps)))
    axes = np.atleast_2d(axes)
    for row, layer in enumerate(maps):
        if row == 0:
            axes[row, 0].imshow(image)
        else:
            axes[row, 0].set_frame_on(False)
        axes[row, 0].set_ylabel(f"layer {row}\n{layer.shape[1]}x{layer.shape[2]}", fontsize=7)
        for col, step in enumerate(shown, start=1):
            axes[row, col].imshow(layer[step], cmap="inferno", vmin=0, vmax=max(float(layer[step].max()), 1e-8))
            if row == 0:
                axes[row, col].set_title(f"step {step + 1}", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
