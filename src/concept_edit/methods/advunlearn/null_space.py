"""AlphaEdit's null-space constraint on AdvUnlearn's cross-attention key/value updates (not in AdvUnlearn's paper).

AlphaEdit (Fang et al., ICLR 2025, its eq. 7-9) projects a layer's update Delta onto the null space of the keys K0
of what must be preserved: Delta P with P = I - U U^T, U the eigenvectors of K0 K0^T whose eigenvalues are not
negligible, so that (W + Delta P) K0 = W K0 and the preserved outputs are unchanged by construction. Here the
layers are the UNet's cross-attention key and value projections, whose inputs are the text encoder's token
embeddings: K0 holds every token embedding (padding included: the UNet attends to all of them) of the retain
prompts and of the empty prompt (classifier-free guidance's unconditional branch, which every prompt's image
uses). U is the fewest right singular vectors holding `share` of K0's energy (sum of squared singular values);
AlphaEdit instead drops the eigenvalues of K0 K0^T below an absolute threshold, which depends on the embeddings'
scale. Directions outside U keep their share of the held prompts' energy (on ShapesSD at 0.95: 5% of it, 12% of
what differs between prompts), which the update may still move. After every optimiser step the trained key/value
weights are set to W0 + (W - W0) P, so the constraint holds exactly whatever Adam did; a key/value bias, where a
model has one, is held at its original value (its change would move every prompt's keys). The query projection of
ESD's x set reads image features, which no prompt list spans, and the output projection reads attention-weighted
values: neither is constrained here (a choice; the output one could be held on the span of W_v K0).
"""

from __future__ import annotations

import torch

from concept_edit.methods.esd.fit import variant_parameters
from concept_edit.models.targets import get_parameter


def retain_projector(embeds: torch.Tensor, share: float) -> tuple[torch.Tensor, int]:
    """(P, k): P = I - V_k^T V_k (float64, dim x dim) for the token embeddings `embeds` (..., dim), V_k their
    first k right singular vectors, k the fewest holding `share` of the energy."""
    x = embeds.reshape(-1, embeds.shape[-1]).detach().to("cpu", torch.float64)
    _, singular, vh = torch.linalg.svd(x, full_matrices=False)
    energy = (singular**2).cumsum(0) / (singular**2).sum()
    k = min(int((energy < share).sum()) + 1, len(singular))
    basis = vh[:k]
    return torch.eye(x.shape[1], dtype=torch.float64) - basis.T @ basis, k


class KeyValueProjection:
    """Holds the trained key/value weights at W0 + (W - W0) P (`__call__` after each optimiser step)."""

    def __init__(self, pipe, tuned, keys: list[str], embeds: torch.Tensor, share: float):
        projector, self.rank = retain_projector(embeds, share)
        if self.rank >= projector.shape[0]:
            raise ValueError(
                f"--null-space {share} holds all {self.rank} directions of the text embeddings: no key/value "
                "update would be left; lower it"
            )
        kv = set(variant_parameters(pipe, "kv")) & set(keys)
        weights = set(variant_parameters(pipe, "kv", weights_only=True)) & kv
        self.weights = []
        on_device = {}  # one copy per device, shared by every layer (they all read the text embeddings)
        for key in sorted(weights):
            param = get_parameter(pipe, key)
            # float64: the product stays exact whatever a GPU's float32 matmul mode (TF32) is
            if param.device not in on_device:
                on_device[param.device] = projector.to(param.device)
            # the original on the weight's device once (read only), not copied there at every step
            self.weights.append((param, tuned.original(param, torch.float32), on_device[param.device]))
        self.biases = [(p, tuned.original(p)) for p in (get_parameter(pipe, k) for k in sorted(kv - weights))]

    @torch.no_grad()
    def __call__(self) -> None:
        for param, original, projector in self.weights:
            delta = (param.double() - original.double()) @ projector
            param.copy_(original + delta.float())
        for param, original in self.biases:
            param.copy_(original)
