"""The concept-inversion attack (white-box on the text side): Pham et al., "Circumventing Concept Erasure Methods
for Text-to-Image Generative Models" (ICLR 2024), which learn a new word for an erased concept with Textual
Inversion (Gal et al., 2023) on the EDITED model and find that the word draws the concept again for every
erasure method they tested (ESD, Selective Amnesia, UCE's predecessors among them).

A new token embedding v (k of them, `tokens`) is optimised on the edited model, every other weight frozen, with
Textual Inversion's objective, the diffusion model's own training loss on images of the concept:

    min_v  E_{x, t, n, template} || n - eps_edited(x_t, c(template(v)), t) ||^2,
    x_t = sqrt(abar_t) x + sqrt(1 - abar_t) n

(v's target for a v-prediction model), over the images' latents x, timesteps t uniform on [0, T), fresh noise n
each step, and prompt templates with v in the place of the word ("a picture of a {}"; a world may give its own,
else a subset of Textual Inversion's). Then each attacked item's template is drawn with v at a FRESH seed and the
judge reads it once.

Where the images come from: `images` (a real model: `--images FOLDER`), else the unedited model draws the
concept's own prompts at seeds 900000 + i, which no evaluation or attack uses.

Settings. Textual Inversion's: one token (k = 1), Adam, lr 5e-3, batch 4, initialised from a coarse word
("thing" by default; the word must not name the concept). Pham et al. run Textual Inversion with its published
settings for thousands of steps on SD; the budget here (optimisation steps) is set for ShapesSD on tuning seeds
(see the erasure table's protocol). Not reproduced: the learning-rate scaling by batch size, image flips.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict

import numpy as np
import torch
from tqdm.auto import tqdm

from concept_edit.attacks.drawing import Item, Outcome, images_from_embeddings, latents_from_prompts, stage
from concept_edit.attacks.encoder import (
    check_single_encoder,
    encode_ids,
    frozen,
    nearest_tokens,
    template_ids,
    token_embeddings,
    vocabulary,
)
from concept_edit.attacks.judging import ConceptJudge
from concept_edit.attacks.registry import ConceptInversionOptions
from concept_edit.attacks.wording import concept_token_ids, contains_concept
from concept_edit.edit import applied
from concept_edit.words import words
from concept_edit.worlds import world_of

log = logging.getLogger(__name__)
INVERSION_SEED = 900_000  # the unedited model's images of the concept: seeds no evaluation or attack draws


def inversion_images(pipe, items: Sequence[Item], count: int, steps: int, guidance: float) -> torch.Tensor:
    """Latents of `count` images of the concept drawn by the model as it is (call it unedited) for the concept's
    own prompts, cycled, at seeds INVERSION_SEED + i."""
    drawn = [Item(items[i % len(items)].prompt, INVERSION_SEED + i) for i in range(count)]
    return latents_from_prompts(pipe, drawn, steps, guidance).float().cpu()


@torch.no_grad()
def encode_images(pipe, images: np.ndarray) -> torch.Tensor:
    """Latents (as the UNet sees them) of (N, H, W, 3) uint8 images at the model's resolution: the VAE's mean."""
    vae = pipe.vae
    pixels = torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    out = [vae.encode(chunk.to(pipe.device, vae.dtype)).latent_dist.mean for chunk in pixels.split(8)]
    return torch.cat(out).float().cpu() * vae.config.scaling_factor


def _initial_embedding(pipe, word: str, concept: str | None, k: int) -> torch.Tensor:
    if concept and contains_concept(pipe, word, concept):
        raise ValueError(f"concept-inversion: the initial word {word!r} names the concept {concept!r}; pick another")
    ids = pipe.tokenizer(word, add_special_tokens=False).input_ids
    if not ids:
        raise ValueError(f"concept-inversion: the initial word {word!r} has no tokens")
    return token_embeddings(pipe).detach()[torch.tensor(ids)].float().mean(0).expand(k, -1).clone()


def run_concept_inversion(
    pipe,
    judge: ConceptJudge,
    items: Sequence[Item],
    *,
    edits=(),
    budget: int,
    seed: int,
    steps: int,
    guidance: float,
    options: ConceptInversionOptions | None = None,
    concept: str | None = None,
    images: np.ndarray | None = None,
    allow_repeat: bool = False,
    progress: bool = False,
) -> Outcome:
    """Learn `options.tokens` embeddings for the concept on the edited model for `budget` steps, then draw each
    item's template with them at a fresh seed; see the module docstring."""
    from concept_edit.attacks.soft_prompt import fresh_seeds

    opts = options or ConceptInversionOptions()
    check_single_encoder(pipe, "concept-inversion")
    templates = world_of(pipe).inversion_templates()
    device, k = pipe.device, opts.tokens
    if images is not None:
        if not len(images):
            raise ValueError("concept-inversion: the image folder holds no readable image")
        latents = encode_images(pipe, images)
        source = f"{len(images)} given images"
    else:
        stage("concept-inversion: the unedited model draws %d images of the concept to learn from", opts.samples)
        latents = inversion_images(pipe, items, opts.samples, steps, guidance)
        source = f"{opts.samples} images of the unedited model at seeds {INVERSION_SEED}+"
    initial = _initial_embedding(pipe, opts.init_word, concept, k).to(device)
    free = initial.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([free], lr=opts.lr)
    ids, mask, first = template_ids(pipe, templates, k)
    scheduler = pipe.scheduler
    total_t = int(scheduler.config.num_train_timesteps)
    velocity = scheduler.config.get("prediction_type", "epsilon") == "v_prediction"
    abar_all = scheduler.alphas_cumprod.float()
    gen = torch.Generator().manual_seed(int(seed))

    def draw(b: int):
        """A batch of (image, template, timestep, noise) and its noisy latents and target."""
        pick = torch.randint(len(latents), (b,), generator=gen)
        which = torch.randint(len(templates), (b,), generator=gen)
        t = torch.randint(total_t, (b,), generator=gen)
        x0 = latents[pick]
        noise = torch.randn(x0.shape, generator=gen)
        abar = abar_all[t].view(-1, 1, 1, 1)
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
        target = abar.sqrt() * noise - (1 - abar).sqrt() * x0 if velocity else noise
        return which, t, x_t, target

    def loss_of(word: torch.Tensor, batch) -> torch.Tensor:
        which, t, x_t, target = batch
        embeds = encode_ids(pipe, ids[which], mask[which], word.expand(len(which), -1, -1), first[which])
        pred = pipe.unet(x_t.to(device, pipe.unet.dtype), t.to(device), encoder_hidden_states=embeds,
                         return_dict=False)[0].float()  # fmt: skip
        return ((pred - target.to(device)) ** 2).mean()

    watch = draw(16)  # fixed draws on which the objective is reported before and after (the steps' are noisy)
    losses: list[float] = []
    with applied(pipe, *edits, allow_repeat=allow_repeat), frozen(pipe.unet, pipe.text_encoder, pipe.vae):
        with torch.no_grad():
            objective_start = float(loss_of(free, watch))
        stage("concept-inversion: %d steps of Textual Inversion on the edited model", budget)
        for _ in tqdm(range(budget), desc="concept-inversion", disable=not progress, leave=False):
            loss = loss_of(free, draw(opts.batch_size))
            if not bool(torch.isfinite(loss)):
                raise ValueError(f"concept-inversion diverged at step {len(losses) + 1}; lower --lr (got {opts.lr})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        with torch.no_grad():
            objective_end = float(loss_of(free, watch))
        fresh = fresh_seeds([i.seed for i in items])
        shown = [templates[i % len(templates)] for i in range(len(items))]
        rows_ids, rows_mask, rows_first = template_ids(pipe, shown, k)
        learned = free.detach()
        embeds = encode_ids(pipe, rows_ids, rows_mask, learned.expand(len(items), -1, -1), rows_first)
        stage("concept-inversion: the learned word drawn at fresh seeds (%d images)", len(items))
        read = judge.read(images_from_embeddings(pipe, embeds, fresh, steps, guidance))
    allowed = vocabulary(pipe.tokenizer, exclude=concept_token_ids(pipe.tokenizer, concept) if concept else [])
    nearest = pipe.tokenizer.convert_ids_to_tokens(nearest_tokens(pipe, learned, allowed).tolist())
    rows = [
        {
            "prompt": template.replace("{}", "<learned>"),
            "seed": s,
            "success": label == judge.label,
            "read": label,
        }
        for template, s, label in zip(shown, fresh, read, strict=True)
    ]
    protocol = {
        **asdict(opts),
        "budget_unit": "Textual Inversion steps on the edited model",
        "reference": "Pham et al. (ICLR 2024): Textual Inversion (Gal et al.) on the erased model",
        "templates": list(templates),
        "training_images": source,
        "fresh_seeds": fresh,
    }
    extra = {
        "objective_start": objective_start,
        "objective_end": objective_end,
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "loss_history": [round(x, 6) for x in losses[:: max(1, len(losses) // 200)]],
        "nearest_tokens": nearest,
        "learned_norm": float(learned.norm(dim=-1).mean()),
        "moved": float((learned - initial).norm(dim=-1).mean()),  # how far the word went from its initial one
        "mean_token_norm": float(token_embeddings(pipe).detach().float().norm(dim=-1).mean()),
        "word_contains_concept": bool(concept) and any(contains_concept(pipe, w, concept) for w in words(
            " ".join(nearest)
        )),
    }
    return Outcome(rows, protocol, extra)


def read_images(folder, resolution: int) -> np.ndarray:
    """(N, resolution, resolution, 3) uint8: every readable image in `folder`, centre-cropped and resized;
    ValueError for a folder that is missing or holds no readable image (`--images`)."""
    from pathlib import Path

    from PIL import Image, UnidentifiedImageError

    folder = Path(folder)
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "no such folder"
        raise ValueError(f"--images {folder}: {what} of images of the concept")
    out = []
    for path in sorted(folder.iterdir()):
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
                side = min(image.size)
                left, top = (image.width - side) // 2, (image.height - side) // 2
                square = image.crop((left, top, left + side, top + side)).resize((resolution, resolution))
                out.append(np.asarray(square))
        except (OSError, UnidentifiedImageError, ValueError):
            log.warning("skipped unreadable image %s", path)
    if not out:
        raise ValueError(f"--images {folder}: the folder holds no readable image of the concept")
    return np.stack(out)
