"""The models Selective Amnesia trains, behind one small interface.

* `TextToImage`: a diffusers text-to-image pipeline (ShapesSD, SD 1.x/2.x, SDXL); data are VAE latents,
  conditions are rows of encoded prompts; the loss is L_simple (per-sample mean squared error of the noise,
  or of v for a v-prediction model), as the official `ddpm_forget.py` trains;
* a world's own adapter for models that are not text-to-image pipelines (`World.backend("amnesia", pipe)`: the
  digits world's conditional VAE, loss the negative ELBO, and class-conditional DDPM, loss L_simple).

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


class Diffusion:
    """What both diffusion kinds share: training timesteps uniform on [0, T) and Gaussian noise."""

    num_timesteps: int
    device: torch.device

    def draw(self, x, generator) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.randint(0, self.num_timesteps, (len(x),), generator=generator)
        return t.to(self.device), torch.randn(x.shape, generator=generator).to(self.device)

    def noise_for(self, x0, count: int, generator) -> torch.Tensor:
        """Noise for `count` timesteps of one sample x0 (1, ...)."""
        return torch.randn((count, *x0.shape[1:]), generator=generator).to(self.device)


class TextToImage(Diffusion):
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
        return self.loss_given(x, self.cond.take(rows), timesteps, noise)

    def loss_given(self, x, cond: Conditions, timesteps, noise) -> torch.Tensor:
        """`loss` with the conditioning given row by row (an adversarial prompt's, `amnesia.adversarial`)."""
        timesteps = timesteps.to(self.device)
        noisy = self.train_scheduler.add_noise(x, noise, timesteps)
        out = predict_noise(self.unet, noisy.to(self.unet.dtype), timesteps, cond).float()
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


def backend_for(pipe, cond: Conditions | None = None, **sampling):
    """The adapter Selective Amnesia trains `pipe` through: its world's own (the class-conditional digits models'),
    else the text-to-image one."""
    own = world_of(pipe).backend("amnesia", pipe, **sampling)
    if own is not None:
        return own
    if not isinstance(getattr(pipe, "unet", None), nn.Module):
        raise ValueError(f"Selective Amnesia cannot train a {type(pipe).__name__}: it has no UNet or digits model")
    return TextToImage(pipe, cond, **sampling)
