"""A class-conditional DDPM for 8x8 digits: a small diffusers `UNet2DModel` with a class embedding.

* classes 0..9 plus a null class (index 10) for classifier-free guidance: training replaces the class by
  the null class 10% of the time;
* images are scaled from [0, 1] to [-1, 1] on the way in and back on the way out;
* `DDPMScheduler` with a linear beta schedule over 1000 steps, epsilon prediction; the training loss is
  the simplified DDPM loss (per-sample mean squared error of the predicted noise);
* sampling runs DDIM (50 steps by default) with guidance in the convention of the Selective Amnesia
  code: eps = (1 + w) * eps(class) - w * eps(null), so w = 0 is plain conditional sampling and the
  paper's w = 2.0 equals a diffusers `guidance_scale` of 3.0.
"""

from __future__ import annotations

import torch

from concept_edit.worlds.digits.vae import randn

NUM_CLASSES = 10
NULL_CLASS = NUM_CLASSES
NUM_TRAIN_TIMESTEPS = 1000
DEFAULT_GUIDANCE = 2.0
DEFAULT_STEPS = 50

UNET_CONFIG = {
    "sample_size": 8,
    "in_channels": 1,
    "out_channels": 1,
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),  # attention at 4x4 only
    "up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
    "attention_head_dim": 32,
    "norm_num_groups": 8,
    "num_class_embeds": NUM_CLASSES + 1,
}
SCHEDULER_CONFIG = {
    "num_train_timesteps": NUM_TRAIN_TIMESTEPS,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "prediction_type": "epsilon",
    "clip_sample": True,
}


def new_unet(**overrides):
    """A freshly initialised `UNet2DModel` with `UNET_CONFIG` (entries replaced by `overrides`)."""
    from diffusers import UNet2DModel

    return UNet2DModel(**{**UNET_CONFIG, **overrides})


def new_scheduler(**overrides):
    """The training noise schedule: `DDPMScheduler`, linear betas 1e-4..0.02 over 1000 steps, epsilon."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**{**SCHEDULER_CONFIG, **overrides})


def to_model_space(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] images -> [-1, 1] model inputs."""
    return x * 2 - 1


def neg_elbo_terms(
    unet, scheduler, x0: torch.Tensor, labels: torch.Tensor, timesteps: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """Per-sample simplified DDPM loss [B]: mean over pixels of (eps_theta(x_t, t, class) - eps)^2.

    x0 [B, 1, 8, 8] in [0, 1]; timesteps [B] integers in [0, 1000); noise [B, 1, 8, 8] the epsilon of x_t.
    Up to the weights of the timesteps and constants this is the negative ELBO Selective Amnesia uses.
    """
    param = next(unet.parameters())
    x0 = to_model_space(x0.to(param))
    noise = noise.to(param)
    timesteps = timesteps.to(param.device).long()
    xt = scheduler.add_noise(x0, noise, timesteps)
    pred = unet(xt, timesteps, class_labels=labels.to(param.device).long()).sample
    return (pred - noise).square().mean(dim=(1, 2, 3))


def random_timesteps(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """n timesteps uniform on [0, 1000) drawn with `generator` (on its device), moved to `device`."""
    where = generator.device if generator is not None else device
    return torch.randint(0, NUM_TRAIN_TIMESTEPS, (n,), generator=generator, device=where).to(device)


@torch.no_grad()
def sample(
    unet,
    scheduler,
    labels: torch.Tensor,
    generator: torch.Generator | None = None,
    guidance: float = DEFAULT_GUIDANCE,
    steps: int = DEFAULT_STEPS,
) -> torch.Tensor:
    """Images [B, 1, 8, 8] in [0, 1] of the given classes: DDIM with classifier-free guidance w = `guidance`.

    The DDIM scheduler is built from the DDPM scheduler's config (same betas, x0 clipped to [-1, 1]); eta = 0,
    so all randomness is the initial noise, drawn with `generator`. Each step re-derives the noise from the
    clipped x0 (GLIDE's `use_clipped_model_output`): guidance pushes x0 out of range, and stepping with the
    unclipped guided noise beside a clipped x0 fills 8x8 samples with speckle (the classifier then read 57%
    of them as their class instead of 100%).
    """
    from diffusers import DDIMScheduler

    param = next(unet.parameters())
    ddim = DDIMScheduler.from_config(scheduler.config)
    ddim.set_timesteps(steps, device=param.device)
    labels = labels.to(param.device).long()
    size = unet.config.sample_size
    x = randn((len(labels), unet.config.in_channels, size, size), generator, param.device, param.dtype)
    null = torch.full_like(labels, NULL_CLASS)
    for t in ddim.timesteps:
        if guidance == 0:
            eps = unet(x, t, class_labels=labels).sample
        else:
            eps_cond, eps_null = unet(torch.cat([x, x]), t, class_labels=torch.cat([labels, null])).sample.chunk(2)
            eps = (1 + guidance) * eps_cond - guidance * eps_null
        x = ddim.step(eps, t, x, use_clipped_model_output=True).prev_sample
    return ((x + 1) / 2).clamp(0, 1)
