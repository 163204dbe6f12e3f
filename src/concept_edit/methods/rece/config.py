"""RECE's options (`RECEConfig`): UCE's closed-form options, the number of rounds and the derivation's regulariser.

Light to import (no torch): the CLI renders `concept-edit edit rece --help` from this dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from concept_edit.methods.registry import describe
from concept_edit.methods.uce.config import ClosedFormOptions
from concept_edit.validation import check_fields


@dataclass(frozen=True)
class RECEConfig(ClosedFormOptions):
    # chosen on ShapesSD's tuning seeds (benchmarks/results/rece_tuning.json): of 0, 3, 6, 10, 15, 20 rounds, 10 had
    # the lowest soft-prompt success (1/8) with the target at 1/8; the response is not monotone in the rounds
    rounds: int = field(
        default=10, metadata={"help": "rounds of deriving the embedding that regenerates the concept and erasing it"}
    )
    derive_lam: float = field(
        default=0.01,
        metadata={"help": "regulariser of the derivation, relative to the mean eigenvalue of sum_l W_l^T W_l"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        # each round adds one erased row per concept row; past the text embedding's width (hundreds) more add nothing
        check_fields(self, {"rounds": {"low": 0, "high": 1000, "integer": True},
                            "derive_lam": {"low": 0, "low_open": True}})  # fmt: skip


describe(
    "rece",
    RECEConfig,
    modes=("erase",),
    summary="UCE, then rounds that erase the embedding which still regenerates the concept (RECE, adversarial)",
)
