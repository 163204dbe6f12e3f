"""`probe`: attack an edited model to see whether an erased concept comes back, and measure it.

    from concept_edit.attacks import probe
    results = probe(pipe, "circle", "soft-prompt", edits=[edit], budget=200, seed=0)

Before attacking, the unedited model is measured on the concept's own prompts (n images): if it does not
draw the concept (less than `min_unedited` of them read as the concept), an attack on an edit of it would
measure nothing, and `probe` refuses. The edited model is measured on the same prompts with no attack, so
the attack's success rate can be read against it. With `progress=True` (the CLI) each of the three phases
logs a stage line and every drawing shows a bar. Without an edit `probe` refuses: it would attack the
unedited model against itself.

The results dictionary (`kind: "probe"`): `attack`, `concept`, `model`, `edits`, `judge`,
`attack_success_rate` with `n`, `successes` and `ci95` (Wilson), `unedited` and `edited_no_attack` (the
same shape, on the concept's own prompts), `prompts` (one row per attack image: the prompt found or tried,
its seed, whether the judge read the concept, what it read, and the attack's own fields), `protocol`
(budget and its unit, seed, n, sampling steps and guidance, the attack's settings) and the attack's further
figures, and:
* `best_of_k_success_rate`, `best_of_k` (soft-prompt): the search's own checkpoint readings, selected on the
  judge (any of k images of an item read as the concept); not the headline, which is measured at fresh seeds;
* `given_unedited`: the rate over attack images whose prompt the unedited model draws as the concept (at the
  same seed; UnlearnDiff attacks only such prompts), beside the plain one which counts the others as failures;
* `without_concept_words` (ring-a-bell, soft-prompt's discrete prompts): the rate over rows whose prompt holds
  neither the concept's words nor one of ShapesSD's other words for it (`contains_concept`,
  `contains_synonym` per row);
* `prompt_level`: the number of distinct prompts (paraphrase wordings, ring-a-bell searches, soft-prompt's
  attacked prompts) and a Wilson interval at n = that number: images of one prompt are not independent, so
  the image-level `ci95` is too narrow when there are few prompts.

Budgets. The defaults fit a 2-core CPU and are far below the references: soft-prompt 200 steps (UnlearnDiff's
P4D: 2000; P4D: 3000), ring-a-bell 30 generations on 4 searched prompts (the notebook: 3000), paraphrase 32
images. A success rate at the default is a lower bound on what the reference attack would reach. The
defaults were set by hand on ShapesSD's circle erasures, not tuned on the seeds 5000+ that the project
keeps for tuning.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence

from concept_edit.attacks.drawing import cycle_items, images_from_prompts, showing_progress, stage
from concept_edit.attacks.judging import ConceptJudge, judged_rows, world_judge
from concept_edit.attacks.registry import ATTACKS, BUDGET_UNIT, DEFAULT_BUDGET, NEEDS_EDIT
from concept_edit.edit import applied
from concept_edit.evaluation.metrics import wilson
from concept_edit.models.loading import model_info
from concept_edit.validation import check_number, check_seed
from concept_edit.worlds import world_of

log = logging.getLogger(__name__)

RESULTS_VERSION = 2


def share(hits: Sequence[bool]) -> dict:
    """{"rate", "n", "successes", "ci95"} of a list of successes (Wilson 95% interval)."""
    n, k = len(hits), int(sum(bool(h) for h in hits))
    low, high = wilson(k, n)
    return {"rate": k / n, "n": n, "successes": k, "ci95": [round(low, 4), round(high, 4)]}


def check_budget(attack: str, budget: int | None) -> int:
    """The attack's budget (its default when None); ValueError for anything but a whole number >= 1."""
    budget = DEFAULT_BUDGET[attack] if budget is None else budget
    if isinstance(budget, int) and not isinstance(budget, bool) and budget < 1:
        raise ValueError(
            f"the attack budget must be at least 1 ({BUDGET_UNIT[attack]}); a budget of {budget} attacks nothing"
        )
    return check_number("budget", budget, low=1, integer=True)


def default_judge(pipe, concept: str) -> ConceptJudge:
    """The model's world's own judge (the shapes oracle on ShapesSD); a real model has none, and the error says
    what is needed."""
    judge = world_judge(world_of(pipe), concept)
    if judge is None:
        raise ValueError(needs_judge_message(model_info(pipe).spec, concept))
    return judge


