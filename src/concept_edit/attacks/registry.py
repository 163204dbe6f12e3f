"""The attacks `probe` runs: each one's options dataclass, budget and summary, by name (light to import: the CLI
renders `concept-edit probe --help` from here, one flag per options field, without loading torch).

An attack's options are a frozen dataclass whose fields carry their help (`field(metadata={"help": ...})`), as a
method's config does; the CLI and the docs read them, so neither can drift from the code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from concept_edit.validation import check_fields


def option(default, help: str, choices: tuple | None = None):
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class NoOptions:
    """The options of an attack that has none beyond its budget (paraphrase)."""


OBJECTIVES = ("p4d", "unlearndiff")
PLACEMENTS = ("prefix", "alone")


@dataclass(frozen=True)
class SoftPromptOptions:
    """P4D / UnlearnDiff's white-box attack: free token embeddings before the prompt, optimised so the edited model
    predicts the unedited one's noise for the concept (`attacks.soft_prompt`)."""

    tokens: int = option(3, "free token embeddings prefixed to the prompt (the reference's k of prefix_k)")
    lr: float = option(0.01, "Adam step on the free embeddings")
    weight_decay: float = option(0.1, "Adam's weight decay on the free embeddings")
    eval_every: int = option(40, "steps between checkpoints the judge reads (the reference's iterations per timestep)")
    timesteps: int = option(50, "P4D's evenly spaced training timesteps")
    batch_size: int = option(64, "UNet rows per call when computing targets and the objective")
    objective: str = option("p4d", "p4d: match the unedited model's prediction; unlearndiff: match the true noise "
                            "(UnlearnDiff's own get_loss)", OBJECTIVES)  # fmt: skip
    placement: str = option("prefix", "prefix: free tokens before the prompt (UnlearnDiff's prefix_k); alone: the "
                            "free tokens are the whole prompt (P4D-N, with --tokens 16)", PLACEMENTS)  # fmt: skip
    optimise: bool = option(True, "off: the random starting tokens drawn as they are, not optimised (the control "
                            "that shows what the optimisation adds)")  # fmt: skip

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, not {self.objective!r}")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, not {self.placement!r}")
        check_fields(
            self,
            {
                "tokens": {"low": 1, "integer": True},
                "lr": {"low": 0, "low_open": True},
                "weight_decay": {"low": 0},
                "eval_every": {"low": 1, "integer": True},
                "timesteps": {"low": 1, "integer": True},
                "batch_size": {"low": 1, "integer": True},
            },
        )


@dataclass(frozen=True)
class RingABellOptions:
    """Ring-A-Bell's black-box attack: a concept direction in the text encoder's output added to a prompt, then
    projected back to discrete tokens by a genetic search (`attacks.ring_a_bell`)."""

    strength: float = option(3.0, "eta, the concept vector's weight (the notebook's cof)")
    tokens: int = option(16, "K, the tokens searched")
    population: int = option(200, "genetic-algorithm population")
    crossover: float = option(0.5, "genetic-algorithm crossover probability")
    mutation: float = option(0.25, "genetic-algorithm mutation probability")
    exclude_concept: bool = option(True, "leave the concept's own tokens out of the search")
    searches: int = option(4, "target prompts searched (the first of the concept's prompts); images cycle over them")
    batch_size: int = option(256, "text-encoder rows per call")

    def __post_init__(self) -> None:
        check_fields(
            self,
            {
                "strength": {},
                "tokens": {"low": 1, "integer": True},
                "population": {"low": 2, "integer": True},
                "crossover": {"low": 0, "high": 1},
                "mutation": {"low": 0, "high": 1},
                "searches": {"low": 1, "integer": True},
                "batch_size": {"low": 1, "integer": True},
            },
        )


@dataclass(frozen=True)
class ConceptInversionOptions:
    """Pham et al.'s concept inversion: Textual Inversion of a new word on the edited model from images of the
    concept (`attacks.concept_inversion`)."""

    tokens: int = option(1, "embeddings of the learned word (Textual Inversion: 1)")
    lr: float = option(5e-3, "Adam step on the learned embeddings (Textual Inversion: 5e-3)")
    batch_size: int = option(4, "images per step (Textual Inversion: 4)")
    samples: int = option(8, "images of the concept the unedited model draws to learn from (without --images)")
    init_word: str = option("thing", "the word the learned embedding starts from (must not name the concept)")

    def __post_init__(self) -> None:
        check_fields(
            self,
            {
                "tokens": {"low": 1, "integer": True},
                "lr": {"low": 0, "low_open": True},
                "batch_size": {"low": 1, "integer": True},
                "samples": {"low": 1, "integer": True},
            },
        )
        if not self.init_word.strip():
            raise ValueError("init_word is empty: give a coarse word the learned embedding starts from")


@dataclass(frozen=True)
class Attack:
    name: str
    options_cls: type
    budget: int  # the default budget
    budget_unit: str
    summary: str


_REGISTRY: dict[str, Attack] = {}


def register_attack(attack: Attack) -> None:
    _REGISTRY[attack.name] = attack


def get_attack(name: str) -> Attack:
    if name not in _REGISTRY:
        raise ValueError(f"unknown attack {name!r}; choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def available_attacks() -> tuple[str, ...]:
    return tuple(_REGISTRY)


register_attack(Attack(
    "paraphrase", NoOptions, 32, "images drawn from the wordings", "other wordings of the concept (black-box)"
))
register_attack(Attack(
    "soft-prompt", SoftPromptOptions, 200, "optimisation steps per attacked prompt",
    "free token embeddings optimised toward the unedited model's prediction (white-box, P4D)",
))
register_attack(Attack(
    "ring-a-bell", RingABellOptions, 30, "genetic-algorithm generations per target prompt",
    "a concept direction projected back to tokens by a genetic search (black-box, Ring-A-Bell)",
))
register_attack(Attack(
    "concept-inversion", ConceptInversionOptions, 300, "Textual Inversion steps on the edited model",
    "a new word learned on the edited model from images of the concept (white-box, Pham et al.)",
))

# the names earlier code reads
ATTACKS = available_attacks()
DEFAULT_BUDGET = {name: a.budget for name, a in _REGISTRY.items()}
BUDGET_UNIT = {name: a.budget_unit for name, a in _REGISTRY.items()}
NEEDS_EDIT = (
    "probe attacks an edited model: give the edit that erased the concept ({edits}); without one the attack's "
    "success would be the unedited model's against itself"
)
