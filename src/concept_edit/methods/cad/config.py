"""CAD's options (`CADConfig`) and inputs (`CADInputs`).

Light to import (no torch): the CLI renders `concept-edit edit cad --help` from these dataclasses without
loading the training code, which `concept_edit.methods.cad.fit` holds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from concept_edit.methods.registry import CheckpointedInputs, describe, input_field
from concept_edit.validation import check_choice, check_fields

GROUPS = ("ff", "attn1", "attn2", "residual")  # module groups CAD attributes (concept_edit.methods.cad.attribution)
SCOPES = ("row", "tensor")  # how the top entries are chosen (concept_edit.methods.cad.ablation)


@dataclass(frozen=True)
class CADConfig:
    ablate_ratio: float = field(
        default=0.001, metadata={"help": "share of each row's entries to zero (as the official --ablate_ratio)"}
    )
    modules: tuple[str, ...] = field(
        default=("ff",), metadata={"help": f"module groups to attribute and prune: {', '.join(GROUPS)} (default: ff)"}
    )
    scope: str = field(default="row", metadata={"help": "row: top entries per row (official) | tensor"})
    row_minimum: int = field(
        default=1, metadata={"help": "entries zeroed per row at least (default 1; 0: the official int(r * n))"}
    )
    samples: int = field(default=4, metadata={"help": "erase: trajectories generated per concept"})
    steps: int | None = field(
        default=None, metadata={"help": "DDIM steps of a trajectory (50 as official; ShapesSD: its own 25)"}
    )
    timesteps: int | None = field(
        default=None, metadata={"help": "attribute at this many of the steps, evenly spaced (default: all)"}
    )
    guidance: float = field(default=3.0, metadata={"help": "erase: guidance scale when sampling (official: 3)"})
    batch_size: int = field(default=8, metadata={"help": "samples per backward pass"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "modules", tuple(self.modules))
        check_fields(
            self,
            {
                "ablate_ratio": {"low": 0, "high": 1, "low_open": True},
                "samples": {"low": 1, "integer": True},
                "steps": {"low": 1, "integer": True, "optional": True},
                "timesteps": {"low": 1, "integer": True, "optional": True},
                "guidance": {"low": 0},
                "batch_size": {"low": 1, "integer": True},
                "row_minimum": {"low": 0, "high": 1, "integer": True},
            },
        )
        if self.ablate_ratio >= 1:
            raise ValueError(f"ablate_ratio must be < 1 (a share of each row), got {self.ablate_ratio}")
        check_choice("scope", self.scope, SCOPES)
        if not self.modules:
            raise ValueError(f"modules: name at least one group ({', '.join(GROUPS)})")
        for group in self.modules:
            check_choice("modules", group, GROUPS)
        if len(set(self.modules)) != len(self.modules):
            raise ValueError(f"a module group is listed twice in {list(self.modules)}")

    def attribution_options(self) -> dict:
        """The options the scores depend on (not the ratio, scope or batch size), JSON-ready."""
        options = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()
                if k not in ("ablate_ratio", "scope", "row_minimum", "batch_size")}  # fmt: skip


def _parse_images(text: str, pipe):
    from concept_edit.methods.cad.images import resolve_images
    from concept_edit.models.loading import model_info

    return resolve_images(text, model_info(pipe).resolution)


@dataclass(frozen=True)
class CADInputs(CheckpointedInputs):
    images: object = input_field(
        "amplify: a folder of images of the concept, or shapes:OBJECT[:N] (ShapesSD renders)", parse=_parse_images
    )
    scores: Path | None = input_field("a scores file from `concept-edit attribute`: prune from it (no attribution)")
    checkpoint: Path | None = input_field("file that Ctrl-C and every --checkpoint-every batches write")
    resume: bool = input_field("continue the attribution saved in --checkpoint", default=False)
    checkpoint_every: int = input_field("backward batches between checkpoints", default=50)


describe(
    "cad",
    CADConfig,
    modes=("erase", "amplify"),
    summary="zero the most attributed weights (CAD)",
    inputs_cls=CADInputs,
)
