"""Selective Amnesia's options (`AmnesiaConfig`), per-model defaults and inputs (`AmnesiaInputs`).

Light to import (no torch): the CLI renders `concept-edit edit amnesia --help` from these dataclasses without
loading the training code, which `concept_edit.methods.amnesia.fit` holds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from concept_edit.methods.registry import CheckpointedInputs, describe, input_field
from concept_edit.validation import check_choice, check_fields, check_unused

GROUPS = ("all", "x", "u")  # trained parameter groups (concept_edit.methods.amnesia.backends)

# the paper's values for Stable Diffusion (appendix B; `ddpm_forget.py`); a world may replace them with values tuned
# for its models (`World.method_defaults("amnesia", pipe)`: the digits models, ShapesSD)
PAPER_DEFAULTS = {"lam": 50.0, "lr": 1e-5, "batch_size": 4, "steps": 1000, "fisher_samples": 5000,
                  "replay_samples": 5000, "surrogate_samples": 1000, "fisher_timesteps": None, "fisher_chunk": 25}


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
    step_in_backward: bool = field(
        default=False,
        metadata={
            "help": "step Adam inside backward, one tensor at a time: the same update without a full set of "
            "gradients (one UNet copy less: 3.4 GB at SD scale)"
        },
    )

    adversarial_steps: int = field(
        default=0,
        metadata={
            "help": "inner soft-prompt attack steps per attack; the forget term also trains on the prompts it finds "
            "(not in the paper: AdvUnlearn's adversarial training on SA's objective; 0: the paper's SA)"
        },
    )
    attack_every: int = field(default=10, metadata={"help": "training steps between inner attacks"})
    attack_tokens: int = field(default=1, metadata={"help": "free prefix tokens of the inner attack"})
    attack_lr: float = field(default=1e-2, metadata={"help": "Adam step of the inner attack"})
    adversarial_warmup: int | None = field(
        default=None, metadata={"help": "first steps of plain SA, before the first attack (default: a third)"}
    )
    adversarial_weight: float = field(
        default=1.0,
        metadata={"help": "weight of the forget term on the adversarial prompt (batch_size rows beside the plain)"},
    )
    concept_samples: int = field(
        default=16, metadata={"help": "the concept's latents (drawn once by the original model) the attack fits"}
    )

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
                "adversarial_steps": {"low": 0, "integer": True},
                "attack_every": {"low": 1, "integer": True},
                "attack_tokens": {"low": 1, "high": 16, "integer": True},
                "attack_lr": {"low": 0, "low_open": True},
                "adversarial_warmup": {"low": 0, "integer": True, "optional": True},
                "adversarial_weight": {"low": 0, "low_open": True},
                "concept_samples": {"low": 1, "integer": True},
            },
        )
        check_choice("parameters", self.parameters, GROUPS)
        if not self.adversarial_steps:
            check_unused(
                self,
                ["attack_every", "attack_tokens", "attack_lr", "adversarial_warmup", "adversarial_weight",
                 "concept_samples"],  # fmt: skip
                "it sets the inner attack, which runs only with --adversarial-steps above 0",
            )

    @property
    def concept_texts(self) -> tuple[tuple[str, str], ...]:
        """A surrogate prompt, which the encoder reads as it reads a concept (checked alike before fit)."""
        keyword = self.surrogate is None or self.surrogate.strip().lower() == "uniform"
        return () if keyword else (("surrogate", self.surrogate),)

    def resolved(self, pipe) -> dict:
        """Every option with the per-model defaults filled in."""
        from concept_edit.worlds import world_of

        values = dataclasses.asdict(self)
        # a text-to-image model's surrogate has no default: --surrogate or --guide, else refused (`fit._check`)
        for name, default in {**PAPER_DEFAULTS, **world_of(pipe).method_defaults("amnesia", pipe)}.items():
            if values[name] is None:
                values[name] = default
        if values["adversarial_warmup"] is None:
            values["adversarial_warmup"] = values["steps"] // 3
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
)
