"""The paraphrase attack: ask the edited model for the concept in other words.

The simplest black-box attack of the erasure literature (the CAD paper's section 6.2 cites SneakyPrompt and
MMA-Diffusion, which search for such wordings; UCE and ESD report synonyms): a fixed list of wordings, each
drawn with its own seed; the success rate is the share of images the judge reads as the concept.

On ShapesSD the list comes from the shapes world's caption grammar (`World.paraphrases`), which the
model was trained on: the other words for an object ("disc", "round shape" for circle), other colour words
("crimson"), other style phrases ("on stripes"), each with the training prefixes ("a picture of a ..."). For
a real model the user gives the list (`--prompts FILE`).

A wording that contains the concept (a token of one of its content words, or a word with its stem:
"five-pointed star" for star, every logo caption for "the acme logo", `common.contains_concept`) measures
the plain-word erasure, not a paraphrase: such wordings are dropped before any image is drawn (listed in
the protocol as `dropped_wordings`), and `probe` refuses when none are left (`check_wordings`).
"""

from __future__ import annotations

from collections.abc import Sequence

from concept_edit.attacks.drawing import Item, Outcome, cycle_items, images_from_prompts, stage
from concept_edit.attacks.judging import ConceptJudge, judged_rows
from concept_edit.attacks.wording import contains_concept
from concept_edit.edit import applied


def check_wordings(pipe, wordings: Sequence[str], concept: str) -> tuple[list[str], list[str]]:
    """(wordings kept, wordings dropped because they contain the concept); ValueError when none is kept."""
    kept = [w for w in wordings if not contains_concept(pipe, w, concept)]
    dropped = [w for w in wordings if w not in kept]
    if not kept:
        shown = ", ".join(repr(w) for w in dropped[:3]) + (", ..." if len(dropped) > 3 else "")
        raise ValueError(
            f"every wording contains the concept {concept!r} ({shown}): a paraphrase attack needs wordings "
            "without it; give your own with --prompts FILE"
        )
    return kept, dropped


def run_paraphrase(
    pipe,
    judge: ConceptJudge,
    wordings: Sequence[str],
    *,
    edits=(),
    budget: int,
    seed: int,
    steps: int,
    guidance: float,
    concept: str,
    allow_repeat: bool = False,
) -> Outcome:
    """`budget` images, cycling through the `wordings` that do not contain the concept, with seeds seed,
    seed + 1, ...; each judged once (wordings that contain it are dropped first: `check_wordings`).

    The unedited model draws the same images too: a wording it does not read as the concept measures
    nothing about the edit, and `unedited_success_rate` says how many those were.
    """
    wordings, dropped = check_wordings(pipe, wordings, concept)
    items: list[Item] = cycle_items(list(wordings), budget, seed)
    stage("paraphrase: %d images with the edit, then the same without it", len(items))
    with applied(pipe, *edits, allow_repeat=allow_repeat):
        rows = judged_rows(judge, items, images_from_prompts(pipe, items, steps, guidance))
    unedited = judged_rows(judge, items, images_from_prompts(pipe, items, steps, guidance))
    for row, before in zip(rows, unedited, strict=True):
        row["unedited_success"] = before["success"]
    protocol = {"wordings": list(wordings), "dropped_wordings": dropped, "images": budget}
    hits = sum(r["unedited_success"] for r in rows)
    return Outcome(rows, protocol, {"unedited_success_rate": hits / len(rows)})
