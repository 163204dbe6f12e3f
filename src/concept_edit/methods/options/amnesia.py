"""Selective Amnesia's options (`AmnesiaConfig`), per-model defaults and inputs (`AmnesiaInputs`).

Light to import (no torch): the CLI renders `concept-edit edit amnesia --help` from these dataclasses without
loading the training code, which `concept_edit.methods.amnesia` holds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from concept_edit.methods.registry import CheckpointedInputs, describe, input_field
from concept_edit.validation import check_choice, check_fields

GROUPS = ("all", "x", "u")  # trained parameter groups (concept_edit.amnesia.models)

# per kind of model: the official values (appendix B) where they fit this CPU, else set on tuning seeds 5000+
DEFAULTS = {
    "vae": {"lam": 100.0, "lr": 1e-4, "batch_size": 256, "steps": 10000, "fisher_samples": 50000,
            "replay_samples": 50000, "surrogate_samples": 1000, "fisher_timesteps": None, "fisher_chunk": 250},
    # the digits DDPM at the official lambda 10 (and 2000 steps at lr 1e-4) does not forget at all (P("0") stays
    # 1.000, benchmarks/results/amnesia_quality_ddpm_official.json); lambda 0.3 is the strongest of 0.01-10
    # that still forgets on training seed 5000 and probe seeds 5000+ (1: P 0.60; 10: 1.00)
    "ddpm": {"lam": 0.3, "lr": 1e-3, "batch_size": 128, "steps": 300, "fisher_samples": 500,
             "replay_samples": 2000, "surrogate_samples": 1000, "fisher_timesteps": 50, "fisher_chunk": 250},
    "text-to-image": {"lam": 50.0, "lr": 1e-5, "batch_size": 4, "steps": 1000, "fisher_samples": 5000,
                      "replay_samples": 5000, "surrogate_samples": 1000, "fisher_timesteps": None,
                      "fisher_chunk": 25},
    "shapes": {"lam": 50.0, "lr": 3e-3, "batch_size": 8, "steps": 300, "fisher_samples": 32,
               "replay_samples": 64, "surrogate_samples": 32, "fisher_timesteps": 50, "fisher_chunk": 250},
}  # fmt: skip


@dataclass(frozen=True)
class AmnesiaConfig:
    surrogate: str | None = field(
        default=None,
        metadata={
            "help": "what the concept is remapped to: a prompt (or --guide), a class on the digits models, or "
            "'uniform' noise (default: digits uniform; text-to-image: required, as the paper's SD runs name one)"
        },
    )
    lam: float | None = field(
        default=None, metadata={"help": "EWC weight lambda (default: VAE 100, SD 50 as official; digits DDPM 0.3)"}
    )
    gamma: float = field(default=1.0, metadata={"help": "generative replay weight (0: no replay, the ablation)"})
    steps: int | None = field(default=None, metadata={"help": "optimizer steps (default: per model)"})
    lr: float | None = field(default=None, metadata={"help": "Adam learning rate (default: per model)"})
    batch_size: int | None = field(
        default=None, metadata={"help": "forget rows, and as many replay rows, per step (default: per model)"}
    )
    parameters: str = field(default="all", metadata={"help": "trained group: all | x (cross-attn) | u (the rest)"})
    fisher_samples: int | None = field(
        default=None, metadata={"help": "samples the Fisher averages (default: per model)"}
    )
    fisher_timesteps: int | None = field(
        default=None,
        metadata={"help": "timesteps per Fisher sample, stratified (default: all T as official; ShapesSD 50)"},
    )
    fisher_chunk: int | None = field(
        default=None, metadata={"help": "timesteps per Fisher forward/backward (default: SD 25, else 250)"}
    )
    replay_samples: int | None = field(default=None, metadata={"help": "replay pool size (default: per model)"})
    surrogate_samples: int | None = field(
        default=None, metadata={"help": "surrogate images drawn once (default: per model; digits: fresh each step)"}
    )
    sampling_steps: int | None = field(default=None, metadata={"help": "DDIM steps of generated samples"})
    sampling_guidance: float | None = field(default=None, metadata={"help": "guidance of generated samples"})

    def __post_init__(self) -> None:
        if self.surrogate is not None and (not isinstance(self.surrogate, str) or not self.surrogate.strip()):
            raise ValueError("surrogate must be 'uniform' or a prompt/class, got an empty text")
        check_fields(
            self,
            {
                "lam": {"low": 0, "optional": True},
                "gamma": {"low": 0},
                "steps": {"low": 1, "integer": True, "optional": True},
                "lr": {"low": 0, "low_open": True, "optional": True},
                "batch_size": {"low": 1, "integer": True, "optional": True},
                "fisher_samples": {"low": 1, "integer": True, "optional": True},
                "fisher_timesteps": {"low": 1, "integer": True, "optional": True},
                "fisher_chunk": {"low": 1, "integer": True, "optional": True},
                "replay_samples": {"low": 1, "integer": True, "optional": True},
                "surrogate_samples": {"low": 1, "integer": True, "optional": True},
                "sampling_steps": {"low": 1, "integer": True, "optional": True},
                "sampling_guidance": {"low": 0, "optional": True},
            },
        )
        check_choice("parameters", self.parameters, GROUPS)

    @property
    def concept_texts(self) -> tuple[tuple[str, str], ...]:
        """A surrogate prompt, which the encoder reads as it reads a concept (checked alike before fit)."""
        keyword = self.surrogate is None or self.surrogate.strip().lower() == "uniform"
        return () if keyword else (("surrogate", self.surrogate),)

    def resolved(self, pipe) -> dict:
        """Every option with the per-model defaults filled in."""
        from concept_edit.models.loading import model_info

        kind = getattr(pipe, "kind", None) or ("shapes" if model_info(pipe).world == "shapes" else "text-to-image")
        values = dataclasses.asdict(self)
        for name, default in DEFAULTS[kind].items():
            if values[name] is None:
                values[name] = default
        if values["surrogate"] is None and kind in ("vae", "ddpm"):  # text-to-image: --guide or refused (`_check`)
            values["surrogate"] = "uniform"
        return values


@dataclass(frozen=True)
class AmnesiaInputs(CheckpointedInputs):
    fisher: Path | None = input_field(
        "Fisher cache: a folder (file named by the model's hash) or a .safetensors file; reused when it matches"
    )
    checkpoint: Path | None = input_field("file that Ctrl-C and every --checkpoint-every steps write")
    resume: bool = input_field("continue the run saved in --checkpoint", default=False)
    checkpoint_every: int = input_field("steps between checkpoints", default=100)


describe(
    "amnesia",
    AmnesiaConfig,
    modes=("erase",),
    summary="forget by continual learning (Selective Amnesia)",
    inputs_cls=AmnesiaInputs,
    class_conditional=True,
    module="concept_edit.methods.amnesia",
)
