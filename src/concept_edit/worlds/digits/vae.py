"""The conditional VAE of Selective Amnesia's MNIST experiments (appendix B.1), scaled to 8x8 digits.

An MLP encoder (64 pixels + one-hot class -> 512 -> 256 -> mean and log-variance of an 8-d latent) and an
MLP decoder (8-d latent + one-hot class -> 256 -> 512 -> 64 pixel logits), ReLU activations, a Bernoulli
likelihood over pixels and a standard Gaussian prior, as in the paper's code (hidden sizes 512 and 256,
latent 8). Selective Amnesia fine-tunes this model with the per-sample negative ELBO, so `neg_elbo`
returns one value per sample and takes the reparameterisation noise from the caller for reproducibility.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def randn(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device (CPU generators work for any model device)."""
    where = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=where, dtype=torch.float32).to(device=device, dtype=dtype)


class ConditionalVAE(nn.Module):
    """A class-conditional VAE over [0, 1] images; the config (constructor arguments) is in `self.config`."""

    def __init__(
        self,
        image_size: int = 8,
        num_classes: int = 10,
        hidden: tuple[int, int] | list[int] = (512, 256),
        latent_dim: int = 8,
    ) -> None:
        super().__init__()
        self.config = {
            "image_size": image_size,
            "num_classes": num_classes,
            "hidden": list(hidden),
            "latent_dim": latent_dim,
        }
        self.image_size = image_size
        self.num_classes = num_classes
        self.latent_dim = latent_dim
        pixels = image_size * image_size
        h1, h2 = hidden
        self.encoder = nn.Sequential(
            nn.Linear(pixels + num_classes, h1),
            nn.ReLU(),
            nn.Linear(h1, h2),
            nn.ReLU(),
            nn.Linear(h2, 2 * latent_dim),  # mean and log-variance
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim + num_classes, h2),
            nn.ReLU(),
            nn.Linear(h2, h1),
            nn.ReLU(),
            nn.Linear(h1, pixels),  # Bernoulli logits
        )

    def _one_hot(self, labels: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.one_hot(labels.to(like.device).long(), self.num_classes).to(like.dtype)

    def encode(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance [B, latent_dim] of q(z | x, class)."""
        flat = x.reshape(len(x), -1)
        stats = self.encoder(torch.cat([flat, self._one_hot(labels, flat)], dim=1))
        mean, logvar = stats.chunk(2, dim=1)
        return mean, logvar

    def decode_logits(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Bernoulli logits [B, 1, H, W] of p(x | z, class)."""
        out = self.decoder(torch.cat([z, self._one_hot(labels, z)], dim=1))
        return out.view(len(z), 1, self.image_size, self.image_size)

    def decode(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Pixel probabilities (the Bernoulli means) [B, 1, H, W]."""
        return torch.sigmoid(self.decode_logits(z, labels))

    def neg_elbo(self, x: torch.Tensor, labels: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample negative ELBO [B]: BCE summed over pixels at z = mean + std * noise, plus KL(q || N(0, I)).

        x holds [0, 1] targets (grey levels are fine: the BCE is then a cross-entropy against probabilities);
        `noise` [B, latent_dim] is the reparameterisation epsilon, drawn with `torch.randn_like` when None.
        """
        mean, logvar = self.encode(x, labels)
        if noise is None:
            noise = torch.randn_like(mean)
        z = mean + torch.exp(0.5 * logvar) * noise.to(mean)
        logits = self.decode_logits(z, labels)
        bce = F.binary_cross_entropy_with_logits(logits, x.to(logits), reduction="none").flatten(1).sum(1)
        kl = 0.5 * (mean.square() + logvar.exp() - 1 - logvar).sum(1)
        return bce + kl

    def sample(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images [B, 1, H, W] in [0, 1]: decoder means at z ~ N(0, I) drawn with `generator`."""
        weight = self.decoder[0].weight
        z = randn((len(labels), self.latent_dim), generator, weight.device, weight.dtype)
        return self.decode(z, labels)