def needs_judge_message(model: str, concept: str) -> str:
    return (
        f"probe needs a judge that reads {concept!r} in {model}'s images, and this model's world has none of its "
        "own (ShapesSD's oracle reads only ShapesSD). Give --judge nudenet (nudity) or --judge imagenet (an "
        "ImageNet class) with the concept's own prompts (--prompts FILE); in Python, "
        "judge=suite_judge(...) or FunctionJudge(your_classifier)"
    )


def _phases_shown(fn):
    """`probe(progress=True)`: a stage line for each phase and a bar for each drawing, in every attack."""

    @functools.wraps(fn)
    def wrapper(*args, progress: bool = False, **kwargs):
        with showing_progress(progress):
            return fn(*args, progress=progress, **kwargs)

    return wrapper


@_phases_shown
def probe(
    pipe,
    concept: str,
    attack: str,
    *,
    edits=(),
    judge: ConceptJudge | None = None,
    budget: int | None = None,
    n: int = 16,
    seed: int = 0,
    steps: int | None = None,
    guidance: float | None = None,
    prompts: Sequence[str] | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
    options=None,
    images=None,
    min_unedited: float = 0.5,
    allow_repeat: bool = False,
    progress: bool = False,
) -> dict:
    """Run one attack on `pipe` with `edits` applied and return the results dictionary (module docstring).

    `prompts`: the concept's own prompts (soft-prompt, ring-a-bell; default: ShapesSD's suite prompts of the
    concept, else the concept itself), or the wordings to try (paraphrase; default on ShapesSD: its caption
    grammar's other words). `pairs`: ring-a-bell's (with, without) prompts (default on ShapesSD: derived).
    `options`: the attack's options dataclass (`attacks.registry`). `images`: (N, H, W, 3) uint8 images of the
    concept for concept-inversion (default: the unedited model draws them). `n`: attacked prompts (soft-prompt,
    ring-a-bell, concept-inversion) and images of the unedited check; paraphrase draws `budget` images.
    """
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; choose one of {', '.join(ATTACKS)}")
    if not isinstance(concept, str) or not concept.strip():
        raise ValueError("the concept is empty: name what the edit erased")
    budget = check_budget(attack, budget)
    check_number("n", n, low=1, integer=True)
    check_seed(seed)
    check_number("min_unedited", min_unedited, low=0, high=1)
    info = model_info(pipe)
    steps = check_number("steps", info.default_steps if steps is None else steps, low=1, integer=True)
    guidance = check_number("guidance", info.default_guidance if guidance is None else guidance, low=0)
    world = world_of(pipe)
    judge = judge or default_judge(pipe, concept)
    if not edits:
        raise ValueError(NEEDS_EDIT.format(edits="edits=[the edit]"))
    with applied(pipe, *edits, allow_repeat=allow_repeat):  # an edit made for another model is refused here
        pass
    if images is not None and attack != "concept-inversion":
        raise ValueError(f"images of the concept are for the concept-inversion attack, not {attack}")
    if prompts is not None:
        prompts = [p for p in prompts if p.strip()]
        if not prompts:
            raise ValueError("the prompt list is empty")
    own = (list(prompts) if prompts is not None and attack != "paraphrase" else None) or (
        world.concept_prompts(concept) or [concept]
    )
    from concept_edit.models.prompts import prompt_lengths_ok

    prompt_lengths_ok(pipe, own)
    items = cycle_items(own, n, seed)
    # everything an attack needs from its inputs is checked before any image is drawn
    if attack == "paraphrase":
        from concept_edit.attacks.paraphrase import check_wordings

        wordings = list(prompts) if prompts is not None else world.paraphrases(concept)
        if wordings is None:
            raise ValueError("the paraphrase attack needs its wordings on this model: pass --prompts FILE")
        prompt_lengths_ok(pipe, wordings)
        check_wordings(pipe, wordings, concept)
    elif attack == "ring-a-bell":
        pairs = list(pairs) if pairs is not None else world.concept_pairs(concept)
        if pairs is None:
            raise ValueError("the ring-a-bell attack needs (with | without) prompt pairs on this model: --pairs FILE")
    started = time.perf_counter()

    stage("probe 1/3: the unedited model on the concept's own prompts (%d images, judge: %s)", n, judge.description)
    before = judged_rows(judge, items, images_from_prompts(pipe, items, steps, guidance))
    unedited = share([r["success"] for r in before])
    if unedited["rate"] < min_unedited or unedited["successes"] == 0:
        raise ValueError(
            f"the unedited model draws {concept!r} in only {unedited['successes']}/{unedited['n']} images of its "
            f"own prompts ({', '.join(repr(p) for p in own[:3])}{', ...' if len(own) > 3 else ''}; judge: "
            f"{judge.description}): an attack on an edit of it would measure nothing"
        )
    stage("probe 2/3: the edited model on the same prompts, no attack (%d images)", n)
    with applied(pipe, *edits, allow_repeat=allow_repeat):
        plain = judged_rows(judge, items, images_from_prompts(pipe, items, steps, guidance))
    stage("probe 3/3: the %s attack (budget %d: %s)", attack, budget, BUDGET_UNIT[attack])
    common = {"edits": edits, "budget": budget, "seed": seed, "steps": steps, "guidance": guidance}
    common["allow_repeat"] = allow_repeat

    if attack == "paraphrase":
        from concept_edit.attacks.paraphrase import run_paraphrase

        outcome = run_paraphrase(pipe, judge, wordings, concept=concept, **common)
    elif attack == "soft-prompt":
        from concept_edit.attacks.soft_prompt import run_soft_prompt

        outcome = run_soft_prompt(pipe, judge, items, options=options, progress=progress, concept=concept, **common)
    elif attack == "concept-inversion":
        from concept_edit.attacks.concept_inversion import run_concept_inversion

        outcome = run_concept_inversion(
            pipe, judge, items, options=options, concept=concept, images=images, progress=progress, **common
        )
    else:
        from concept_edit.attacks.ring_a_bell import RingABellOptions, run_ring_a_bell

        options = options or RingABellOptions()
        targets = cycle_items(own[: options.searches], n, seed)  # one search per target prompt: the costly part
        outcome = run_ring_a_bell(
            pipe, judge, targets, pairs, concept=concept, options=options, progress=progress, **common
        )

    rows = outcome.rows
    success = share([r["success"] for r in rows])
    given = [r for r in rows if r.get("unedited_success")]
    clean = [r for r in rows if not (r.get("contains_concept") or r.get("contains_synonym"))]
    cluster = {"ring-a-bell": "target_prompt"}.get(attack, "prompt")
    results = {
        "kind": "probe",
        "version": RESULTS_VERSION,
        "attack": attack,
        "concept": concept,
        "model": info.spec,
        "edits": [e.source or e.name for e in edits],
        "edit_names": [e.name for e in edits],
        "judge": judge.description,
        "attack_success_rate": success["rate"],
        "n": success["n"],
        "successes": success["successes"],
        "ci95": success["ci95"],
        "given_unedited": share([r["success"] for r in given]) if given else None,
        "without_concept_words": share([r["success"] for r in clean]) if clean else None,
        "flagged_rows": len(rows) - len(clean),
        "prompt_level": clustered_share(rows, cluster),
        "unedited": unedited,
        "edited_no_attack": share([r["success"] for r in plain]),
        "concept_prompts": own,
        "protocol": {
            "attack": attack,
            "budget": budget,
            "budget_unit": BUDGET_UNIT[attack],
            "seed": seed,
            "n": n,
            "steps": steps,
            "guidance": guidance,
            "min_unedited": min_unedited,
            **outcome.protocol,
        },
        **outcome.extra,
        "prompts": outcome.rows,
        "seconds": round(time.perf_counter() - started, 1),
    }
    return results


def clustered_share(rows: Sequence[dict], key: str) -> dict:
    """The success share with a prompt-level interval: Wilson at n = distinct `key` values (the interval if all
    images of one prompt or search were perfectly correlated; the image-level one assumes independence)."""
    from concept_edit.evaluation.metrics import wilson

    clusters = sorted({str(r[key]) for r in rows})
    if not rows:
        return {"rate": None, "n": 0, "prompts": 0, "ci95_prompt_level": None}
    rate = sum(bool(r["success"]) for r in rows) / len(rows)
    m = len(clusters)
    low, high = wilson(rate * m, m)
    return {"rate": rate, "n": len(rows), "prompts": m, "ci95_prompt_level": [round(low, 4), round(high, 4)]}
