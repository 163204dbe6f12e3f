"""The digits models behind Selective Amnesia's adapter interface (`methods.amnesia.backends`): the conditional VAE
(data 8x8 images in [0, 1], conditions class labels, the loss the negative ELBO) and the class-conditional DDPM
(L_simple). The digits world hands them to the method (`DigitsWorld.backend`)."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from concept_edit.methods.amnesia.backends import Diffusion
from concept_edit.training import step_generator


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


class DigitsDDPM(Diffusion, DigitsVAE):
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


