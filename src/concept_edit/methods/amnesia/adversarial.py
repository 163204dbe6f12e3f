"""Selective Amnesia trained against an inner soft-prompt attack (not in the paper; AdvUnlearn's idea on SA's
objective): `--adversarial-steps K`.

Selective Amnesia remaps the concept's prompt to the surrogate and keeps everything else by replay and EWC, but
the UNet it leaves can still draw the concept for another conditioning: on ShapesSD the white-box soft-prompt
attack brings "circle" back in 10 of 16 images. AdvUnlearn (Zhang et al., NeurIPS 2024, eq. 4-5) answers this for
ESD by training on prompts that an attack has just found against the current weights. Here the same bi-level
problem is put on SA's objective (eq. 4 of the SA paper, its forget term on the adversarial prompt):

    max_theta  E_{q(x|c_f)} ELBO(x | theta, [delta*, c_f]) - lambda sum_i F_i (theta_i - theta*_i)^2 + replay,
    delta* = argmin_delta  E_{x ~ p_theta*(x|c_f)} L_simple(x | theta, [delta, c_f])                 (inner attack)

* the inner attack is UnlearnDiff's objective (its `get_loss`: the current model's prediction against the true
  noise) on latents of the concept drawn once by the original model (`concept_samples`), with `attack_tokens`
  free input embeddings of the text encoder before the concept's words, `adversarial_steps` Adam steps at
  `attack_lr`, every `attack_every` training steps, each attack starting from the last one's tokens (the first
  from random ordinary vocabulary tokens), as AdvUnlearn's official loop does; with several concepts one set
  of tokens is found against all of them together;
* after `adversarial_warmup` steps of plain SA, each step has `batch_size` more forget rows, conditioned on
  [delta*, c_f] with surrogate images as their data, their mean loss weighted by `adversarial_weight` beside
  SA's own terms (the plain rows, drawn as in SA, keep remapping c_f itself);
* the text encoder does not train (SA trains the UNet), so each attack's conditioning is encoded once.
Only on a text-to-image model with one text encoder (the attack's input space): SDXL and the digits models are
refused.
"""

from __future__ import annotations

import torch

from concept_edit.attacks.encoder import encode_ids, frozen, random_token_embeddings, template_ids, vocabulary
from concept_edit.models.conditioning import Conditions
from concept_edit.models.prompts import concept_ids
from concept_edit.training import step_generator, step_rng


def check_adversarial(pipe, values: dict, text_to_image: bool, concepts: list[str]) -> None:
    """Refuse, before anything is drawn: no single text encoder to attack, settings that never attack, fewer concept
    samples than concepts, a concept that does not fit the tokenizer with the free tokens."""
    if values["adversarial_steps"] == 0:
        return
    if not text_to_image:
        raise ValueError("--adversarial-steps needs a text-to-image model: the attack searches a text encoder's input")
    if getattr(pipe, "text_encoder_2", None) is not None or getattr(pipe, "text_encoder", None) is None:
        raise ValueError("--adversarial-steps attacks one text encoder's input; this model has two (SDXL)")
    if values["adversarial_warmup"] >= values["steps"]:
        raise ValueError(
            f"--adversarial-warmup {values['adversarial_warmup']} is not below --steps {values['steps']}: the "
            "inner attack would never run"
        )
    if values["concept_samples"] < len(concepts):
        raise ValueError(
            f"--concept-samples {values['concept_samples']} is fewer than the {len(concepts)} concepts: the attack "
            "needs latents of each"
        )
    template_ids(pipe, ["{} " + c for c in concepts], values["attack_tokens"])  # ValueError if it does not fit


class AdversarialPrompts:
    """The inner attack's state: the concept's latents, the current tokens delta and their encoded conditioning."""

    def __init__(self, pipe, backend, concepts: list[str], concept_latents: torch.Tensor, values: dict):
        self.pipe, self.backend, self.values = pipe, backend, values
        self.latents = concept_latents  # (concept_samples, ...), rows cycling over the concepts
        self.concept_of = torch.arange(len(concept_latents)) % len(concepts)
        self.ids, self.mask, self.first = template_ids(pipe, ["{} " + c for c in concepts], values["attack_tokens"])
        self.allowed = vocabulary(pipe.tokenizer, [i for c in concepts for i in concept_ids(pipe, c)])
        self.delta: torch.Tensor | None = None
        self.cond: Conditions | None = None

    def _encode(self, rows: torch.Tensor, delta: torch.Tensor) -> Conditions:
        free = delta.expand(len(rows), -1, -1)
        return Conditions(encode_ids(self.pipe, self.ids[rows], self.mask[rows], free, self.first[rows]))

    def _random_tokens(self, seed: int, step: int) -> torch.Tensor:
        return random_token_embeddings(self.pipe, self.allowed, self.values["attack_tokens"], step_rng(seed, step, 52))

    def attack(self, seed: int, step: int) -> float:
        """`adversarial_steps` Adam steps on delta against the weights as they are; returns the last attack loss."""
        start = self.delta if self.delta is not None else self._random_tokens(seed, step)
        delta = start.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([delta], lr=self.values["attack_lr"])
        gen = step_generator(seed, step, 51)
        batch = min(self.values["batch_size"], len(self.latents))
        loss = torch.zeros(())
        with frozen(self.pipe.text_encoder, self.backend.unet):
            for _ in range(self.values["adversarial_steps"]):
                pick = torch.randperm(len(self.latents), generator=gen)[:batch]
                x = self.latents[pick.to(self.latents.device)]
                t, noise = self.backend.draw(x, gen)
                optimizer.zero_grad(set_to_none=True)
                loss = self.backend.loss_given(x, self._encode(self.concept_of[pick], delta), t, noise).mean()
                loss.backward()
                optimizer.step()
        self.set_delta(delta.detach())
        return loss.item()

    def set_delta(self, delta: torch.Tensor | None) -> None:
        """Take tokens (found, or from a checkpoint) and encode each concept's [delta, concept] once."""
        self.delta = delta
        if delta is None:
            self.cond = None
            return
        with torch.no_grad():
            self.cond = self._encode(torch.arange(len(self.ids)), delta.to(self.pipe.device))

    def conditions(self, concept_index: torch.Tensor) -> Conditions:
        """[delta, concept] conditioning for rows naming these concepts (indices into the request's concepts)."""
        return self.cond.take(concept_index)
