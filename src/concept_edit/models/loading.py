"""Turn a model spec into a text-to-image diffusers pipeline.

A spec is `shapes` (the bundled ShapesSD), a local diffusers folder, or a Hugging Face hub id
(Stable Diffusion 1.x/2.x, SDXL, or any pipeline with a UNet denoiser fed by text encoders); or
`digits-vae` / `digits-ddpm`, the class-conditional digits models Selective Amnesia is shown on, which
are not text-to-image pipelines and take only the `amnesia` method. Weights load
from safetensors only unless `allow_pickle=True`. The loaded pipeline carries a `ModelInfo` describing it.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from concept_edit.hub import hub_unreachable, offline_note

log = logging.getLogger(__name__)
SHAPES = "shapes"
DIGITS = ("digits-vae", "digits-ddpm")  # concept_edit.digits: a conditional VAE and DDPM of 8x8 digits


class ModelLoadError(ValueError):
    """A spec that cannot be turned into a pipeline; the message says what to do."""


@dataclass(frozen=True)
class ModelInfo:
    """What the library needs to know about a loaded pipeline, decided once at load time."""

    spec: str
    world: str | None  # "shapes" when the shapes-world oracle and suites apply
    default_steps: int
    default_guidance: float
    resolution: int


def model_info(pipe) -> ModelInfo:
    """The `ModelInfo` of a pipeline loaded by `load_pipeline`, or a best guess for one built by hand."""
    info = getattr(pipe, "concept_edit_info", None)
    if info is not None:
        return info
    unet = pipe.unet
    scale = getattr(pipe, "vae_scale_factor", 8)
    name = getattr(pipe, "name_or_path", None) or pipe.config.get("_name_or_path") or type(pipe).__name__
    return ModelInfo(
        spec=str(name),
        world=None,
        default_steps=30,
        default_guidance=7.5,
        resolution=int(unet.config.sample_size) * scale,
    )


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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
    if spec in DIGITS:  # not text-to-image: class-conditional models of 8x8 digits (Selective Amnesia)
        from concept_edit.digits.loading import load_digits_model

        return load_digits_model(spec, device, dtype)
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    if spec == SHAPES:
        from concept_edit.shapes.pipeline import (
            DEFAULT_GUIDANCE,
            DEFAULT_STEPS,
            IMAGE_SIZE,
            load_shapes_pipeline,
        )

        pipe = load_shapes_pipeline(device=device, dtype=dtype)
        info = ModelInfo(SHAPES, "shapes", DEFAULT_STEPS, DEFAULT_GUIDANCE, IMAGE_SIZE)
    else:
        _refuse_typo(spec)
        pipe = _load_diffusers(spec, dtype, allow_pickle)
        pipe.to(device)
        guess = model_info(pipe)
        world = "shapes" if _is_shapes_export(spec) else None
        info = ModelInfo(spec, world, guess.default_steps, guess.default_guidance, guess.resolution)
        if world:
            from concept_edit.shapes.pipeline import DEFAULT_GUIDANCE, DEFAULT_STEPS

            info = ModelInfo(spec, world, DEFAULT_STEPS, DEFAULT_GUIDANCE, guess.resolution)
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
    close = difflib.get_close_matches(spec.lower(), [SHAPES, *DIGITS], n=2, cutoff=0.7)
    if close:
        raise ModelLoadError(f"unknown model {spec!r}: did you mean {' or '.join(repr(c) for c in close)}?")


def _looks_like_path(spec: str) -> bool:
    """A spec a user meant as a folder: absolute, ./ or ../ or ~, or with more than one slash (org/name is a hub id)."""
    return spec.startswith(("/", ".", "~")) or spec.count("/") > 1 or os.sep != "/" and os.sep in spec


def _is_shapes_export(spec: str) -> bool:
    """A folder written by `concept-edit export` from ShapesSD (it records its world in concept_edit.json)."""
    marker = Path(spec) / "concept_edit.json"
    try:
        return json.loads(marker.read_text(encoding="utf-8")).get("world") == "shapes"
    except (OSError, ValueError, AttributeError):
        return False


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
