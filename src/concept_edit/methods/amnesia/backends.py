"""The three kinds of model Selective Amnesia trains, behind one small interface.

* `TextToImage`: a diffusers text-to-image pipeline (ShapesSD, SD 1.x/2.x, SDXL); data are VAE latents,
  conditions are rows of encoded prompts; the loss is L_simple (per-sample mean squared error of the noise,
  or of v for a v-prediction model), as the official `ddpm_forget.py` trains;
* `DigitsVAE`: the conditional VAE of digits world (`DigitsModel`) (data 8x8 images in [0, 1], conditions class
  labels); the loss is the negative ELBO;
* `DigitsDDPM`: the class-conditional DDPM of digits world (`DigitsModel`); the loss is L_simple.

Each gives: `loss(x, rows, timesteps, noise)` (one value per row), `draw(x, generator)` (training timesteps
and noise), `generate(rows, seed, stream)` (samples of the current model, no grad), `uniform(n, generator)`
(the uniform surrogate of the paper's section 3.2 in the model's data space), `parameter_names(group)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from concept_edit.methods.amnesia.config import GROUPS  # noqa: F401 - re-exported
from concept_edit.models.conditioning import Conditions, predict_noise
from concept_edit.models.loading import model_info
from concept_edit.models.targets import cross_attention_layers, denoiser
from concept_edit.training import step_generator
from concept_edit.worlds import world_of

OFFICIAL_SD_STEPS = 50  # DDIM steps of the official sampling (appendix B.2)


@dataclass
class Data:
    """Samples: x (images or latents) and the condition row of each."""

    x: torch.Tensor
    rows: torch.Tensor

    def __len__(self) -> int:
        return len(self.x)

    def take(self, index: torch.Tensor) -> Data:
        index = index.to(self.x.device)
        return Data(self.x[index], self.rows[index])

    @staticmethod
    def cat(parts: list[Data]) -> Data:
        return Data(torch.cat([p.x for p in parts]), torch.cat([p.rows for p in parts]))


class _Diffusion:
    """What both diffusion kinds share: training timesteps uniform on [0, T) and Gaussian noise."""

    num_timesteps: int
    device: torch.device

    def draw(self, x, generator) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.randint(0, self.num_timesteps, (len(x),), generator=generator)
        return t.to(self.device), torch.randn(x.shape, generator=generator).to(self.device)

    def noise_for(self, x0, count: int, generator) -> torch.Tensor:
        """Noise for `count` timesteps of one sample x0 (1, ...)."""
        return torch.randn((count, *x0.shape[1:]), generator=generator).to(self.device)


class TextToImage(_Diffusion):
    kind = "text-to-image"
    diffusion = True
    reduction = "mean"  # the official SD loss: batch means, plus lambda * the EWC sum

    def __init__(self, pipe, cond: Conditions, *, steps: int | None = None, guidance: float | None = None):
        from diffusers import DDIMScheduler

        self.pipe, self.cond = pipe, cond
        self.prefix, self.unet = denoiser(pipe)
        self.device = pipe.device
        self.train_scheduler = pipe.scheduler
        self.num_timesteps = int(pipe.scheduler.config.num_train_timesteps)
        self.prediction = pipe.scheduler.config.get("prediction_type", "epsilon")
        if self.prediction not in ("epsilon", "v_prediction"):
            raise ValueError(f"Selective Amnesia needs an epsilon or v-prediction model, not {self.prediction!r}")
        info = model_info(pipe)
        self.sampler = DDIMScheduler.from_config(pipe.scheduler.config)
        self.sampler.set_timesteps(steps or world_of(pipe).method_sampling_steps or OFFICIAL_SD_STEPS)
        self.guidance = info.default_guidance if guidance is None else guidance
        size = info.resolution // getattr(pipe, "vae_scale_factor", 8)
        self.shape = (self.unet.config.in_channels, size, size)
        self.resolution = info.resolution

    def parameter_names(self, group: str) -> list[str]:
        """`all` the UNet, `x` its cross-attention modules, `u` everything else (the paper's nudity choice)."""
        cross = [layer.path for layer in cross_attention_layers(self.pipe)]
        names = []
        for name, _ in self.unet.named_parameters():
            path = f"{self.prefix}.{name}"
            in_cross = any(path.startswith(c + ".") for c in cross)
            if group == "all" or (group == "x") == in_cross:
                names.append(path)
        if not names:
            raise ValueError(f"parameter group {group!r} matches no parameter of this model's denoiser")
        return names

    def loss(self, x, rows, timesteps, noise) -> torch.Tensor:
        timesteps = timesteps.to(self.device)
        noisy = self.train_scheduler.add_noise(x, noise, timesteps)
        out = predict_noise(self.unet, noisy.to(self.unet.dtype), timesteps, self.cond.take(rows)).float()
        target = noise if self.prediction == "epsilon" else self.train_scheduler.get_velocity(x, noise, timesteps)
        return (out - target).pow(2).flatten(1).mean(1)

    @torch.no_grad()
    def generate(self, rows: torch.Tensor, seed: int, stream: int, *, batch_size: int = 16, progress=False):
        """Guided DDIM latents of the current model, one generator per sample (independent of the batching)."""
        uncond = self.cond.take([0])  # row 0 is always "" (see methods.amnesia)
        out = []
        starts = range(0, len(rows), batch_size)
        for start in tqdm(starts, desc="amnesia: sampling", disable=not progress, leave=False):
            r = rows[start : start + batch_size]
            x = torch.cat([
                torch.randn((1, *self.shape), generator=step_generator(seed, start + k, stream)) for k in range(len(r))
            ]).to(self.device) * self.sampler.init_noise_sigma  # fmt: skip
            both = Conditions.cat([Conditions.cat([uncond] * len(r)), self.cond.take(r)])
            for t in self.sampler.timesteps:
                inp = self.sampler.scale_model_input(torch.cat([x, x]), t)
                eps_u, eps_c = predict_noise(self.unet, inp.to(self.unet.dtype), t, both).float().chunk(2)
                x = self.sampler.step(eps_u + self.guidance * (eps_c - eps_u), t, x).prev_sample
            out.append(x)
        return torch.cat(out)

    @torch.no_grad()
    def uniform(self, n: int, generator) -> torch.Tensor:
        """Images of uniform pixel noise (U[0, 1], fed to the VAE in [-1, 1]), encoded once into latents."""
        vae = self.pipe.vae
        out = []
        for _ in range(n):
            pixels = torch.rand((1, 3, self.resolution, self.resolution), generator=generator) * 2 - 1
            dist = vae.encode(pixels.to(self.device, vae.dtype)).latent_dist
            out.append(dist.sample(generator=generator).float() * vae.config.scaling_factor)
        return torch.cat(out)


class DigitsVAE:
    kind = "vae"
    diffusion = False
    reduction = "sum"  # the official VAE loss: batch sums (BCE + KL, reduction='sum'), plus lambda * EWC
    num_timesteps = 1

    def __init__(self, model):
        self.model, self.vae, self.device = model, model.vae, model.device
        self.latent_dim = self.vae.latent_dim

    def parameter_names(self, group: str) -> list[str]:
        if group != "all":
            raise ValueError(f"the digits VAE has no cross-attention: parameter group must be 'all', not {group!r}")
        return [f"vae.{n}" for n, _ in self.vae.named_parameters()]

    def loss(self, x, rows, timesteps, noise) -> torch.Tensor:  # noqa: ARG002 - one interface for all kinds
        return self.vae.neg_elbo(x, rows, noise=noise)

    def draw(self, x, generator):
        return torch.zeros(len(x), dtype=torch.long), torch.randn((len(x), self.latent_dim), generator=generator)

    @torch.no_grad()
    def generate(self, rows: torch.Tensor, seed: int, stream: int, *, batch_size: int = 4096, progress=False):
        out = []
        for start in range(0, len(rows), batch_size):
            gen = step_generator(seed, start, stream)
            out.append(self.model.sample(rows[start : start + batch_size], generator=gen))
        return torch.cat(out).to(self.device)

    def uniform(self, n: int, generator) -> torch.Tensor:
        return torch.rand((n, 1, 8, 8), generator=generator).to(self.device)


class DigitsDDPM(_Diffusion, DigitsVAE):
    """L_simple summed over pixels and averaged over the batch, as the official CIFAR code
    (`noise_estimation_loss_conditional`), so that its lambda (10) means the same here; the Fisher's
    timesteps see the null class 10% of the time, as its class dropout does when the official code
    estimates the Fisher (`null_row`, `null_share`)."""

    kind = "ddpm"
    diffusion = True
    reduction = "mean"
    null_share = 0.1

    def __init__(self, model, steps: int | None = None, guidance: float | None = None):
        self.model, self.unet, self.device = model, model.unet, model.device
        self.null_row = model.null_class
        self.num_timesteps = int(model.scheduler.config.num_train_timesteps)
        self.sampling = {"steps": steps, "guidance": guidance}

    def parameter_names(self, group: str) -> list[str]:
        if group != "all":
            raise ValueError(f"the digits DDPM has no cross-attention: parameter group must be 'all', not {group!r}")
        return [f"unet.{n}" for n, _ in self.unet.named_parameters()]

    def loss(self, x, rows, timesteps, noise) -> torch.Tensor:
        pixels = x[0].numel()  # the helper's loss is a mean over pixels; the official one sums them
        return self.model.loss_terms(x, rows, timesteps.to(self.device), noise) * pixels

    @torch.no_grad()
    def generate(self, rows: torch.Tensor, seed: int, stream: int, *, batch_size: int = 256, progress=False):
        out = []
        starts = range(0, len(rows), batch_size)
        for start in tqdm(starts, desc="amnesia: sampling", disable=not progress, leave=False):
            gen = step_generator(seed, start, stream)
            out.append(self.model.sample(rows[start : start + batch_size], generator=gen, **self.sampling))
        return torch.cat(out).to(self.device)


def backend_for(pipe, cond: Conditions | None = None, **sampling) -> TextToImage | DigitsVAE | DigitsDDPM:
    kind = getattr(pipe, "kind", None)
    if kind == "vae":
        return DigitsVAE(pipe)
    if kind == "ddpm":
        return DigitsDDPM(pipe, **sampling)
    if not isinstance(getattr(pipe, "unet", None), nn.Module):
        raise ValueError(f"Selective Amnesia cannot train a {type(pipe).__name__}: it has no UNet or digits model")
    return TextToImage(pipe, cond, **sampling)
