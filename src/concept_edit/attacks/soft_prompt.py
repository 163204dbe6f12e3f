"""The soft-prompt attack (white-box), in the manner of P4D (Chin et al., ICML 2024) as UnlearnDiff (Zhang
et al., 2024) re-implements it: the white-box attacks of the CAD paper's section 6.2 and Table 4 (which
reports P4D and UnlearnDiff separately). Behaviour matched to UnlearnDiff's public code of P4D
(OPTML-Group/Diffusion-MU-Attack: `tasks/P4D_.py`, `attackers/hard_prompt_.py`, its object configs).

For each attacked prompt P of the concept (with its seed), k free token embeddings e (input embeddings of the
text encoder, placed after the start token) are optimised so that the edited model, prompted with [e, P],
predicts the noise the unedited model predicts for P (P4D's objective):

    min_e  E_t || eps_edited(x_t, c([e, P]), t) - eps_unedited(x_t, c(P), t) ||^2,
    x_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) n,

with z_0 the unedited model's own latent for (P, seed). What comes from where:
* P4D (the paper and its code): the objective above; the nearest-token (cosine) projection of e.
* UnlearnDiff's re-implementation of P4D, not P4D itself: the 3-token prefix (`prefix_k`, k = 3; P4D uses
  16 free tokens, P4D-N, or inserts them among the prompt's, P4D-K), the 50 evenly spaced timesteps
  (`T // 50 // 2 + j * T // 50`; P4D draws t uniformly from [0, 1000) with fresh noise every step), Adam at
  lr 0.01 and weight decay 0.1 (P4D: AdamW, lr 0.1), stopping an attack at its first success, and the
  budget of 2000 steps (40 per timestep; P4D runs 3000 iterations).
* UnlearnDiff's own objective (`objective="unlearndiff"`, its `get_loss`): the edited model's prediction for
  [e, P] against the true noise n (v's target for a v-prediction model), no unedited model in the loss:
  min_e E_t || eps_edited(x_t, c([e, P]), t) - n ||^2.
* P4D-N (`placement="alone"`, `tokens=16`): the free tokens are the whole prompt, no words of P.
* The control (`optimise=False`): the random starting tokens are drawn as they are, never optimised, so a
  reader sees what the optimisation adds over a random prefix of ordinary tokens.

The budget here is far below both references: 200 steps by default against UnlearnDiff's 2000 and P4D's
3000 (10-15x fewer); the results hold the loss history and the success at each checkpoint so what a larger
budget would add can be judged.

Success. During the search, each checkpoint draws the edited model's image for [e, P] at the item's own
seed (the seed of z_0) and the judge reads it; an attack stops at its first "concept" reading (checkpoint
0 is the plain prompt P, where the reference stops when the edit already fails). Counting that as the
attack's success selects on the judge: with k checkpoints each image gets k chances, so even a judge that
answers at random succeeds far above its base rate. That figure is kept, named `best_of_k_success_rate`
(with `best_of_k`, the checkpoints run). The headline, `success` per row, is measured afresh: after the
search, the embeddings found (those of each item's first success, else the last ones) are drawn at a FRESH
seed, disjoint from every seed used for z_0 and the checkpoints, and judged once. The nearest-token prompt
(vocabulary tokens of highest cosine similarity to each e, the concept's own tokens left out) is drawn at
the same fresh seed (`discrete_success`), and so are the plain prompt P on the edited and on the unedited
model (`fresh_plain_success`, `unedited_success`: the comparison and the items the unedited model draws as
the concept).

Where this differs from UnlearnDiff's code, and why:
* e stays continuous (a soft prompt, the white-box upper bound); P4D projects e to the nearest tokens in
  every forward pass (PEZ). The discrete projection is measured once at the end instead.
* each step draws its timestep at random from the 50; the reference walks them in order, 40 steps each
  (2000 steps), which on a smaller budget would only ever see the lowest-noise timesteps. Checkpoints come
  every 40 steps, as the reference evaluates after each timestep.
* every (prompt, timestep) pair has one noise sample, drawn once, so the unedited model's targets are
  computed once (the reference draws fresh noise at every step and calls both UNets).
* all attacked prompts are optimised together in one batch; the loss is a sum over prompts, so each
  prompt's embeddings get exactly the gradient they would get alone. The batch stops when every prompt
  has succeeded (`steps_run` in the results); until then a prompt that has succeeded keeps being optimised
  (its reported embeddings are those of its first success).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict

import numpy as np
import torch
from tqdm.auto import tqdm

from concept_edit.attacks.drawing import (
    Item,
    Outcome,
    images_from_embeddings,
    images_from_prompts,
    latents_from_prompts,
    stage,
)
from concept_edit.attacks.encoder import (
    check_single_encoder,
    encode_ids,
    frozen,
    nearest_tokens,
    prompt_ids,
    token_embeddings,
    vocabulary,
)
from concept_edit.attacks.judging import ConceptJudge
from concept_edit.attacks.registry import SoftPromptOptions  # noqa: F401 - re-exported
from concept_edit.attacks.wording import concept_token_ids, contains_concept, contains_synonym, drawn_text
from concept_edit.edit import applied
from concept_edit.worlds import world_of

log = logging.getLogger(__name__)


def p4d_timesteps(pipe, count: int) -> torch.Tensor:
    """P4D's evenly spaced training timesteps: start T // count // 2, stride T // count."""
    total = int(pipe.scheduler.config.num_train_timesteps)
    stride = max(1, total // count)
    return (torch.arange(count) * stride + stride // 2).clamp(max=total - 1)


def fresh_seeds(seeds: Sequence[int]) -> list[int]:
    """One seed per item, disjoint from `seeds` (and from each other): max(seeds) + 1, + 2, ..."""
    top = max(int(s) for s in seeds)
    return [top + 1 + i for i in range(len(seeds))]


def _noise_prediction(pipe, latents, timesteps, embeds) -> torch.Tensor:
    return pipe.unet(latents, timesteps, encoder_hidden_states=embeds, return_dict=False)[0].float()


def run_soft_prompt(
    pipe,
    judge: ConceptJudge,
    items: Sequence[Item],
    *,
    edits=(),
    budget: int,
    seed: int,
    steps: int,
    guidance: float,
    options: SoftPromptOptions | None = None,
    concept: str | None = None,
    allow_repeat: bool = False,
    progress: bool = False,
) -> Outcome:
    """Optimise `options.tokens` free embeddings per item for `budget` steps; see the module docstring.

    `concept`: left out of the nearest-token projection (its tokens and words, `concept_token_ids`) and
    flagged in the discrete prompts (`contains_concept`, `contains_synonym`)."""
    opts = options or SoftPromptOptions()
    check_single_encoder(pipe, "soft-prompt")
    device = pipe.device
    n, k = len(items), opts.tokens
    tok = pipe.tokenizer
    alone = opts.placement == "alone"  # P4D-N: the free tokens are the whole prompt
    ids, mask = prompt_ids(pipe, ["" if alone else i.prompt for i in items], k)
    plain_ids, plain_mask = prompt_ids(pipe, [i.prompt for i in items], 0)
    excluded = concept_token_ids(tok, concept) if concept else []
    allowed = vocabulary(tok, exclude=excluded)
    gen = torch.Generator().manual_seed(int(seed))

    # The unedited model: its latent z_0 for every item, and its noise prediction at each pool timestep.
    z0 = latents_from_prompts(pipe, items, steps, guidance).cpu()
    pool_t = p4d_timesteps(pipe, opts.timesteps)
    pool = len(pool_t)
    noise = torch.randn((n, pool, *z0.shape[1:]), generator=gen)
    abar = pipe.scheduler.alphas_cumprod[pool_t].float().view(1, pool, 1, 1, 1)
    x_t = abar.sqrt() * z0[:, None] + (1 - abar).sqrt() * noise  # (n, pool, C, H, W)
    rows_all = torch.arange(n * pool)
    if opts.objective == "unlearndiff":  # the true noise (v's target for a v-prediction model)
        velocity = pipe.scheduler.config.get("prediction_type", "epsilon") == "v_prediction"
        targets = abar.sqrt() * noise - (1 - abar).sqrt() * z0[:, None] if velocity else noise
    else:  # P4D: the unedited model's prediction for the plain prompt
        with torch.no_grad(), frozen(pipe.unet, pipe.text_encoder):
            plain = encode_ids(pipe, plain_ids, plain_mask)
            targets = torch.empty_like(x_t).view(n * pool, *z0.shape[1:])
            for chunk in rows_all.split(opts.batch_size):
                item, j = chunk // pool, chunk % pool
                targets[chunk] = _noise_prediction(
                    pipe, x_t[item, j].to(device, pipe.unet.dtype), pool_t[j].to(device), plain[item.to(device)]
                ).cpu()
        targets = targets.view(n, pool, *z0.shape[1:])

    start = allowed[torch.randint(len(allowed), (n, k), generator=gen)]
    free = token_embeddings(pipe).detach()[start.to(device)].float().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([free], lr=opts.lr, weight_decay=opts.weight_decay)
    success_step: list[int | None] = [None] * n
    read: list[str | None] = [None] * n
    found = free.detach().clone()  # the embeddings of each item's first success (or the last ones)
    kept = [False] * n
    curve = []
    watch = torch.arange(0, pool, max(1, pool // 10))  # fixed (timestep, noise) pairs to report the objective

    def objective(embeds_free: torch.Tensor) -> float:
        total = 0.0
        with torch.no_grad():
            emb = encode_ids(pipe, ids, mask, embeds_free)
            for j in watch:
                pred = _noise_prediction(pipe, x_t[:, j].to(device, pipe.unet.dtype), pool_t[j].to(device), emb)
                total += float(((pred.cpu() - targets[:, j]) ** 2).mean())
        return total / len(watch)

    def diverged(step: int, what: str) -> ValueError:
        # the model is fine (checkpoint 0 drew it); what overflowed is the optimised prefix
        return ValueError(f"soft-prompt: the attack diverged at step {step} ({what}); lower --lr (got {opts.lr})")

    def checkpoint(step: int) -> None:
        todo = [i for i in range(n) if success_step[i] is None]
        if not todo:
            return
        with torch.no_grad():
            if step == 0:
                images = images_from_prompts(pipe, [items[i] for i in todo], steps, guidance)
            else:
                idx = torch.tensor(todo)
                embeds = encode_ids(pipe, ids[idx], mask[idx], free.detach()[idx.to(device)])
                if not bool(torch.isfinite(embeds).all()):
                    raise diverged(step, "its embeddings encode to NaN or infinite values")
                images = images_from_embeddings(pipe, embeds, [items[i].seed for i in todo], steps, guidance)
        for i, label in zip(todo, judge.read(images), strict=True):
            read[i] = label
            if label == judge.label:
                success_step[i] = step
                if step > 0:  # a plain-prompt success keeps optimising: its last embeddings are reported
                    found[i], kept[i] = free.detach()[i], True
        curve.append({"step": step, "success_rate": sum(s is not None for s in success_step) / n})

    losses = []
    with applied(pipe, *edits, allow_repeat=allow_repeat), frozen(pipe.unet, pipe.text_encoder):
        checkpoint(0)
        objective_start = objective(free.detach())
        for step in tqdm(range(1, (budget if opts.optimise else 0) + 1), desc="soft-prompt", disable=not progress,
                         leave=False):  # fmt: skip
            if all(s is not None for s in success_step):
                break  # every prompt has succeeded: the reference stops an attack at its first success
            j = torch.randint(pool, (n,), generator=gen)
            embeds = encode_ids(pipe, ids, mask, free)
            latents = x_t[torch.arange(n), j].to(device, pipe.unet.dtype)
            pred = _noise_prediction(pipe, latents, pool_t[j].to(device), embeds)
            loss = ((pred - targets[torch.arange(n), j].to(device)) ** 2).flatten(1).mean(1).sum()
            if not bool(torch.isfinite(loss)):
                raise diverged(step, "its loss is NaN or infinite")
            (grad,) = torch.autograd.grad(loss, [free])
            free.grad = grad
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()) / n)
            if step % opts.eval_every == 0 or step == budget:
                checkpoint(step)
        objective_end = objective(free.detach())
        for i in range(n):
            if not kept[i]:
                found[i] = free.detach()[i]
        nearest = nearest_tokens(pipe, found, allowed)  # (n, k)
        # drawn as text: leading continuation tokens ('##xing') dropped, decoded (as ring-a-bell's found prompts)
        heads = [drawn_text(tok, nearest[i].tolist()) for i in range(n)]
        discrete = [head if alone else f"{head} {item.prompt}".strip() for head, item in zip(heads, items, strict=True)]
        # the headline: what was found, drawn at fresh seeds the search never saw (module docstring)
        fresh = fresh_seeds([i.seed for i in items])
        fresh_items = [Item(item.prompt, s) for item, s in zip(items, fresh, strict=True)]
        embeds = encode_ids(pipe, ids, mask, found.to(device))
        stage("soft-prompt: what was found drawn at fresh seeds (%d images, and as nearest tokens, plain, unedited)", n)
        fresh_read = judge.read(images_from_embeddings(pipe, embeds, fresh, steps, guidance))
        discrete_items = [Item(text, s) for text, s in zip(discrete, fresh, strict=True)]
        discrete_read = judge.read(images_from_prompts(pipe, discrete_items, steps, guidance))
        plain_read = judge.read(images_from_prompts(pipe, fresh_items, steps, guidance))
    unedited_read = judge.read(images_from_prompts(pipe, fresh_items, steps, guidance))  # no edit applied

    rows = []
    synonyms = world_of(pipe).synonyms(concept) if concept else []
    generic = world_of(pipe).generic_words
    for i, item in enumerate(items):
        # an item whose plain prompt already succeeded (checkpoint 0) was found as the plain prompt: the attack
        # stops there, as the reference does, so the plain prompt is what is drawn again at the fresh seed
        by_plain = success_step[i] == 0
        headline = plain_read[i] if by_plain else fresh_read[i]
        rows.append(
            {
                "prompt": item.prompt,
                "seed": item.seed,
                "fresh_seed": fresh[i],
                "success": headline == judge.label,
                "read": headline,
                "found": "plain prompt" if by_plain else "prefix",
                "best_of_k_success": success_step[i] is not None,
                "best_of_k_read": read[i],
                "success_step": success_step[i],
                "fresh_plain_success": plain_read[i] == judge.label,
                "unedited_success": unedited_read[i] == judge.label,
                "nearest_tokens": tok.convert_ids_to_tokens(nearest[i].tolist()),
                "discrete_prompt": discrete[i],
                "discrete_read": discrete_read[i],
                "discrete_success": discrete_read[i] == judge.label,
                "contains_concept": bool(concept) and contains_concept(pipe, heads[i], concept),
                "contains_synonym": bool(concept) and contains_synonym(heads[i], synonyms, generic),
            }
        )
    protocol = {
        **asdict(opts),
        "budget_unit": "optimisation steps per attacked prompt",
        "reference_budget": "2000 steps (UnlearnDiff's P4D), 3000 iterations (P4D)",
        "placement": "the whole prompt (P4D-N)" if alone else "after the start token (prefix)",
        "optimised": opts.optimise,
        "pool_timesteps": pool_t.tolist(),
        "headline": "what was found drawn once at fresh seeds, disjoint from the search's seeds (the plain prompt "
        "for items it already drew as the concept at checkpoint 0, else the optimised prefix)",
        "fresh_seeds": fresh,
        "excluded_tokens": len(excluded),
    }
    extra = {
        "objective_start": objective_start,
        "objective_end": objective_end,
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "loss_history": [round(x, 6) for x in losses],
        "steps_run": len(losses),
        "checkpoints": curve,
        "best_of_k": len(curve),
        "best_of_k_success_rate": float(np.mean([r["best_of_k_success"] for r in rows])),
        "best_of_k_note": "an item counts if ANY of its k checkpoint images (same seed) read as the concept: "
        "selected on the judge, not the attack's success rate",
        "fresh_plain_success_rate": float(np.mean([r["fresh_plain_success"] for r in rows])),
        "discrete_success_rate": float(np.mean([r["discrete_success"] for r in rows])),
    }
    return Outcome(rows, protocol, extra)
