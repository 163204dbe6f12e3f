"""Load the shipped digits models by name, as pipeline-like `DigitsModel` containers, and the digits classifier.

Each model ships as one safetensors file in `weights/` whose metadata holds the constructor config as JSON,
so loading needs no other file and no pickle. `DigitsModel` looks enough like a diffusers pipeline for the
edit system: its modules are attributes (`vae`, or `unet` plus `scheduler`), listed by `components`, so a
parameter path such as "vae.decoder.0.weight" resolves through `getattr(model, "vae")`. Two unified
methods serve the Selective Amnesia method on either model: `sample(labels)` and the per-sample
`neg_elbo(x, labels)`. Nothing here imports scikit-learn.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from concept_edit.io import save_tensors
from concept_edit.models.info import ModelInfo, ModelLoadError, default_device
from concept_edit.worlds.digits import ddpm
from concept_edit.worlds.digits.classifier import DigitsClassifier
from concept_edit.worlds.digits.data import CLASSES, IMAGE_SIZE
from concept_edit.worlds.digits.vae import ConditionalVAE, randn

WEIGHTS_DIR = Path(__file__).parent / "weights"
DIGITS_MODELS = ("digits-vae", "digits-ddpm")
WEIGHT_FILES = {"vae": "vae.safetensors", "ddpm": "ddpm.safetensors", "classifier": "classifier.safetensors"}
FORMAT = "concept_edit.digits/1"  # the weight files' format name: unchanged by the move into worlds/
TRAIN_COMMAND = "python -m concept_edit.worlds.digits.train {kind}"


# -- weight files ------------------------------------------------------------------------------------------------
def save_weights(path: str | Path, kind: str, module: nn.Module, config: dict, **extra: Any) -> None:
    """Write a module's float32 state dict atomically with its kind and constructor config (and `extra`) as JSON."""
    metadata = {"format": FORMAT, "kind": kind, "config": json.dumps(config)}
    metadata.update({key: json.dumps(value) for key, value in extra.items()})
    state = {k: v.detach().float() if v.is_floating_point() else v for k, v in module.state_dict().items()}
    save_tensors(path, state, metadata=metadata)


def read_weights(path: str | Path, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and the decoded metadata of a file written by `save_weights` for `kind`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"the digits {kind} weights are missing ({path}); train them with `{TRAIN_COMMAND.format(kind=kind)}`"
        )
    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    if raw.get("format") != FORMAT or raw.get("kind") != kind:
        raise ModelLoadError(f"{path} is not a digits {kind} weight file (format {raw.get('format')!r})")
    meta = {k: json.loads(v) for k, v in raw.items() if k not in ("format", "kind")}
    return tensors, meta


def _build(kind: str, path: Path | None = None) -> tuple[nn.Module, dict[str, Any]]:
    state, meta = read_weights(path or WEIGHTS_DIR / WEIGHT_FILES[kind], kind)
    if kind == "vae":
        module = ConditionalVAE(**meta["config"])
    elif kind == "ddpm":
        from diffusers import UNet2DModel

        module = UNet2DModel.from_config(meta["config"])
    else:
        module = DigitsClassifier(**meta["config"])
    module.load_state_dict(state)
    return module.eval(), meta


