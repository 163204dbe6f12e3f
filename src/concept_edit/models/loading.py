"""Turn a model spec into a text-to-image diffusers pipeline.

A spec is a model a world loads by name (`shapes`, the bundled ShapesSD; `digits-vae` / `digits-ddpm`, the
class-conditional digits models Selective Amnesia is shown on, which are not text-to-image pipelines and take
only the `amnesia` method), a local diffusers folder, or a Hugging Face hub id (Stable Diffusion 1.x/2.x, SDXL,
or any pipeline with a UNet denoiser fed by text encoders). Weights load from safetensors only unless
`allow_pickle=True`. The loaded pipeline carries a `ModelInfo` naming its world (`concept_edit.worlds.world_of`).
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from pathlib import Path

import torch

from concept_edit.hub import hub_unreachable, offline_note
from concept_edit.models.info import ModelInfo, ModelLoadError, default_device, model_info
from concept_edit.worlds import model_specs, world_for_spec, worlds

log = logging.getLogger(__name__)
__all__ = ["ModelInfo", "ModelLoadError", "default_device", "load_pipeline", "model_info"]


def load_pipeline(
    spec: str, device: str | torch.device | None = None, dtype: torch.dtype | None = None, *, allow_pickle: bool = False
):
    """Load `spec` ("shapes", a local folder, or a hub id) on `device` (default: CUDA if present, else CPU).

    dtype defaults to float16 on CUDA and float32 on CPU. Raises `ModelLoadError` with one clear message
    when the spec cannot be loaded (not cached and hub unreachable, pickled weights only, not text-to-image).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ModelLoadError("the model spec is empty: pass 'shapes', a local folder or a hub id")
    device = _check_device(device) if device is not None else default_device()
    world = world_for_spec(spec)
    if world is not None and not world.text_to_image:  # class-conditional models: their own dtype default
        return world.load(spec, device, dtype)
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    if world is not None:
        pipe = world.load(spec, device, dtype)
        info = model_info(pipe)
    else:
        _refuse_typo(spec)
        pipe = _load_diffusers(spec, dtype, allow_pickle)
        pipe.to(device)
        guess = model_info(pipe)
        world = _exported_from(spec)  # a folder `concept-edit export` wrote keeps its world's judge and suites
        steps, guidance = (world.default_steps, world.default_guidance) if world else (guess.default_steps,
                                                                                      guess.default_guidance)
        info = ModelInfo(spec, world.name if world else None, steps, guidance, guess.resolution)
    _check_text_to_image(pipe, spec)
    pipe.set_progress_bar_config(disable=True)
    pipe.concept_edit_info = info
    return pipe


