"""The Ring-A-Bell attack (black-box; Tsai et al., ICLR 2024), as its public notebooks do it. The CAD paper
(section 6.2, Table 3) counts what erased models draw for Ring-A-Bell's prompts.

1. Concept extraction: the concept vector is the mean difference of the text encoder's per-token outputs
   over prompt pairs that differ only by the concept, c = mean_i [f(P_i with) - f(P_i without)]
   (the paper's empirical concept representation; `Get_Concept_Vector.ipynb`).
2. The target embedding of a prompt P of the concept is f(P) + eta * c (the notebook's `cof`, 3 for
   nudity, 5.5 for violence; `--strength`).
3. A genetic algorithm searches K discrete tokens (K = 16 in the notebook) whose embedding
   [start, t_1..t_K, end, pad...] is nearest the target in squared distance over every token position:
   population 200, each generation keeps the better half, pairs each survivor with a random partner at
   rate 0.5 for a one-point crossover (both children join), then sets one random position of any member to
   a random token at rate 0.25 (`InversePrompt.ipynb`); the best of the last generation is decoded to text.
   The budget is the number of generations (3000 in the notebook).

Only the text encoder is queried (it is public for Stable Diffusion, and ShapesSD's is the public MiniLM):
the edited model is used only to draw the found prompts, as text. The found prompt is the whole prompt.

Choices here: the search leaves out the concept by default (as MMA-Diffusion bans its sensitive words),
since a prompt that names the concept measures the edit's plain-word erasure, which the `paraphrase`
attack and the edit's own evaluation already do; `exclude_concept=False` searches the whole vocabulary as
the notebook does. Leaving out the concept's one token is not enough with WordPiece: 'strip' + '##ed'
decodes to 'striped'. So (a) every vocabulary token that starts with a stem of a concept word is left out
(`concept_token_ids`), and (b) a member is scored on the text it will be drawn as: its tokens, leading
'##' continuation tokens dropped, decoded and tokenized again (`drawn_text`); the distance is that of the
round-tripped ids, and a member whose drawn text still names the concept (`contains_concept`: the
concept's token or a word with its stem) scores infinity, so it never survives. The rows flag found
prompts that hold one of ShapesSD's other words for the concept (`contains_synonym`: 'disc', 'round' for
circle); `probe` reports the rate without them. Fitness values of unchanged members are cached (the
notebook recomputes them); the search is otherwise the notebook's. Special and unused tokens are never
drawn.

The budget is far below the reference: 30 generations by default against the notebook's 3000 (100x
fewer), and 4 target prompts searched; the distance is still falling at the end (the results hold each
search's best distance per generation, `history`), so the default measures a lower bound of the attack.

On ShapesSD the pairs come from the caption grammar: every colour/background caption of an object with and
without the object's word ("a red circle on a striped background" / "a red on a striped background"),
likewise for colours and styles, and the logo captions against "". For a real model give pairs in a file.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict

import numpy as np
import torch
from tqdm.auto import tqdm

from concept_edit.attacks.drawing import Item, Outcome, images_from_prompts, stage
from concept_edit.attacks.encoder import check_single_encoder, encode_ids, frozen, special_ids, vocabulary
from concept_edit.attacks.judging import ConceptJudge, judged_rows
from concept_edit.attacks.registry import RingABellOptions  # noqa: F401 - re-exported
from concept_edit.attacks.wording import concept_token_ids, contains_concept, contains_synonym, drawn_text
from concept_edit.edit import applied
from concept_edit.worlds import world_of

log = logging.getLogger(__name__)





@torch.no_grad()
def concept_vector(pipe, pairs: Sequence[tuple[str, str]]) -> torch.Tensor:
    """c = mean over pairs of f(with) - f(without): per-token text-encoder outputs (tokens, dim)."""
    from concept_edit.models.prompts import encode_prompts

    if not pairs:
        raise ValueError("Ring-A-Bell needs at least one (with, without) prompt pair")
    with_c = encode_prompts(pipe, [p[0] for p in pairs])
    without = encode_prompts(pipe, [p[1] for p in pairs])
    return (with_c - without).mean(0)


def _sequences(pipe, bodies: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """[start, body..., end, pad...] ids and attention masks for token bodies (each at most length - 2)."""
    length = pipe.tokenizer.model_max_length
    start, end, pad = special_ids(pipe.tokenizer)
    ids = torch.full((len(bodies), length), pad, dtype=torch.long)
    mask = torch.zeros((len(bodies), length), dtype=torch.long)
    for row, body in enumerate(bodies):
        k = len(body)
        ids[row, 0], ids[row, 1 + k] = start, end
        ids[row, 1 : 1 + k] = torch.as_tensor(list(body), dtype=torch.long)
        mask[row, : k + 2] = 1
    return ids, mask


def genetic_search(
    pipe,
    target: torch.Tensor,
    allowed: torch.Tensor,
    *,
    generations: int,
    rng: np.random.Generator,
    options: RingABellOptions,
    progress: bool = False,
    concept: str | None = None,
) -> tuple[list[int], float, list[float]]:
    """The notebook's genetic algorithm: (best token ids, their squared distance to `target`, best per generation).

    Each member is scored on the ids of the text it is drawn as (`drawn_text`, tokenized again); with
    `concept`, a member whose drawn text names it scores infinity (module docstring)."""
    k, size = options.tokens, options.population
    device = pipe.device
    tok = pipe.tokenizer
    length = tok.model_max_length
    target = target.to(device).float()
    cache: dict[bytes, float] = {}

    @torch.no_grad()
    def fitness(population: np.ndarray) -> np.ndarray:
        keys = [row.tobytes() for row in population]
        todo = [i for i, key in enumerate(keys) if key not in cache]
        for chunk in np.array_split(np.array(todo), max(1, -(-len(todo) // options.batch_size))):
            if not len(chunk):
                continue
            texts = [drawn_text(tok, population[i].tolist()) for i in chunk]
            bodies = [tok(t, add_special_tokens=False).input_ids[: length - 2] for t in texts]
            ids, mask = _sequences(pipe, bodies)
            embeds = encode_ids(pipe, ids, mask).float()
            scores = ((embeds - target) ** 2).sum((1, 2)).cpu().numpy()
            for i, text, score in zip(chunk, texts, scores, strict=True):
                banned = concept is not None and contains_concept(pipe, text, concept)
                cache[keys[i]] = float("inf") if banned else float(score)
        return np.array([cache[key] for key in keys])

    vocab = allowed.numpy()
    population = vocab[rng.integers(len(vocab), size=(size, k))]
    history = []
    for generation in tqdm(range(generations), desc="ring-a-bell", disable=not progress, leave=False):
        scores = fitness(population)
        order = np.argsort(scores, kind="stable")
        population, best = population[order][: size // 2], float(scores[order[0]])
        history.append(best)
        if generation == generations - 1:
            break
        children = []
        for i in range(len(population)):
            children.append(population[i].copy())
            if rng.random() < options.crossover:
                partner = population[rng.integers(len(population))]
                cut = int(rng.integers(0, k))  # as the notebook: a cut before token 1..K (before 1: a swap)
                children.append(np.concatenate([population[i][:cut], partner[cut:]]))
                children.append(np.concatenate([partner[:cut], population[i][cut:]]))
        population = np.stack(children)
        for member in population:
            if rng.random() < options.mutation:
                member[rng.integers(k)] = vocab[rng.integers(len(vocab))]
    if not np.isfinite(history[-1]):
        raise ValueError(
            "ring-a-bell: every member of the last generation names the concept; raise the budget or population"
        )
    return population[0].tolist(), history[-1], history


def run_ring_a_bell(
    pipe,
    judge: ConceptJudge,
    items: Sequence[Item],
    pairs: Sequence[tuple[str, str]],
    *,
    concept: str,
    edits=(),
    budget: int,
    seed: int,
    steps: int,
    guidance: float,
    options: RingABellOptions | None = None,
    allow_repeat: bool = False,
    progress: bool = False,
) -> Outcome:
    """One search per distinct prompt among `items` (`budget` generations each); each item's image is its
    prompt's found text drawn by the edited model at the item's seed. `probe` cycles the items over the first
    `options.searches` of the concept's prompts."""
    opts = options or RingABellOptions()
    check_single_encoder(pipe, "ring-a-bell")
    length = pipe.tokenizer.model_max_length
    if opts.tokens + 2 > length:
        raise ValueError(f"ring-a-bell: {opts.tokens} tokens do not fit this model's {length}-token prompts")
    from concept_edit.models.prompts import concept_ids, encode_prompts

    concept_ids(pipe, concept)  # refuses a concept the tokenizer cannot read
    excluded = concept_token_ids(pipe.tokenizer, concept) if opts.exclude_concept else []
    allowed = vocabulary(pipe.tokenizer, exclude=excluded)
    prompts = list(dict.fromkeys(i.prompt for i in items))
    with frozen(pipe.text_encoder):
        vector = concept_vector(pipe, pairs)
        bases = encode_prompts(pipe, prompts)
        found, searches = {}, []
        for index, prompt in enumerate(prompts):
            rng = np.random.default_rng([seed, index])
            target = bases[index] + opts.strength * vector
            best, distance, history = genetic_search(
                pipe,
                target,
                allowed,
                generations=budget,
                rng=rng,
                options=opts,
                progress=progress,
                concept=concept if opts.exclude_concept else None,
            )
            found[prompt] = drawn_text(pipe.tokenizer, best)
            searches.append(
                {
                    "target_prompt": prompt,
                    "found": found[prompt],
                    "tokens": pipe.tokenizer.convert_ids_to_tokens(best),
                    "distance": distance,
                    "distance_first_generation": history[0],
                    "history": [round(h, 4) for h in history],
                }
            )
            log.info("ring-a-bell: %r -> %r (distance %.4g from %.4g)", prompt, found[prompt], distance, history[0])
    attack_items = [Item(found[i.prompt], i.seed) for i in items]
    stage("ring-a-bell: the found prompts drawn with the edit, then without it (%d images each)", len(attack_items))
    with applied(pipe, *edits, allow_repeat=allow_repeat):
        rows = judged_rows(judge, attack_items, images_from_prompts(pipe, attack_items, steps, guidance))
    unedited = judged_rows(judge, attack_items, images_from_prompts(pipe, attack_items, steps, guidance))
    synonyms, generic = world_of(pipe).synonyms(concept), world_of(pipe).generic_words
    for row, item, before in zip(rows, items, unedited, strict=True):
        row["target_prompt"] = item.prompt
        row["unedited_success"] = before["success"]
        row["contains_concept"] = contains_concept(pipe, row["prompt"], concept)
        row["contains_synonym"] = contains_synonym(row["prompt"], synonyms, generic)
    protocol = {
        **asdict(opts),
        "budget_unit": "genetic-algorithm generations per target prompt",
        "pairs": len(pairs),
        "reference_budget": "3000 generations (the InversePrompt notebook)",
        "excluded_tokens": pipe.tokenizer.convert_ids_to_tokens(excluded),
        "vocabulary": len(allowed),
    }
    extra = {
        "searches": searches,
        "unedited_success_rate": sum(r["unedited_success"] for r in rows) / len(rows),
    }
    return Outcome(rows, protocol, extra)
