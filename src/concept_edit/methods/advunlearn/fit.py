"""AdvUnlearn: Defensive Unlearning with Adversarial Training for Robust Concept Erasure in Diffusion Models
(Zhang et al., NeurIPS 2024). ESD's erasure trained against a soft-prompt attack that is re-run on the model
as it is being erased, plus a utility (retain) loss; by default the text encoder is what trains.

The paper's bi-level problem (its eq. 4-5), with ESD's loss as the upper level:

    min_theta  l_ESD(theta, [delta*, c]) + gamma l_retain(theta),
    delta* = argmin_delta  E || eps_theta(x_t, [delta, c], t) - eps*(x_t, c, t) ||^2         (the inner attack)

    l_ESD(theta, p)  = E || eps_theta(x_t, p, t) - (eps*(x_t, t) - eta (eps*(x_t, c, t) - eps*(x_t, t))) ||^2
    l_retain(theta)  = E_r || eps_theta(x_t^r, r, t) - eps*(x_t^r, r, t) ||^2   over retain prompts r

eps* is the original model. delta are `attack_tokens` free input (word) embeddings of the text encoder put
before the concept's words (the official `prefix_k`, `word_embd`), found by Adam with the attack's own loss,
the inner minimisation above (the official `soft_prompt_attack`: the trained model under [delta, c] made to
predict what the ORIGINAL model predicts for c).

As the official `train-scripts/AdvUnlearn.py` runs it (its defaults are this module's; where this differs it
says so):
* the first `warmup` steps are plain ESD on the concept prompt; after them an attack of `attack_steps` steps
  runs every `attack_every` steps, started from the last attack's tokens (`attack_init` latest; the first one
  from random vocabulary tokens), and the ESD step trains on [delta*, c];
* x_t is sampled by the model being trained (its UNet, which in the text-encoder mode is the original one)
  with the ORIGINAL text encoder's conditioning, guided DDIM (`sampling_guidance` 3) to a random step; the
  targets come from the original model at that x_t (not in the paper, `sample_from`: attacked draws the
  concept's trajectories under the latest attack's [delta, c], where an attacker takes the model; original
  draws them with the unedited UNet);
* `retain_mode` iter: after each erasure step, a second optimiser step on the retain loss over
  `retain_batch` prompts (the official default); reg: one summed loss. `retain_weight` scales the retain loss
  in both (the official applies its weight only in reg; at the default 1 the two agree);
* `modules` text-encoder trains every Linear (weight and bias) of the text encoder; the official
  `text_encoder_full` trains its layers' LayerNorms and the final LayerNorm too. They are left out here so that
  the edit is a change of Linear layers, which a LoRA file can hold (the embeddings are left out by both);
  x trains ESD-x's set; kv (not in the paper) only the cross-attention key and value projections, the layers
  that read the text: the query and output projections of x act on the image features of every prompt, so a
  change there reaches the other concepts' images too.
How the inner attack's cost was kept down, and other departures:
* x_t are not drawn afresh for every sample (the official loop samples a new trajectory for each attack
  step, erasure step and retain step, ~K/2 guided UNet calls each): every `refresh_every` steps a pool of
  `pool_trajectories` concept trajectories and max(`pool_trajectories`, `retain_batch`) retain trajectories
  is sampled, and every step of each is a sample with its frozen targets computed once (as ESD's `pool`
  schedule; in the text-encoder mode the sampler's own predictions are the frozen ones). Attack, erasure and
  retain steps then cost one forward and backward each;
* the attack zeroes its gradient before each step; the official loop never calls `zero_grad` on the attack's
  optimiser, so its Adam sees the running sum of every earlier step's gradient (read as an oversight);
* the retain prompts are the request's `preserve` list or the world's generic captions (ShapesSD: the other
  objects), not the official COCO object list, and one naming the concept is refused;
* with several concepts the adversarial tokens are shared, each attack run against one concept in turn (the
  official picks the word at random) and the erasure steps until the next attack train on that concept;
* x_t is scored at its own DDIM timestep (as ESD here; the official loop keeps CompVis' random DDPM t in
  [20k, 20k + 20) against a latent at another noise level); attacks run when (step - warmup) is a multiple of
  `attack_every` (the official: when step is; the same at the default 1); the first attack starts from
  ordinary vocabulary tokens other than the concept's (the official: any token, special ones included);
* each pool refresh draws max(`pool_trajectories`, `retain_batch`) retain prompts (with replacement) whose
  trajectories serve the retain steps until the next refresh; the official draws 5 fresh prompts every step.
SDXL (two text encoders) is refused, as the soft-prompt attack is.
Not in the paper: `null_space` holds every key/value update off the retain and empty prompts' token-embedding
subspace after each optimiser step (AlphaEdit's projection, `null_space.py`), so their keys and values stay as they
were; the query and output projections stay free. `erase_batch` takes several concept samples per erasure step;
`attack_bank` trains each on the tokens of one of the last attacks against its concept; `sample_from` draws the
concept's trajectories under the latest attack's tokens or with the unedited UNet; `erase_plain` adds the plain
concept prompt to each adversarial erasure step; `retain_embeddings` (text encoder) holds the empty and retain
prompts' text embeddings to the original's; `attack_placement` alone makes the attack's tokens the whole prompt, so
the erasure also trains on prompts that reach the concept without its name (all measured on ShapesSD's tuning seeds:
docs/methods/advunlearn.md; the text encoder with erase_plain and retain_embeddings kept the soft-prompt attack to
0-2/16 in five fits of six, meeting the bar in four; attack_placement alone did not erase; the others did not help).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from concept_edit.attacks.encoder import (
    encode_ids,
    frozen,
    prompt_ids,
    random_token_embeddings,
    template_ids,
    vocabulary,
)
from concept_edit.edit import trainable
from concept_edit.methods.advunlearn.config import AdvUnlearnConfig, AdvUnlearnInputs
from concept_edit.methods.advunlearn.null_space import KeyValueProjection
from concept_edit.methods.esd.fit import OFFICIAL_STEPS, _frozen_view, esd_target, variant_parameters
from concept_edit.methods.registry import EditRequest, register
from concept_edit.models.conditioning import Conditions, encode_conditions, predict_noise
from concept_edit.models.loading import model_info
from concept_edit.models.prompts import concept_ids
from concept_edit.models.targets import denoiser
from concept_edit.training import (
    check_checkpoint,
    load_checkpoint,
    run_steps,
    save_checkpoint,
    step_generator,
    step_rng,
)
from concept_edit.words import concept_words, stem, words
from concept_edit.worlds import world_of

log = logging.getLogger(__name__)

RETAIN_PROMPTS = 64  # generic retain captions asked of a world when the request gives none


def trained_parameters(pipe, modules: str) -> list[str]:
    """Pipeline-relative names of what trains: the text encoder's Linear layers, ESD-x's cross-attention, or
    its key and value projections."""
    if modules in ("x", "kv"):
        return variant_parameters(pipe, modules)
    names = []
    for name, module in pipe.text_encoder.named_modules():
        if isinstance(module, nn.Linear) and "pooler" not in name:  # the pooler does not feed the UNet
            names += [f"text_encoder.{name}.{p}" for p, _ in module.named_parameters(recurse=False)]
    if not names:
        raise ValueError("the text encoder has no Linear layer to train; use --modules x")
    return names


def retain_prompts(pipe, request: EditRequest, seed: int) -> list[str]:
    """The retain set: the request's preserve list, else the world's generic captions; none may name a concept."""
    prompts = list(request.preserve) or world_of(pipe).replay_prompts(request.concepts, RETAIN_PROMPTS, seed)
    if not prompts:
        raise ValueError(
            "advunlearn needs retain prompts (its utility loss) and this model's world has none: give --preserve "
            "prompts of what must stay (the paper uses COCO object prompts)"
        )
    for concept in request.concepts:
        named = {form for w in concept_words(concept) for form in (stem(w), w + "s", w + "es")}
        for prompt in prompts:
            if named & {form for w in words(prompt) for form in (w, stem(w))}:
                raise ValueError(f"the retain prompt {prompt!r} names the erased concept {concept!r}; leave it out")
    return prompts


def _check(pipe, request: EditRequest, config: AdvUnlearnConfig) -> None:
    if getattr(pipe, "text_encoder_2", None) is not None or getattr(pipe, "text_encoder", None) is None:
        raise ValueError(
            f"advunlearn trains against a soft-prompt attack in one text encoder's input space; "
            f"{model_info(pipe).spec!r} has two (SDXL), which it does not support yet"
        )
    if any(request.concept_guides):
        raise ValueError("advunlearn erases toward the unconditional prediction (ESD's); it takes no guide")
    for concept in request.concepts:
        concept_ids(pipe, concept)
    for component in (pipe.text_encoder, pipe.unet):  # the trained part's master weights, and float32 targets
        if component.dtype != torch.float32:
            raise ValueError(
                f"advunlearn fine-tunes float32 master weights, but the model is loaded in {component.dtype}; "
                "load it in float32 (--dtype float32)"
            )


@dataclass
class _Pool:
    """Samples of the concept's trajectories (x, t, concept, frozen eps(x, c), ESD target) and of the retain
    prompts' (retain_x, retain_t, retain, frozen eps(x, r))."""

    x: torch.Tensor
    t: torch.Tensor
    concept: torch.Tensor
    eps_concept: torch.Tensor
    target: torch.Tensor
    retain_x: torch.Tensor
    retain_t: torch.Tensor
    retain: torch.Tensor
    eps_retain: torch.Tensor

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)


