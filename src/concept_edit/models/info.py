"""What the library knows about a loaded model, decided once at load time (light: no torch at import)."""

from __future__ import annotations

from dataclasses import dataclass


class ModelLoadError(ValueError):
    """A spec that cannot be turned into a pipeline; the message says what to do."""


@dataclass(frozen=True)
class ModelInfo:
    """What the library needs to know about a loaded pipeline, decided once at load time."""

    spec: str
    world: str | None  # the name of its world (`concept_edit.worlds`); None: a real model no world claims
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


def default_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