def _check_device(device: str | torch.device) -> torch.device:
    """The device, if this machine has it; ModelLoadError saying which devices it has otherwise."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelLoadError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(f"device {str(device)!r} was asked for, but this machine has no CUDA device; use cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ModelLoadError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError("device 'mps' was asked for, but this machine has no Apple GPU; use cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ModelLoadError(f"device {str(device)!r} is not supported; use cpu, cuda, cuda:N or mps")
    return device


def _refuse_typo(spec: str) -> None:
    """A spec close to a built-in name ('shape', 'Shapes', 'digits') and naming no folder is a typo, not a hub id:
    say so before any hub lookup (which would end, minutes later offline, in 'not in the cache')."""
    if "/" in spec or Path(spec).expanduser().exists():
        return
    close = difflib.get_close_matches(spec.lower(), model_specs(), n=2, cutoff=0.7)
    if close:
        raise ModelLoadError(f"unknown model {spec!r}: did you mean {' or '.join(repr(c) for c in close)}?")


def _looks_like_path(spec: str) -> bool:
    """A spec a user meant as a folder: absolute, ./ or ../ or ~, or with more than one slash (org/name is a hub id)."""
    return spec.startswith(("/", ".", "~")) or spec.count("/") > 1 or os.sep != "/" and os.sep in spec


def _exported_from(spec: str):
    """The world a folder written by `concept-edit export` came from (it records it in concept_edit.json)."""
    try:
        marker = json.loads((Path(spec) / "concept_edit.json").read_text(encoding="utf-8"))
        return next((w for w in worlds().values() if w.owns_export(marker)), None)
    except (OSError, ValueError, AttributeError):
        return None


def _load_diffusers(spec: str, dtype: torch.dtype, allow_pickle: bool):
    from diffusers import DiffusionPipeline

    kwargs = {"torch_dtype": dtype, "safety_checker": None}
    if not allow_pickle:
        kwargs["use_safetensors"] = True
    local = Path(spec).expanduser()
    if not local.exists() and _looks_like_path(spec):
        raise ModelLoadError(f"no such folder: {spec} (a model is 'shapes', a local diffusers folder or a hub id)")
    if local.exists():
        if not (local / "model_index.json").exists():
            raise ModelLoadError(f"{spec} is not a diffusers pipeline folder (it has no model_index.json)")
        try:
            return DiffusionPipeline.from_pretrained(str(local), **kwargs)
        except (OSError, ValueError, RuntimeError) as err:
            raise _explain(spec, err, allow_pickle, folder=local) from None
    try:
        return DiffusionPipeline.from_pretrained(spec, local_files_only=True, **kwargs)
    except (OSError, ValueError) as cached_err:
        if hub_unreachable():  # offline (or HF_HUB_OFFLINE): say so at once, not after minutes of retries
            raise _explain(spec, cached_err, allow_pickle, offline=True) from None
    try:
        return DiffusionPipeline.from_pretrained(spec, **kwargs)
    except Exception as err:  # noqa: BLE001 - hub/network errors come in many types; all mean "cannot load"
        raise _explain(spec, err, allow_pickle, offline=True) from None


def _explain(
    spec: str, err: Exception, allow_pickle: bool, offline: bool = False, folder: Path | None = None
) -> ModelLoadError:
    text = str(err)
    pickled = _pickled_only(folder) if folder is not None else []
    if pickled and not allow_pickle:
        return ModelLoadError(
            f"{spec}: {', '.join(pickled)} has only pickled weights (.bin/.ckpt), which are refused because "
            "unpickling can run arbitrary code; pass allow_pickle=True (CLI: --allow-pickle) only if you trust "
            "the source"
        )
    if folder is not None:
        first = text.splitlines()[0] if text else type(err).__name__
        return ModelLoadError(f"cannot load {spec}: its weights are damaged or incomplete ({first[:300]})")
    if "safetensors" in text.lower() and not allow_pickle:
        return ModelLoadError(
            f"{spec} has no safetensors weights, only pickled checkpoints (.bin/.ckpt), which are refused "
            "because unpickling can run arbitrary code; pass allow_pickle=True (CLI: --allow-pickle) only if "
            "you trust the source"
        )
    if offline:
        return ModelLoadError(
            f"cannot load model {spec!r}: there is no local folder of that name, it is not in the local Hugging "
            f"Face cache and the hub could not be reached{offline_note()}. Download it first on a machine with "
            f"internet (`hf download {spec}`), or pass a local diffusers folder. ({type(err).__name__})"
        )
    return ModelLoadError(f"cannot load model {spec!r}: {text.splitlines()[0] if text else type(err).__name__}")


def _pickled_only(folder: Path) -> list[str]:
    """The component folders that hold pickled weights (.bin, .ckpt, .pt) and no safetensors file."""
    out = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = [f.suffix for f in sub.iterdir() if f.is_file()]
        if any(x in (".bin", ".ckpt", ".pt", ".pth") for x in files) and ".safetensors" not in files:
            out.append(sub.name)
    return out


def _check_text_to_image(pipe, spec: str) -> None:
    missing = [name for name in ("unet", "text_encoder", "tokenizer") if getattr(pipe, name, None) is None]
    if missing:
        raise ModelLoadError(
            f"{spec} ({type(pipe).__name__}) is not a UNet text-to-image pipeline: it has no {', '.join(missing)}"
        )