# -- the pipeline-like container -------------------------------------------------------------------------------
class DigitsModel:
    """A digits generator (`kind` "vae" or "ddpm") with the parts of a pipeline the edit system uses."""

    classes = CLASSES

    def __init__(self, name: str, *, vae: ConditionalVAE | None = None, unet=None, scheduler=None) -> None:
        if (vae is None) == (unet is None) or (unet is None) != (scheduler is None):
            raise ValueError("a DigitsModel holds either a vae, or a unet and its scheduler")
        self.kind = "vae" if vae is not None else "ddpm"
        if vae is not None:
            self.vae = vae
        else:
            self.unet = unet
            self.scheduler = scheduler
        steps, guidance = (1, 0.0) if self.kind == "vae" else (ddpm.DEFAULT_STEPS, ddpm.DEFAULT_GUIDANCE)
        self.concept_edit_info = ModelInfo(
            spec=name, world="digits", default_steps=steps, default_guidance=guidance, resolution=IMAGE_SIZE
        )

    def __repr__(self) -> str:
        return f"DigitsModel({self.concept_edit_info.spec!r}, kind={self.kind!r})"

    @property
    def components(self) -> dict[str, nn.Module]:
        """The model's modules by attribute name: {"vae": ...} or {"unet": ...}."""
        return {"vae": self.vae} if self.kind == "vae" else {"unet": self.unet}

    @property
    def _module(self) -> nn.Module:
        return next(iter(self.components.values()))

    @property
    def device(self) -> torch.device:
        return next(self._module.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self._module.parameters()).dtype

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> DigitsModel:
        """Move (and cast, when `dtype` differs) the model's module in place; returns self."""
        if device is not None:
            self._module.to(device)
        if dtype is not None and dtype != self.dtype:
            self._module.to(dtype)
        return self

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """Accepted and ignored: a DigitsModel shows no progress bar (pipelines' API, for compatibility)."""

    def _labels(self, labels: torch.Tensor | list[int]) -> torch.Tensor:
        labels = torch.as_tensor(labels)
        if labels.numel() == 0:
            labels = labels.long()  # torch.as_tensor([]) is float
        if labels.ndim != 1 or labels.is_floating_point() or labels.is_complex():
            raise ValueError(f"labels must be a 1-d integer tensor, got {labels.dtype} of shape {tuple(labels.shape)}")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(CLASSES)):
            raise ValueError(f"labels must be classes 0..{len(CLASSES) - 1}, got {labels.tolist()}")
        return labels.to(self.device, torch.long)

    @torch.no_grad()
    def sample(
        self,
        labels: torch.Tensor | list[int],
        generator: torch.Generator | None = None,
        *,
        guidance: float | None = None,
        steps: int | None = None,
    ) -> torch.Tensor:
        """Images [B, 1, 8, 8] in [0, 1], one of each class in `labels`; all randomness from `generator`.

        The DDPM samples with DDIM in `steps` (default 50) steps and guidance w (default 2.0, the Selective
        Amnesia convention: 0 is plain conditional); the VAE ignores both.
        """
        labels = self._labels(labels)
        if self.kind == "vae":
            return self.vae.sample(labels, generator)
        info = self.concept_edit_info
        return ddpm.sample(
            self.unet,
            self.scheduler,
            labels,
            generator,
            guidance=info.default_guidance if guidance is None else guidance,
            steps=info.default_steps if steps is None else steps,
        )

    def neg_elbo(
        self,
        x: torch.Tensor,
        labels: torch.Tensor | list[int],
        generator: torch.Generator | None = None,
        timesteps: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """Per-sample loss [B] of images x [B, 1, 8, 8] in [0, 1] (differentiable in the weights).

        VAE: the negative ELBO, its reparameterisation noise drawn from `generator`. DDPM: the simplified loss
        at `timesteps` (an int or [B]; uniform on [0, 1000) from `generator` when None), then the noise from
        `generator`.
        """
        labels = self._labels(labels)
        x = x.to(self.device, self.dtype)
        if len(x) != len(labels):
            raise ValueError(f"{len(x)} images but {len(labels)} labels")
        if self.kind == "vae":
            noise = randn((len(x), self.vae.latent_dim), generator, self.device, self.dtype)
            return self.vae.neg_elbo(x, labels, noise)
        if timesteps is None:
            timesteps = ddpm.random_timesteps(len(x), generator, self.device)
        else:
            timesteps = torch.as_tensor(timesteps, device=self.device).long().expand(len(x))
        noise = randn(tuple(x.shape), generator, self.device, self.dtype)
        return ddpm.neg_elbo_terms(self.unet, self.scheduler, x, labels, timesteps, noise)

    @property
    def null_class(self) -> int | None:
        """The DDPM's unconditional class row (classifier-free guidance's null label); None for the VAE."""
        return ddpm.NULL_CLASS if self.kind == "ddpm" else None

    def loss_terms(self, x: torch.Tensor, rows: torch.Tensor, timesteps: torch.Tensor, noise: torch.Tensor):
        """The DDPM's per-sample simplified loss at given timesteps and noise; `rows` may hold `null_class`."""
        return ddpm.neg_elbo_terms(self.unet, self.scheduler, x, rows, timesteps, noise)


def load_digits_model(
    name: str, device: str | torch.device | None = None, dtype: torch.dtype | None = None
) -> DigitsModel:
    """The shipped "digits-vae" or "digits-ddpm" on `device` (default: CUDA if present, else CPU), eval mode.

    dtype defaults to float32 (the models are tiny). An unknown name raises `ModelLoadError` (a ValueError).
    """
    if name not in DIGITS_MODELS:
        raise ModelLoadError(f"unknown digits model {name!r}; the digits models are {', '.join(DIGITS_MODELS)}")
    kind = name.removeprefix("digits-")
    module, meta = _build(kind)
    if kind == "vae":
        model = DigitsModel(name, vae=module)
    else:
        model = DigitsModel(name, unet=module, scheduler=ddpm.new_scheduler(**meta.get("scheduler", {})))
    return model.to(device if device is not None else default_device(), dtype or torch.float32)


def load_classifier(device: str | torch.device | None = None) -> DigitsClassifier:
    """The shipped digits classifier in eval mode with frozen weights, on `device` (default: CUDA if present)."""
    module, _ = _build("classifier")
    return module.requires_grad_(False).to(device if device is not None else default_device())
