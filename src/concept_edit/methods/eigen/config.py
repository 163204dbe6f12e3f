"""The eigen method's options (`EigenConfig`).

Light to import (no torch): the CLI renders `concept-edit edit eigen --help` from these dataclasses without
loading the training code, which `concept_edit.methods.eigen.fit` holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from concept_edit.methods.registry import describe
from concept_edit.validation import check_choice, check_fields, check_unused

ERASERS = ("svd", "leace")


@dataclass(frozen=True)
class EigenConfig:
    layers: tuple[str, ...] = field(
        default=(), metadata={"help": "cross-attention layers: index (0: the first) or module path (default: all)"}
    )
    k: int = field(default=3, metadata={"help": "svd: directions removed per concept and layer (paper: 1, 3, 5)"})
    eraser: str = field(default="svd", metadata={"help": "svd (the paper's eq. 4-6) | leace"})
    centre: bool = field(
        default=False, metadata={"help": "svd: project around the concept's mean (the paper does not)"}
    )
    samples: int = field(default=8, metadata={"help": "images generated per concept for the statistics"})
    steps: int | None = field(default=None, metadata={"help": "denoising steps per image (default: the model's)"})
    guidance: float | None = field(default=None, metadata={"help": "guidance scale (default: the model's)"})
    fold: bool = field(default=False, metadata={"help": "store exact weight deltas of to_out.0 instead of hooks"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(str(x) for x in self.layers))
        check_fields(
            self,
            {
                "k": {"low": 1, "integer": True},
                "samples": {"low": 1, "integer": True},
                "steps": {"low": 1, "integer": True, "optional": True},
                "guidance": {"low": 0, "optional": True},
            },
        )
        check_choice("eraser", self.eraser, ERASERS)
        if self.eraser == "leace" and self.centre:
            raise ValueError("centre applies to the svd eraser; LEACE always works around the mean")
        if self.eraser == "leace":
            check_unused(self, ["k"], "k counts the svd eraser's directions; LEACE removes what a linear probe reads")
        if len(set(self.layers)) != len(self.layers):
            raise ValueError(f"a layer is listed twice in {list(self.layers)}")


describe(
    "eigen",
    EigenConfig,
    modes=("erase",),
    summary="remove a concept's top singular directions (eigen)",
)
