"""CLI verb `probe`: attack an edited model and write the results JSON.

concept-edit probe --model shapes --edit edits/no-circle --concept circle --attack soft-prompt --out probe.json
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_verbs(verbs) -> None:
    from concept_edit.attacks.registry import available_attacks, get_attack
    from concept_edit.cli.flags import shared_flags
    from concept_edit.cli.support import (
        add_edit_args,
        add_force,
        add_generation_args,
        add_model_args,
        number,
        seed_type,
    )

    attacks = {name: get_attack(name) for name in available_attacks()}
    budgets = "; ".join(f"{a.name}: {a.budget_unit}, default {a.budget}" for a in attacks.values())
    help_text = "attack an edited model to bring an erased concept back; write the success rate as JSON"
    p = verbs.add_parser("probe", help=help_text, description=help_text)
    add_model_args(p)
    add_edit_args(p)
    p.add_argument("--concept", required=True, help="the erased concept (ShapesSD: an object, colour, style or logo)")
    summaries = "; ".join(f"{a.name}: {a.summary}" for a in attacks.values())
    p.add_argument("--attack", required=True, choices=list(attacks), help=summaries)
    p.add_argument("--budget", type=number("--budget", integer=True), help=f"the attack's budget ({budgets})")
    p.add_argument(
        "--n",
        type=number("--n", low=1, integer=True),
        default=16,
        help="attacked prompts (soft-prompt, ring-a-bell) and images of the unedited check (default: 16)",
    )
    p.add_argument("--seed", type=seed_type(), default=0, help="seeds the attack and the images (seed, seed+1, ...)")
    add_generation_args(p)
    p.add_argument(
        "--prompts",
        type=Path,
        metavar="PATH",
        help="one prompt per line: paraphrase's wordings, or the concept's own prompts for the other "
        "attacks (default on ShapesSD: from its captions)",
    )
    p.add_argument(
        "--images",
        type=Path,
        metavar="FOLDER",
        help="concept-inversion: images of the concept to learn the new word from (default: the unedited model "
        "draws them at seeds no evaluation uses)",
    )
    p.add_argument(
        "--pairs",
        type=Path,
        metavar="PATH",
        help="ring-a-bell: 'with concept | without concept' prompt pairs, one per line (default on "
        "ShapesSD: derived from its captions)",
    )
    # one flag per field of the attacks' options dataclasses (`attacks.registry`); the chosen attack's are used
    taken = shared_flags(p.add_argument_group("attack options"), {a.name: a.options_cls for a in attacks.values()})
    p.set_defaults(attack_option_owners=taken)
    p.add_argument(
        "--min-unedited",
        type=number("--min-unedited", low=0, high=1),
        default=0.5,
        help="refuse when the unedited model draws the concept in fewer of its own images (default 0.5)",
    )
    p.add_argument(
        "--judge",
        default=None,
        help="real models: nudenet (the concept is nudity) or imagenet[:HUB_ID] (the concept is an ImageNet class)",
    )
    p.add_argument("--out", required=True, help="results .json file")
    add_force(p)
    p.set_defaults(func=cmd_probe)


def _read_pairs(path: Path) -> list[tuple[str, str]]:
    from concept_edit.methods import read_list_file

    pairs = []
    for number, line in enumerate(read_list_file(path), start=1):
        with_c, bar, without = line.partition("|")
        if not bar or not with_c.strip():
            raise ValueError(f"{path}: pair {number} must read 'prompt with the concept | prompt without it': {line!r}")
        pairs.append((with_c.strip(), without.strip()))
    if not pairs:
        raise ValueError(f"{path} holds no prompt pairs")
    return pairs


def _options(args: argparse.Namespace):
    """The chosen attack's options from the flags given; ValueError naming a flag that attack does not take."""
    from concept_edit.attacks.registry import NoOptions, get_attack

    given = {name: getattr(args, name) for name in args.attack_option_owners if hasattr(args, name)}
    for name, owners in args.attack_option_owners.items():
        if name in given and args.attack not in owners:
            raise ValueError(f"--{name.replace('_', '-')} does not apply to the {args.attack} attack")
    if args.pairs is not None and args.attack != "ring-a-bell":
        raise ValueError(f"--pairs does not apply to the {args.attack} attack")
    if args.images is not None and args.attack != "concept-inversion":
        raise ValueError(f"--images does not apply to the {args.attack} attack")
    cls = get_attack(args.attack).options_cls
    if cls is NoOptions:
        return None
    try:
        return cls(**given)
    except ValueError as err:  # the dataclass names the field ("tokens must be >= 1"): say it as the flag
        text = str(err)
        name = text.split()[0] if text else ""
        if name in given:
            text = f"--{name.replace('_', '-')}{text[len(name):]}"
        raise ValueError(f"the {args.attack} attack: {text}") from None


