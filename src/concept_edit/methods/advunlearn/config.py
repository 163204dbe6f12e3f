"""AdvUnlearn's options (`AdvUnlearnConfig`) and inputs (`AdvUnlearnInputs`).

Light to import (no torch): the CLI renders `concept-edit edit advunlearn --help` from these dataclasses.
Defaults are the official script's (OPTML-Group/AdvUnlearn `train-scripts/AdvUnlearn.py`) unless a world
replaces them (`World.method_defaults("advunlearn", pipe)`: ShapesSD has its own, chosen on its tuning seeds).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from concept_edit.methods.esd.config import ESDInputs
from concept_edit.methods.registry import describe
from concept_edit.validation import check_choice, check_fields

MODULES = ("text-encoder", "x", "kv")
RETAIN_MODES = ("iter", "reg")
ATTACK_INITS = ("latest", "random")
ATTACK_PLACEMENTS = ("prefix", "alone")
SAMPLE_FROM = ("trained", "attacked", "original")
# the official script's values; a world's tuned values replace the None-defaulted ones
PAPER = {"lr": 1e-5, "iterations": 1000, "warmup": 200, "attack_steps": 30, "attack_lr": 1e-3, "retain_weight": 1.0}


@dataclass(frozen=True)
class AdvUnlearnConfig:
    modules: str = field(
        default="text-encoder",
        metadata={
            "help": "what trains: text-encoder (the paper's default: its Linear layers) | x (ESD-x's set) | kv "
            "(the cross-attention key and value projections only: what reads the text, as UCE edits)"
        },
    )
    eta: float = field(default=1.0, metadata={"help": "ESD's negative guidance (official --negative_guidance 1)"})
    iterations: int | None = field(
        default=None, metadata={"help": "outer (erasure) steps (default: the paper's 1000; ShapesSD: its tuned value)"}
    )
    lr: float | None = field(
        default=None, metadata={"help": "Adam learning rate (default: the paper's 1e-5; ShapesSD: its tuned value)"}
    )
    warmup: int | None = field(
        default=None,
        metadata={"help": "first steps without the inner attack: ESD (default: the paper's 200; ShapesSD: tuned)"},
    )
    attack_steps: int | None = field(
        default=None,
        metadata={"help": "inner soft-prompt attack steps per attack (default: the paper's 30; ShapesSD: tuned)"},
    )
    attack_lr: float | None = field(
        default=None, metadata={"help": "Adam step of the inner attack (default: the paper's 1e-3; ShapesSD: tuned)"}
    )
    attack_tokens: int = field(default=1, metadata={"help": "free tokens of the inner attack (official: 1)"})
    attack_placement: str = field(
        default="prefix",
        metadata={
            "help": "where the inner attack's free tokens go: prefix, before the concept's words (official "
            "prefix_k); alone, the whole prompt, without the concept's words (not in the paper; P4D-N's form): "
            "the erasure then trains on prompts that reach the concept without its name"
        },
    )
    attack_every: int = field(default=1, metadata={"help": "outer steps between inner attacks (official: 1)"})
    attack_batch: int = field(
        default=1,
        metadata={
            "help": "not in the paper: concept samples (timesteps and trajectories of the pool) in each inner-attack "
            "step's loss, drawn with repeats as the official single sample is, at most the pool's samples of the "
            "concept (official: 1; the evaluation's soft-prompt attack averages over many timesteps)"
        },
    )
    attack_bank: int = field(
        default=1,
        metadata={
            "help": "not in the paper: train each erasure sample on the tokens of one of the last N attacks against "
            "its concept, drawn at random, not only the latest's (official: 1, the latest attack)"
        },
    )
    attack_init: str = field(
        default="latest", metadata={"help": "start each attack from the last one's tokens (latest) or random words"}
    )
    retain_weight: float | None = field(
        default=None, metadata={"help": "weight of the retain (utility) loss (default: the paper's 1; ShapesSD: tuned)"}
    )
    erase_plain: bool = field(
        default=False,
        metadata={
            "help": "not in the paper: after the warm-up, each erasure step also trains on the plain concept prompt, "
            "its loss added to the adversarial one's (the official trains on the adversarial prompt alone)"
        },
    )
    retain_embeddings: float = field(
        default=0.0,
        metadata={
            "help": "not in the paper: weight of a second retain loss, on the text encoder's output: the empty "
            "prompt's and the step's retain prompts' per-token embeddings as trained against the original's "
            "(relative mean square), added to the retain loss so weighed by --retain-weight too (0: off; --modules "
            "text-encoder, whose edit reaches every prompt, the empty one that every image's guidance starts from "
            "too)"
        },
    )
    retain_batch: int = field(default=5, metadata={"help": "retain prompts per step (official: 5)"})
    erase_batch: int = field(
        default=1,
        metadata={
            "help": "concept samples per erasure step, without repeats (at most the pool's samples of the concept; "
            "official: 1; more average the step's gradient over timesteps and trajectories)"
        },
    )
    retain_mode: str = field(
        default="iter",
        metadata={"help": "iter: a separate retain step after each erasure step (official) | reg: one summed loss"},
    )
    sampling_steps: int | None = field(
        default=None, metadata={"help": "DDIM steps of a trajectory (50 as official; ShapesSD: its own 25)"}
    )
    sample_from: str = field(
        default="trained",
        metadata={
            "help": "whose trajectories give x_t: trained (official: the model being erased, prompted with the "
            "concept) | attacked (not in the paper: the model being erased, prompted with the latest attack's "
            "tokens before the concept, from the first attack on; several concepts share the tokens) | original "
            "(not in the paper: the unedited model; with --modules text-encoder the same as trained)"
        },
    )
    sampling_guidance: float = field(default=3.0, metadata={"help": "guidance scale when sampling x_t (official 3)"})
    pool_trajectories: int = field(default=4, metadata={"help": "concept trajectories per pool refresh"})
    refresh_every: int = field(default=25, metadata={"help": "outer steps between pool refreshes"})
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "recompute the UNet's activations in backward (saves memory)"}
    )
    null_space: float = field(
        default=0.0,
        metadata={
            "help": "not in the paper (AlphaEdit's projection): keep each key/value update off the directions that "
            "hold this share of the retain and empty prompts' text-embedding energy, so that their keys and "
            "values stay as they were (0: off; modules x or kv)"
        },
    )

    def __post_init__(self) -> None:
        check_fields(
            self,
            {
                "eta": {"low": 0, "high": 100},
                "iterations": {"low": 1, "integer": True, "optional": True},
                "lr": {"low": 0, "low_open": True, "optional": True},
                "warmup": {"low": 0, "integer": True, "optional": True},
                "attack_steps": {"low": 1, "integer": True, "optional": True},
                "attack_lr": {"low": 0, "low_open": True, "optional": True},
                "attack_tokens": {"low": 1, "high": 16, "integer": True},
                "attack_every": {"low": 1, "integer": True},
                "attack_batch": {"low": 1, "integer": True},
                "attack_bank": {"low": 1, "integer": True},
                "retain_weight": {"low": 0, "optional": True},
                "retain_batch": {"low": 1, "integer": True},
                "retain_embeddings": {"low": 0, "high": 1e6},
                "erase_batch": {"low": 1, "integer": True},
                "sampling_steps": {"low": 1, "integer": True, "optional": True},
                "sampling_guidance": {"low": 0},
                "pool_trajectories": {"low": 1, "integer": True},
                "refresh_every": {"low": 1, "integer": True},
                "null_space": {"low": 0},
            },
        )
        for name, allowed in (("modules", MODULES), ("retain_mode", RETAIN_MODES), ("attack_init", ATTACK_INITS),
                              ("attack_placement", ATTACK_PLACEMENTS), ("sample_from", SAMPLE_FROM)):
            check_choice(name, getattr(self, name), allowed)
        if self.null_space >= 1:
            raise ValueError(
                f"null_space must be below 1 (a share of the energy; 1 holds every direction), got {self.null_space}"
            )
        if self.retain_embeddings and self.modules != "text-encoder":
            raise ValueError(
                "--retain-embeddings holds the text encoder's output; it needs --modules text-encoder (with x or kv "
                "the text encoder does not train)"
            )
        if self.null_space and self.modules == "text-encoder":
            raise ValueError(
                "--null-space constrains the cross-attention key/value updates; it needs --modules x or kv "
                "(the text encoder's layers read no fixed text embedding)"
            )

    def resolved(self, tuned: dict) -> dict:
        """lr, iterations, warmup, attack_steps, attack_lr and retain_weight: the option, else the world's tuned
        value for these modules (`tuned[modules][name]`), else the paper's."""
        out = {}
        for name, paper in PAPER.items():
            value = getattr(self, name)
            out[name] = value if value is not None else tuned.get(self.modules, {}).get(name, paper)
        if out["warmup"] >= out["iterations"]:
            raise ValueError(
                f"warmup {out['warmup']} is not below iterations {out['iterations']}: the inner attack would never run"
            )
        return out


@dataclass(frozen=True)
class AdvUnlearnInputs(ESDInputs):
    """ESD's checkpoint inputs (--checkpoint, --resume, --checkpoint-every): the same training loop's."""


describe(
    "advunlearn",
    AdvUnlearnConfig,
    modes=("erase",),
    summary="ESD against an inner soft-prompt attack, with a retain loss (AdvUnlearn, adversarial)",
    inputs_cls=AdvUnlearnInputs,
)
