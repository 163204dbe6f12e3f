"""Generate evaluation images once, keep them in an image store, resume after an interruption, shard them
across processes (one per GPU, with `accelerate launch`).

An image's key is the sha256 of what decides its pixels: the model spec and a hash of all its weights
(`model_hash`), the identities of the edits applied, in order (`edit_identity`), the protocol (`protocol`:
steps, resolution, scheduler class and config, dtype, the device the noise is drawn on) and the prompt,
seed and guidance. The same request reads the PNGs back without generating; a change to any of these gives
new keys, so one store holds several models, edit sets and protocols side by side and never mixes them.
The layout on disk, and how damaged files are caught, is in `concept_edit.evaluation.image_store`.

* Edits are applied here, by `generate_stored` (`concept_edit.edit.applied`, only when something is
  missing), not by the caller: the store keys images by them. A pipeline that already holds applied edits
  is refused, since the store could not tell them apart from the base model.
* Resume: each batch is stored as soon as it is drawn, so an interrupted run (Ctrl-C, a crash) keeps every
  finished batch; the same call again generates only what is missing.
* Several processes: the distinct keys of a request are dealt out by position (the i-th to process
  i % n); each process generates the ones of its share the store lacks and appends to its own index file;
  then all wait for each other and the main process reads every image. An image depends only on its own
  prompt, seed, model and protocol (each has its own seeded generator, see `concept_edit.generation`), so
  the result does not depend on the number of processes.
* Batching changes an image by float noise at most. Measured on CPU (float32, one thread), batch 1 vs 4 vs
  8 and a process's shard batched alone: identical bytes on the tiny random SD-1.x test pipeline; on ShapesSD
  at most 1 uint8 level on ~1e-4 of the values. A store filled with another batch size or process count is
  therefore reused as it is.
* GPU: images are drawn in the pipeline's own dtype (float16 on CUDA by default, bfloat16 if loaded so;
  see `load_pipeline(dtype=...)`), which is part of the key, at the batch size the caller chooses. Attention
  is diffusers' default processor under torch 2, `AttnProcessor2_0`, i.e. PyTorch's
  scaled_dot_product_attention (flash / memory-efficient kernels on GPU): checked on ShapesSD and the tiny
  test pipelines; each index line records the processor classes its image was drawn with.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from datetime import datetime, timezone

import numpy as np
import torch
from tqdm.auto import tqdm

from concept_edit.edit import Edit, applied
from concept_edit.edit.state import state_of
from concept_edit.evaluation.image_store import ImageStore, edit_identity, item_key, model_hash, protocol
from concept_edit.generation import generate, to_array
from concept_edit.models.loading import model_info
from concept_edit.processes import Group as _Group
from concept_edit.processes import process_device
from concept_edit.processes import process_group as _group
from concept_edit.validation import check_number, check_seed

__all__ = ["ImageStore", "edit_identity", "generate_stored", "model_hash", "process_device", "protocol"]

log = logging.getLogger(__name__)


# -- the request --------------------------------------------------------------------------------------------------
def _items(pipe, prompts, seeds, edits, steps, guidance, guidances) -> list[dict]:
    """The key fields of every requested image, in order."""
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    if guidances is not None and len(guidances) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(guidances)} guidances")
    if state_of(pipe).stack:
        raise ValueError(
            "the pipeline already has edits applied; pass them as edits= instead, so that the store keys the "
            "images by them"
        )
    info = model_info(pipe)
    steps = check_number("steps", info.default_steps if steps is None else steps, low=1, integer=True)
    guidance = info.default_guidance if guidance is None else guidance
    guidances = [guidance] * len(prompts) if guidances is None else [guidance if g is None else g for g in guidances]
    common = {
        "model": info.spec,
        "base_hash": model_hash(pipe),
        "edits": [edit_identity(e) for e in edits],
        "protocol": protocol(pipe, steps),
    }
    return [
        {**common, "prompt": p, "seed": check_seed(s), "guidance": float(check_number("guidance", g, low=0))}
        for p, s, g in zip(prompts, seeds, guidances, strict=True)
    ]


# -- generation ---------------------------------------------------------------------------------------------------
def generate_stored(
    pipe,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    store: str | os.PathLike | ImageStore,
    edits: Sequence[Edit] = (),
    steps: int | None = None,
    guidance: float | None = None,
    guidances: Sequence[float | None] | None = None,
    batch_size: int = 8,
    progress: bool = True,
    process_index: int | None = None,
    num_processes: int | None = None,
    allow_repeat: bool = False,
) -> np.ndarray | None:
    """(N, H, W, 3) uint8 images for (prompt, seed) pairs with `edits` applied, read from `store` where it has
    them and generated (then stored) where it does not.

    guidances: a guidance scale per entry (I2P prompts carry their own); None entries take `guidance`.
    Under `accelerate launch` with several processes, every process must make the same call: each
    generates its share, and the main process returns all images, the others None. With process_index and
    num_processes given by hand, the call only fills its share and returns None; once every share is done,
    the same call without them reads the images (and generates whatever a share left out).
    """
    store = store if isinstance(store, ImageStore) else ImageStore(store)
    batch_size = check_number("batch_size", batch_size, low=1, integer=True)
    items = _items(pipe, prompts, seeds, edits, steps, guidance, guidances)
    if not items:
        size = model_info(pipe).resolution
        return np.zeros((0, size, size, 3), np.uint8)
    group = _group(process_index, num_processes)
    if group.wait is not None and pipe.device.type == "cuda" and pipe.device != group.device:
        raise ValueError(
            f"process {group.rank} of {group.count} owns {group.device} but the model is on {pipe.device}: load "
            "it on concept_edit.evaluation.store.process_device()"
        )
    by_key = {item_key(item): item for item in items}
    share = list(by_key)[group.rank :: group.count]
    index = store.index()
    images = {k: img for k in share if (img := store.load(k, index.get(k, ()))) is not None}
    missing = [by_key[k] for k in share if k not in images]
    _announce(store, len(items), len(by_key), len(share) - len(missing), missing, group, progress)
    if missing:
        with applied(pipe, *edits, allow_repeat=allow_repeat):
            images.update(_fill(pipe, store, missing, group.rank, batch_size, progress))
    if group.count > 1:
        if group.wait is None:
            return None
        group.wait()
        if group.rank != 0:
            return None
        index = store.index()
        for key in by_key.keys() - images.keys():
            image = store.load(key, index.get(key, ()))
            if image is None:
                raise RuntimeError(f"{store}: an image of another process's share is missing; run the command again")
            images[key] = image
    return np.stack([images[item_key(item)] for item in items])


def announce(
    pipe,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    store: str | os.PathLike | ImageStore,
    passes: Sequence[Sequence[Edit]] = ((),),
    steps: int | None = None,
    guidance: float | None = None,
    guidances: Sequence[float | None] | None = None,
    progress: bool = True,
) -> None:
    """Say once, per pass (a set of edits: the edited images, the unedited baseline), what the store holds of a
    whole request and what is left to draw (by its index, no image read): `evaluate` asks for a suite chunk by
    chunk and announces the whole here first. Images the store holds for other models, edits or protocols (none
    of these passes) are counted, and kept: keys never mix them."""
    store = store if isinstance(store, ImageStore) else ImageStore(store)
    group, index = _group(None, None), store.index()
    requests = [{item_key(i): i for i in _items(pipe, prompts, seeds, e, steps, guidance, guidances)} for e in passes]
    other = len(index.keys() - set().union(*(r.keys() for r in requests)))
    for number, by_key in enumerate(requests):
        share = list(by_key)[group.rank :: group.count]
        missing = [by_key[k] for k in share if k not in index]
        _announce(store, len(prompts), len(by_key), len(share) - len(missing), missing, group, progress,
                  other if number == len(requests) - 1 else 0)  # fmt: skip


def _fill(pipe, store: ImageStore, missing: list[dict], rank: int, batch_size: int, progress: bool) -> dict:
    """Generate and store `missing`, batch by batch (equal guidance within a batch); key -> image."""
    drawn_with = _drawn_with(pipe)
    by_guidance: dict[float, list[dict]] = {}
    for item in missing:
        by_guidance.setdefault(item["guidance"], []).append(item)
    batches = [group[i : i + batch_size] for group in by_guidance.values() for i in range(0, len(group), batch_size)]
    out, started = {}, time.perf_counter()
    bar = tqdm(total=len(missing), desc="generate", unit="image", disable=not progress, dynamic_ncols=True)
    try:
        for number, batch in enumerate(batches):
            steps, guidance = batch[0]["protocol"]["steps"], batch[0]["guidance"]
            prompts, seeds = [b["prompt"] for b in batch], [b["seed"] for b in batch]
            images = to_array(generate(pipe, prompts, seeds, steps=steps, guidance=guidance, batch_size=len(batch)))
            store.add(rank, batch, images, {**drawn_with, "time": datetime.now(timezone.utc).isoformat()})
            out.update({item_key(b): image for b, image in zip(batch, images, strict=True)})
            bar.update(len(batch))
            if number == 0 and len(batches) > 1:
                rest = [item for b in batches[1:] for item in b]
                seconds = (time.perf_counter() - started) / _evaluations(batch) * _evaluations(rest)
                _say(
                    f"first batch: {len(batch)} images in {time.perf_counter() - started:.1f} s; about "
                    f"{_duration(seconds)} for the remaining {len(rest)} (less if the first batch paid for warm-up)",
                    progress,
                )
    except KeyboardInterrupt:
        log.warning(
            "interrupted: %d of the %d missing images are stored in %s; run the same command again to resume",
            len(out),
            len(missing),
            store.root,
        )
        raise
    finally:
        bar.close()
    return out


def _drawn_with(pipe) -> dict:
    """How the images were drawn, beside the key: for the record, not for matching."""
    import diffusers

    attention = sorted({type(p).__name__ for p in getattr(pipe.unet, "attn_processors", {}).values()})
    return {
        "device": str(pipe.device),
        "attention": attention,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
    }


def _evaluations(items: Sequence[dict]) -> int:
    """UNet evaluations: steps per image, twice with classifier-free guidance (guidance > 1, as diffusers)."""
    return sum(item["protocol"]["steps"] * (2 if item["guidance"] > 1 else 1) for item in items)


def _announce(store, total: int, distinct: int, stored: int, missing: list[dict], group: _Group, progress: bool,
              other: int = 0):  # fmt: skip
    """The cost before any work: what is stored, what is left, in UNet evaluations."""
    share = f"; process {group.rank} of {group.count} takes {stored + len(missing)}" if group.count > 1 else ""
    cost = ""
    if missing:
        cfg = sum(m["guidance"] > 1 for m in missing)
        doubled = " x 2 (guidance)" if cfg == len(missing) else f" (x 2 for the {cfg} with guidance)" if cfg else ""
        steps = missing[0]["protocol"]["steps"]
        cost = f": {len(missing)} images x {steps} steps{doubled} = {_evaluations(missing)} UNet evaluations"
    others = f" (it also holds {other} images of other models, edits or protocols: kept apart)" if other else ""
    _say(
        f"image store {store.root}: {total} images asked for ({distinct} distinct){share}: {stored} already stored, "
        f"{len(missing)} to generate{cost}{others}",
        progress,
    )


def _say(message: str, progress: bool) -> None:
    if progress:
        tqdm.write(message)
    else:
        log.info(message)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"
