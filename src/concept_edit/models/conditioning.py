"""Call a pipeline's denoiser directly, as its own sampling loop does, for methods that train or probe it.

`encode_conditions` turns prompts into everything the UNet reads besides the latent and the timestep:
the per-token embeddings (and for SDXL the pooled text embedding and the size/crop time ids), with the
pipeline's own unconditional convention ("" encoded, or zeros for SDXL's force_zeros_for_empty_prompt).
`predict_noise` runs the UNet on them, optionally with some parameters swapped for other tensors
(`torch.func.functional_call`), which is how a fine-tuning method asks "what did the original model say?"
while keeping one copy of the model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from concept_edit.models.loading import model_info
from concept_edit.models.prompts import forces_zero_unconditional


@dataclass
class Conditions:
    """Per-row text conditioning: `embeds` (N, tokens, dim) and SDXL's `added` inputs (N, ...) or None."""

    embeds: torch.Tensor
    added: dict[str, torch.Tensor] | None = None

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def take(self, index: torch.Tensor | Sequence[int]) -> Conditions:
        index = torch.as_tensor(index, dtype=torch.long, device=self.embeds.device)
        added = None if self.added is None else {k: v[index] for k, v in self.added.items()}
        return Conditions(self.embeds[index], added)

    @staticmethod
    def cat(parts: Sequence[Conditions]) -> Conditions:
        added = None
        if parts[0].added is not None:
            added = {k: torch.cat([p.added[k] for p in parts]) for k in parts[0].added}
        return Conditions(torch.cat([p.embeds for p in parts]), added)


def _is_sdxl(pipe) -> bool:
    return getattr(pipe.unet.config, "addition_embed_type", None) == "text_time"


@torch.no_grad()
def encode_conditions(pipe, prompts: Sequence[str], dtype: torch.dtype | None = None) -> Conditions:
    """The denoiser's conditioning for `prompts` on the pipeline's device; "" is the unconditional input."""
    device, dtype = pipe.device, dtype or pipe.unet.dtype
    prompts = list(prompts)
    if not _is_sdxl(pipe):
        embeds = pipe.encode_prompt(prompts, device, 1, False)[0]
        if forces_zero_unconditional(pipe):
            embeds[[k for k, p in enumerate(prompts) if p == ""]] = 0
        return Conditions(embeds.to(dtype))
    embeds, _, pooled, _ = pipe.encode_prompt(prompt=prompts, device=device, do_classifier_free_guidance=False)
    if forces_zero_unconditional(pipe):
        empty = [k for k, p in enumerate(prompts) if p == ""]
        embeds[empty], pooled[empty] = 0, 0
    size = model_info(pipe).resolution
    time_ids = torch.tensor([[size, size, 0, 0, size, size]], device=device, dtype=dtype).repeat(len(prompts), 1)
    return Conditions(embeds.to(dtype), {"text_embeds": pooled.to(dtype), "time_ids": time_ids})


def predict_noise(
    unet,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    conditions: Conditions,
    *,
    replace: Mapping[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The UNet's noise prediction; `replace` maps UNet parameter names to tensors used in their place."""
    kwargs = {"encoder_hidden_states": conditions.embeds, "return_dict": False}
    if conditions.added is not None:
        kwargs["added_cond_kwargs"] = conditions.added
    if timesteps.ndim == 0:
        timesteps = timesteps.expand(latents.shape[0])
    if replace:
        return torch.func.functional_call(unet, dict(replace), (latents, timesteps), kwargs, strict=False)[0]
    return unet(latents, timesteps, **kwargs)[0]