class _Trainer:
    """Conditioning (original and as the trained text encoder reads it), the DDIM schedule, the frozen view."""

    def __init__(self, pipe, request, config, unet, frozen_view, retain: list[str]):
        from diffusers import DDIMScheduler

        self.pipe, self.config, self.unet, self.frozen_view = pipe, config, unet, frozen_view
        self.concepts, self.retain = list(request.concepts), retain
        n = len(self.concepts)
        self.original = encode_conditions(pipe, [*self.concepts, "", *retain])  # rows: concepts, "", retain
        self.uncond_row, self.retain_rows = n, n + 1
        self.plain = prompt_ids(pipe, self.concepts)
        # the free tokens before each concept's words (official), or as the whole prompt (`attack_placement` alone)
        alone = config.attack_placement == "alone"
        self.adversarial = template_ids(pipe, ["{}" if alone else "{} " + c for c in self.concepts],
                                        config.attack_tokens)  # fmt: skip
        self.retain_ids = prompt_ids(pipe, retain)
        self.held = None
        if config.retain_embeddings:  # its prompts, and their original embeddings (before any weight trains)
            self.held_ids = prompt_ids(pipe, ["", *retain])
            with torch.no_grad():
                self.held = encode_ids(pipe, *self.held_ids)
        self.allowed = vocabulary(pipe.tokenizer, [i for c in self.concepts for i in concept_ids(pipe, c)])
        self.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        steps = config.sampling_steps or world_of(pipe).method_sampling_steps or OFFICIAL_STEPS
        self.scheduler.set_timesteps(steps, device=pipe.device)
        size = model_info(pipe).resolution // getattr(pipe, "vae_scale_factor", 8)
        self.latent_shape = (unet.config.in_channels, size, size)

    def eps(self, x, t, cond: torch.Tensor | Conditions, *, frozen_model: bool = False) -> torch.Tensor:
        cond = cond if isinstance(cond, Conditions) else Conditions(cond)
        return predict_noise(self.unet, x, t, cond, replace=self.frozen_view if frozen_model else None)

    def encode(self, which: str, index: torch.Tensor, free: torch.Tensor | None = None) -> torch.Tensor:
        """Conditioning as the trained text encoder reads it (differentiable): plain concept, [delta, concept]
        or retain prompts, rows `index`."""
        index = index.cpu()  # the token ids live on the CPU (encode_ids moves them); pool rows may be on a GPU
        if which == "adversarial":
            ids, mask, first = self.adversarial
            free = free.expand(len(index), -1, -1)  # one set of tokens for every row, or one per row
            return encode_ids(self.pipe, ids[index], mask[index], free, first[index])
        ids, mask = self.plain if which == "plain" else self.retain_ids
        return encode_ids(self.pipe, ids[index], mask[index])

    @property
    def samples_original(self) -> bool:
        """The trajectories are the unedited UNet's (`sample_from` original, and the UNet trains)."""
        return self.config.sample_from == "original" and self.frozen_view is not None

    @torch.no_grad()
    def _trajectories(self, rows: torch.Tensor, generator: torch.Generator, delta: torch.Tensor | None = None):
        """Guided DDIM from noise by the model being trained (or the original, `samples_original`) with the
        original conditioning: every step's x and t, and the sampler's own (eps_uncond, eps_rows) there (the
        frozen ones when the UNet does not train or the original samples). With adversarial tokens `delta` the
        rows are conditioned on [delta, concept] as the trained text encoder reads it."""
        n = len(rows)
        x = torch.randn((n, *self.latent_shape), generator=generator).to(self.pipe.device)
        x = x * self.scheduler.init_noise_sigma
        wanted = self.original.take(rows) if delta is None else Conditions(self.encode("adversarial", rows, delta))
        cond = Conditions.cat([self.original.take(torch.full_like(rows, self.uncond_row)), wanted])
        xs, ts, us, cs = [], [], [], []
        for t in self.scheduler.timesteps:
            eps_u, eps_c = self.eps(torch.cat([x, x]), t, cond, frozen_model=self.samples_original).chunk(2)
            xs.append(x)
            ts.append(t.expand(n))
            us.append(eps_u)
            cs.append(eps_c)
            x = self.scheduler.step(eps_u + self.config.sampling_guidance * (eps_c - eps_u), t, x).prev_sample
        return torch.cat(xs), torch.cat(ts), rows.repeat(len(xs)), torch.cat(us), torch.cat(cs)

    @torch.no_grad()
    def _frozen(self, x, t, rows: torch.Tensor) -> torch.Tensor:
        out = [self.eps(x[i : i + 64], t[i : i + 64], self.original.take(rows[i : i + 64]), frozen_model=True)
               for i in range(0, len(x), 64)]  # fmt: skip
        return torch.cat(out)

    def sample_pool(self, seed: int, refresh: int, delta: torch.Tensor | None = None) -> _Pool:
        """A pool of concept and retain samples; with `delta` (`sample_from` attacked) the concept trajectories
        are drawn under [delta, concept], their targets still the original model's for the plain concept."""
        p, n = self.config.pool_trajectories, len(self.concepts)
        device = self.pipe.device
        concept_rows = ((torch.arange(p) + refresh * p) % n).to(device)
        x, t, concept, eps_u, eps_c = self._trajectories(concept_rows, step_generator(seed, refresh, 1), delta)
        picks = step_rng(seed, refresh, 2).choice(len(self.retain), max(p, self.config.retain_batch))
        retain = torch.as_tensor(picks, device=device) + self.retain_rows
        rx, rt, rrows, _, eps_r = self._trajectories(retain, step_generator(seed, refresh, 3))
        if self.frozen_view is not None and not self.samples_original:  # the UNet trains: none is the original's
            eps_c, eps_r = self._frozen(x, t, concept), self._frozen(rx, rt, rrows)
            eps_u = self._frozen(x, t, torch.full_like(concept, self.uncond_row))
        elif delta is not None:  # the original UNet sampled under [delta, c]; the target is the plain concept's
            eps_c = self._frozen(x, t, concept)
        target = esd_target(eps_c, eps_u, self.config.eta)
        return _Pool(x, t, concept, eps_c, target, rx, rt, rrows - self.retain_rows, eps_r)

    def random_tokens(self, seed: int, step: int) -> torch.Tensor:
        """The first attack's start: embeddings of random ordinary vocabulary tokens (official `init_adv`)."""
        return random_token_embeddings(self.pipe, self.allowed, self.config.attack_tokens, step_rng(seed, step, 5))

    def attack(self, pool: _Pool, start: torch.Tensor, concept: int, steps: int, lr: float, seed: int, step: int):
        """The inner attack on the weights as they are: `steps` Adam steps on delta, each on `attack_batch` pool
        samples of the concept; returns (delta, last loss)."""
        delta = start.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([delta], lr=lr)
        rows = torch.nonzero(pool.concept == concept).flatten()
        # one draw of steps * batch (at 1, the draws the official single sample had); never more per step than the
        # pool holds of the concept, so a huge --attack-batch cannot ask for a huge batch
        batch = min(self.config.attack_batch, len(rows))
        picks = step_rng(seed, step, 6).choice(len(rows), steps * batch)
        picks = rows[torch.as_tensor(picks).to(rows.device)].reshape(steps, batch)
        loss = torch.zeros(())
        with frozen(self.pipe.text_encoder, self.unet):
            for i in picks:
                optimizer.zero_grad(set_to_none=True)
                cond = self.encode("adversarial", pool.concept[i], delta)
                pred = self.eps(pool.x[i], pool.t[i], cond)
                loss = torch.nn.functional.mse_loss(pred, pool.eps_concept[i])
                loss.backward()
                optimizer.step()
        return delta.detach(), loss.item()

    def erase_loss(self, pool: _Pool, i: torch.Tensor, delta: torch.Tensor | None) -> torch.Tensor:
        """ESD's loss on pool samples `i` (indices), under adversarial tokens `delta` (1 or len(i), k, dim) if any."""
        rows = pool.concept[i]
        cond = self.encode("plain", rows) if delta is None else self.encode("adversarial", rows, delta)
        pred = self.eps(pool.x[i], pool.t[i], cond)
        return torch.nn.functional.mse_loss(pred, pool.target[i])

    def bank_tokens(self, bank: list[torch.Tensor], count: int, seed: int, step: int) -> torch.Tensor:
        """Adversarial tokens (count, k, dim) for `count` erasure samples: the latest attack's with a bank of one,
        else each sample's drawn at random from `bank` (the last `attack_bank` attacks against its concept)."""
        if len(bank) == 1:
            return bank[0].expand(count, -1, -1)
        picks = step_rng(seed, step, 9).integers(len(bank), size=count).tolist()
        return torch.cat([bank[j] for j in picks])

    def erase_samples(self, rows: torch.Tensor, seed: int, step: int) -> torch.Tensor:
        """`erase_batch` distinct samples among pool `rows` (one, as drawn before the option, at the default 1)."""
        rng = step_rng(seed, step, 8)
        if self.config.erase_batch == 1:
            picks = [int(rng.integers(len(rows)))]
        else:
            picks = rng.choice(len(rows), min(self.config.erase_batch, len(rows)), replace=False).tolist()
        return rows[torch.as_tensor(picks, device=rows.device)]

    def held_loss(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The text-embedding retain loss (`retain_embeddings`): the trained text encoder's per-token output for
        `rows` of ["", *retain] (all by default) against the original's, relative mean square."""
        rows = torch.arange(len(self.held)) if rows is None else rows.cpu()
        ids, mask = self.held_ids
        out = encode_ids(self.pipe, ids[rows], mask[rows])
        return ((out - self.held[rows]) ** 2).mean() / (self.held[rows] ** 2).mean()

    def retain_loss(self, pool: _Pool, seed: int, step: int) -> torch.Tensor:
        pick = torch.as_tensor(step_rng(seed, step, 7).choice(len(pool.retain_x), self.config.retain_batch))
        pick = pick.to(pool.retain_x.device)
        pred = self.eps(pool.retain_x[pick], pool.retain_t[pick], self.encode("retain", pool.retain[pick]))
        loss = torch.nn.functional.mse_loss(pred, pool.eps_retain[pick])
        if self.held is None:
            return loss
        # the empty prompt (every image's unconditional branch) and this step's retain prompts: encoding all of
        # them each step would cost more than the UNet's steps
        rows = torch.cat([torch.zeros(1, dtype=torch.long), pool.retain[pick].cpu() + 1])
        return loss + self.config.retain_embeddings * self.held_loss(rows)


@register("advunlearn")
def fit_advunlearn(pipe, request: EditRequest, config: AdvUnlearnConfig, inputs: AdvUnlearnInputs, *, seed: int = 0,
                   progress: bool = True):  # fmt: skip
    """Train AdvUnlearn on `pipe` for `request.concepts`; return the change as an `Edit` (pipeline restored)."""
    _check(pipe, request, config)
    chosen = config.resolved(world_of(pipe).method_defaults("advunlearn", pipe))
    retain = retain_prompts(pipe, request, seed)
    keys = trained_parameters(pipe, config.modules)
    if inputs.resume and (inputs.checkpoint is None or not Path(inputs.checkpoint).exists()):
        raise ValueError(f"--resume: there is no checkpoint at {inputs.checkpoint}")
    options = {k: v for k, v in dataclasses.asdict(config).items() if k != "iterations"}
    run_config = {"config": options, "resolved": {k: v for k, v in chosen.items() if k != "iterations"},
                  "request": request.to_dict(), "seed": seed, "retain": retain}  # fmt: skip
    if inputs.resume:  # before any work: the file is this method's checkpoint, of this run
        check_checkpoint(inputs.checkpoint, "advunlearn", run_config)
    _, unet = denoiser(pipe)
    started = time.perf_counter()
    with trainable(pipe, keys) as tuned:
        view = _frozen_view(unet, tuned, lora=False) if config.modules != "text-encoder" else None
        trainer = _Trainer(pipe, request, config, unet, view, retain)
        optimizer = torch.optim.Adam(tuned.parameters, lr=chosen["lr"])
        # the rows from the empty prompt on: "", then the retain prompts
        project = KeyValueProjection(pipe, tuned, keys, trainer.original.embeds[trainer.uncond_row :],
                                     config.null_space) if config.null_space else None  # fmt: skip
        state = {"pool": None, "delta": None, "bank": [], "bank_concepts": [], "concept": 0, "losses": [],
                 "attack_losses": [], "retain_losses": []}  # fmt: skip
        start = 0
        if inputs.resume:
            saved = load_checkpoint(inputs.checkpoint, run_config, "advunlearn")
            with torch.no_grad():
                for p, value in zip(tuned.parameters, saved["trained"], strict=True):
                    p.copy_(value)
            optimizer.load_state_dict(saved["optimizer"])
            device = pipe.device
            state["pool"] = _Pool(**{k: v.to(device) for k, v in saved["pool"].items()}) if saved["pool"] else None
            state["delta"] = saved["delta"].to(device) if saved["delta"] is not None else None
            state["bank"] = [d.to(device) for d in saved["bank"]]
            state["bank_concepts"] = [int(c) for c in saved["bank_concepts"]]
            for name in ("losses", "attack_losses", "retain_losses"):
                state[name] = list(saved[name])
            state["concept"] = int(saved["concept"])
            start = saved["step"]
            if start > chosen["iterations"]:
                raise ValueError(f"the checkpoint is at iteration {start}, past --iterations {chosen['iterations']}")
            log.info("resumed advunlearn from %s at iteration %d", inputs.checkpoint, start)

        def optimizer_step() -> None:
            optimizer.step()
            if project is not None:
                project()

        def step_fn(step: int) -> dict[str, float]:
            if state["pool"] is None or step % config.refresh_every == 0:
                attacked = state["delta"] if config.sample_from == "attacked" else None
                state["pool"] = trainer.sample_pool(seed, step // config.refresh_every, attacked)
            pool = state["pool"]
            adversarial = step >= chosen["warmup"]
            if adversarial and (step - chosen["warmup"]) % config.attack_every == 0:
                present = pool.concept.unique().tolist()  # with fewer trajectories than concepts, those drawn
                concept = present[(step // config.attack_every) % len(present)]
                begin = state["delta"] if state["delta"] is not None and config.attack_init == "latest" else None
                begin = begin if begin is not None else trainer.random_tokens(seed, step)
                state["delta"], attack_loss = trainer.attack(pool, begin, concept, chosen["attack_steps"],
                                                                chosen["attack_lr"], seed, step)
                state["bank"] = [*state["bank"], state["delta"]][-config.attack_bank :]
                state["bank_concepts"] = [*state["bank_concepts"], concept][-config.attack_bank :]
                state["attack_losses"].append(attack_loss)
                state["concept"] = concept
            # after the warm-up, the erasure trains on the concept the tokens were found against (the official
            # loop keeps one word for both until the next attack)
            rows = torch.nonzero(pool.concept == state["concept"]).flatten() if adversarial else None
            if rows is None or len(rows) == 0:
                rows = torch.arange(len(pool.x), device=pool.x.device)
            optimizer.zero_grad(set_to_none=True)
            picks = trainer.erase_samples(rows, seed, step)
            # each sample under tokens found against its own concept (the latest attack's is always among them)
            bank = [d for d, c in zip(state["bank"], state["bank_concepts"], strict=True) if c == state["concept"]]
            tokens = trainer.bank_tokens(bank, len(picks), seed, step) if adversarial else None
            loss = trainer.erase_loss(pool, picks, tokens)
            if adversarial and config.erase_plain:
                loss = loss + trainer.erase_loss(pool, picks, None)
            if config.retain_mode == "reg":
                retain_loss = trainer.retain_loss(pool, seed, step)
                (loss + chosen["retain_weight"] * retain_loss).backward()
                optimizer_step()
            else:
                loss.backward()
                optimizer_step()
                optimizer.zero_grad(set_to_none=True)
                retain_loss = trainer.retain_loss(pool, seed, step)
                (chosen["retain_weight"] * retain_loss).backward()
                optimizer_step()
            state["losses"].append(loss.item())
            state["retain_losses"].append(retain_loss.item())
            return {"loss": state["losses"][-1], "retain": state["retain_losses"][-1]}

        def save_fn(step: int) -> None:
            if inputs.checkpoint is None:
                return
            save_checkpoint(inputs.checkpoint, step, run_config, kind="advunlearn",
                            trained=[p.detach() for p in tuned.parameters], optimizer=optimizer.state_dict(),
                            pool=state["pool"].state_dict() if state["pool"] is not None else None,
                            delta=state["delta"], bank=state["bank"], bank_concepts=state["bank_concepts"],
                            concept=state["concept"], losses=state["losses"],
                            attack_losses=state["attack_losses"],
                            retain_losses=state["retain_losses"])  # fmt: skip

        checkpointing = unet.is_gradient_checkpointing
        if config.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        try:
            run_steps(total=chosen["iterations"], start=start, step_fn=step_fn, save_fn=save_fn,
                      every=inputs.checkpoint_every, desc="advunlearn", progress=progress,
                      checkpointing=inputs.checkpoint is not None, checkpoint_file=inputs.checkpoint,
                      diverged_hint="; lower --lr, --attack-lr or --eta")  # fmt: skip
        finally:  # before trainable() builds the edit's deltas: let go of what only training needed (as ESD)
            if config.gradient_checkpointing and not checkpointing:
                unet.disable_gradient_checkpointing()
            optimizer.state.clear()
            for p in tuned.parameters:
                p.grad = None
            if view is not None:
                view.clear()
            state["pool"] = None
    log.info("advunlearn: %d iterations in %.1f s", chosen["iterations"], time.perf_counter() - started)

    def tail(values: list[float]) -> float | None:
        values = values[-max(1, len(values) // 10) :]
        return sum(values) / len(values) if values else None

    stats = {**chosen, "final_loss": tail(state["losses"]), "final_retain_loss": tail(state["retain_losses"]),
             "final_attack_loss": tail(state["attack_losses"]), "attacks": len(state["attack_losses"]),
             "retain_prompts": len(retain), "trained_parameters": len(keys),
             "null_space_rank": project.rank if project is not None else None}  # fmt: skip
    return tuned.edit(method="advunlearn", config=dataclasses.asdict(config), request=request.to_dict(), seed=seed,
                      stats=stats)  # fmt: skip
