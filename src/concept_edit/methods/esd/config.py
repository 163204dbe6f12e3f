"""ESD's options (`ESDConfig`) and inputs (`ESDInputs`).

Light to import (no torch): the CLI renders `concept-edit edit esd --help` from these dataclasses without
loading the training code, which `concept_edit.methods.esd.fit` holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from concept_edit.methods.registry import CheckpointedInputs, describe, input_field
from concept_edit.validation import check_choice, check_fields, check_unused

VARIANTS = ("x", "u", "all", "kv")
SAMPLERS = ("frozen", "trained")
SCHEDULES = ("stream", "pool", "official")
PRECISIONS = ("fp32", "bf16")
# the paper's (and the CompVis train-esd.py's) Adam lr 1e-5 for 1000 iterations, any variant; a world may tune its
# own per variant (`World.method_defaults("esd", pipe)`: ShapesSD's `lr_by_variant`, `iterations_by_variant`)
PAPER_LR, PAPER_ITERATIONS = 1e-5, 1000
# the paper and both official scripts use eta 1 (the diffusers scripts' 2); far past it the target
# eps_base - eta (eps_c - eps_base) is eta times the guidance difference and its square overflows (1e30: loss inf)
MAX_ETA = 100.0


@dataclass(frozen=True)
class ESDConfig:
    variant: str = field(default="x", metadata={"help": "parameters to train: x (cross-attn), u, all, kv"})
    eta: float = field(
        default=1.0,
        metadata={
            "help": "negative guidance eta, the paper's (CompVis --negative_guidance N: N; diffusers esd_sd.py "
            "N: N - 1; 0: eigen paper eq. 11)"
        },
    )
    iterations: int | None = field(
        default=None,
        metadata={"help": "optimizer steps (default: the paper's 1000; ShapesSD: 200 for x/kv, 1000 for u/all)"},
    )
    lr: float | None = field(
        default=None,
        metadata={"help": "Adam learning rate (default: the paper's 1e-5; ShapesSD: 3e-4 for x/kv, 1e-5 for u/all)"},
    )
    batch_size: int = field(
        default=1, metadata={"help": "samples (x_t, t) per optimizer step; with stream, trajectories in flight"}
    )
    sampling_steps: int | None = field(
        default=None, metadata={"help": "DDIM steps K of a trajectory (50 as official; ShapesSD: its own 25)"}
    )
    sampling_guidance: float = field(default=3.0, metadata={"help": "guidance scale when sampling x_t"})
    sampler: str = field(default="trained", metadata={"help": "model that samples x_t: trained | frozen"})
    pool_trajectories: int = field(default=8, metadata={"help": "trajectories per pool refresh (pool schedule)"})
    refresh_every: int = field(default=50, metadata={"help": "iterations between pool refreshes"})
    schedule: str = field(
        default="stream",
        metadata={"help": "stream (trajectories in flight) | pool (refreshed pools) | official (fresh per sample)"},
    )
    lora_rank: int = field(default=0, metadata={"help": "train LoRA adapters of this rank (0: full fine-tuning)"})
    lora_alpha: float | None = field(default=None, metadata={"help": "LoRA alpha (default: the rank)"})
    precision: str = field(default="fp32", metadata={"help": "fp32 | bf16 (autocast; fp32 master weights)"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute activations (saves memory)"})

    def __post_init__(self) -> None:
        check_fields(
            self,
            {
                "eta": {"low": 0, "high": MAX_ETA},
                "iterations": {"low": 1, "integer": True, "optional": True},
                "lr": {"low": 0, "low_open": True, "optional": True},
                "batch_size": {"low": 1, "integer": True},
                "sampling_steps": {"low": 1, "integer": True, "optional": True},
                "sampling_guidance": {"low": 0},
                "pool_trajectories": {"low": 1, "integer": True},
                "refresh_every": {"low": 1, "integer": True},
                "lora_rank": {"low": 0, "integer": True},
                "lora_alpha": {"low": 0, "low_open": True, "optional": True},
            },
        )
        choices = (("variant", VARIANTS), ("sampler", SAMPLERS), ("schedule", SCHEDULES), ("precision", PRECISIONS))
        for name, allowed in choices:
            check_choice(name, getattr(self, name), allowed)
        if self.lora_rank == 0:
            check_unused(self, ["lora_alpha"], "it scales LoRA adapters, and lora_rank 0 is full fine-tuning")
        if self.schedule != "pool":
            check_unused(self, ["pool_trajectories", "refresh_every"], f"the {self.schedule} schedule draws no pool")

    def learning_rate_for(self, tuned: dict) -> float:
        """`lr`, or the default: the world's tuned value for the variant (`tuned`, from
        `World.method_defaults("esd", pipe)`), else the paper's 1e-5."""
        if self.lr is not None:
            return self.lr
        return tuned.get("lr_by_variant", {}).get(self.variant, PAPER_LR)

    def iterations_for(self, tuned: dict) -> int:
        """`iterations`, or the default: the world's tuned value for the variant, else the paper's 1000."""
        if self.iterations is not None:
            return self.iterations
        return tuned.get("iterations_by_variant", {}).get(self.variant, PAPER_ITERATIONS)


@dataclass(frozen=True)
class ESDInputs(CheckpointedInputs):
    checkpoint: Path | None = input_field("file that Ctrl-C and every --checkpoint-every iterations write")
    resume: bool = input_field("continue the run saved in --checkpoint", default=False)
    checkpoint_every: int = input_field("iterations between checkpoints", default=100)


describe(
    "esd",
    ESDConfig,
    modes=("erase",),
    summary="fine-tune with negative guidance (ESD-x, ESD-u)",
    inputs_cls=ESDInputs,
)