def cmd_probe(args: argparse.Namespace) -> None:
    from concept_edit.attacks.probe import check_budget, needs_judge_message, probe
    from concept_edit.cli.support import check_output, edit_inputs, load_edits, load_model
    from concept_edit.io import write_json
    from concept_edit.methods import read_list_file
    from concept_edit.worlds import world_for_spec

    files = [f for f in (args.prompts, args.pairs, args.images) if f is not None]
    out = check_output(args.out, force=args.force, suffix=".json", inputs=[*edit_inputs(args.edit), *files])
    budget = check_budget(args.attack, args.budget)
    options = _options(args)
    judge = None
    if args.judge is not None:
        from concept_edit.attacks.judging import suite_judge

        judge = suite_judge(args.judge, args.concept)  # weights and the class name checked before the model loads
    else:  # a concept the world's judge cannot read is refused before the model loads
        world = world_for_spec(args.model)
        if world is None or world.concept_question(args.concept) is None:
            raise ValueError(needs_judge_message(args.model, args.concept))
    if not args.edit:  # after the option checks, before any file is read
        from concept_edit.attacks.registry import NEEDS_EDIT

        raise ValueError(NEEDS_EDIT.format(edits="--edit"))
    prompts = list(read_list_file(args.prompts)) if args.prompts is not None else None
    if prompts is not None and not prompts:
        raise ValueError(f"{args.prompts} holds no prompts")
    pairs = _read_pairs(args.pairs) if args.pairs is not None else None
    if args.images is not None:
        from concept_edit.attacks.concept_inversion import read_images

        read_images(args.images, 8)  # a missing, empty or unreadable folder is refused before the model loads
    edits = load_edits(args.edit)
    pipe = load_model(args)
    images = None
    if args.images is not None:
        from concept_edit.models.info import model_info

        images = read_images(args.images, model_info(pipe).resolution)
    results = probe(
        pipe,
        args.concept,
        args.attack,
        edits=edits,
        judge=judge,
        budget=budget,
        n=args.n,
        seed=args.seed,
        steps=args.steps,
        guidance=args.guidance,
        prompts=prompts,
        pairs=pairs,
        options=options,
        images=images,
        min_unedited=args.min_unedited,
        allow_repeat=args.allow_repeat,
        progress=True,
    )
    write_json(out, results)
    print(summary_line(results))
    print(f"wrote {out}")


def summary_line(results: dict) -> str:
    low, high = results["ci95"]
    text = (
        f"{results['attack']} on {results['concept']!r}: attack success {results['attack_success_rate']:.2f} "
        f"[{low:.2f}, {high:.2f}] ({results['successes']}/{results['n']}); without attack "
        f"{results['edited_no_attack']['rate']:.2f}, unedited model {results['unedited']['rate']:.2f}"
    )
    if "discrete_success_rate" in results:
        text += f"; nearest-token prompts {results['discrete_success_rate']:.2f}"
    if results.get("best_of_k") is not None:
        text += (
            f"; best of {results['best_of_k']} judge reads during the search {results['best_of_k_success_rate']:.2f}"
        )
    level = results.get("prompt_level") or {}
    if level.get("ci95_prompt_level"):
        low, high = level["ci95_prompt_level"]
        text += f"; {level['prompts']} distinct prompts, prompt-level CI [{low:.2f}, {high:.2f}]"
    given = results.get("given_unedited")
    if given:
        text += f"; where the unedited model draws it {given['rate']:.2f} ({given['successes']}/{given['n']})"
    clean = results.get("without_concept_words")
    if results.get("flagged_rows") and clean:
        text += f"; without concept words/synonyms {clean['rate']:.2f} ({clean['successes']}/{clean['n']})"
    return text
