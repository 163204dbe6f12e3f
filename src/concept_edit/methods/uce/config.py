"""UCE's options (`UCEConfig`) and inputs (`UCEInputs`).

Light to import (no torch): the CLI renders `concept-edit edit uce --help` from these dataclasses without
loading the training code, which `concept_edit.methods.uce.fit` holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from concept_edit.methods.registry import describe, input_field
from concept_edit.validation import check_choice, check_fields

# the names of uce_debias.VARIANTS and CONTROLLERS (a test keeps them equal)
DEBIAS_VARIANTS = ("train_debias_add", "train_debias_main", "uce_sd_debias")
DEBIAS_CONTROLLERS = ("fixed", "secant")

TOKEN_MODES = ("last", "trailing", "all")


@dataclass(frozen=True)
class ClosedFormOptions:
    """The options of UCE's closed form (eq. 7), shared by every method that solves it (UCE, RECE)."""

    erase_scale: float = field(default=1.0, metadata={"help": "weight s_e of the edit terms in eq. 6"})
    preserve_scale: float = field(default=1.0, metadata={"help": "weight s_p of the preserve terms in eq. 6"})
    lam: float = field(default=0.5, metadata={"help": "TIME's identity regulariser lambda (0: pure eq. 7)"})
    edit_keys: bool = field(default=True, metadata={"help": "edit W_k as well as W_v (off: values only)"})
    tokens: str = field(default="last", metadata={"help": "concept tokens to edit: last | trailing | all"})
    float64: bool = field(default=True, metadata={"help": "accumulate and solve in float64"})

    def __post_init__(self) -> None:
        check_fields(
            self,
            {"erase_scale": {"low": 0, "low_open": True}, "preserve_scale": {"low": 0}, "lam": {"low": 0}},
        )
        check_choice("tokens", self.tokens, TOKEN_MODES)

    @property
    def dtype(self):
        import torch

        return torch.float64 if self.float64 else torch.float32


@dataclass(frozen=True)
class UCEConfig(ClosedFormOptions):
    debias_variant: str = field(
        default="uce_sd_debias",
        metadata={"help": "debias: which official script's loop: train_debias_add | train_debias_main | uce_sd_debias"},
    )
    debias_controller: str = field(
        default="secant", metadata={"help": "debias: alpha update: secant (fitted to the response) | fixed (step eta)"}
    )
    debias_step: float | None = field(
        default=None,
        metadata={"help": "debias: step eta, or the secant's first step (default: the variant's, 0.1 or 1)"},
    )
    debias_tolerance: float = field(default=0.05, metadata={"help": "debias: max |ratio error| to stop"})
    debias_max_iterations: int = field(default=30, metadata={"help": "debias: max solve iterations"})
    debias_images: int = field(default=10, metadata={"help": "debias: images per concept per measurement"})
    debias_steps: int | None = field(default=None, metadata={"help": "debias: inference steps (model default)"})
    debias_guidance: float | None = field(default=None, metadata={"help": "debias: guidance (model default)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fields(
            self,
            {
                "debias_step": {"low": 0, "low_open": True, "optional": True},
                "debias_tolerance": {"low": 0, "low_open": True, "high": 1},
                "debias_max_iterations": {"low": 1, "integer": True},
                "debias_images": {"low": 1, "integer": True},
                "debias_steps": {"low": 1, "integer": True, "optional": True},
                "debias_guidance": {"low": 0, "optional": True},
            },
        )
        check_choice("debias_variant", self.debias_variant, tuple(DEBIAS_VARIANTS))
        check_choice("debias_controller", self.debias_controller, DEBIAS_CONTROLLERS)


def _parse_classifier(spec: str, pipe):
    from concept_edit.evaluation.classifiers import make_classifier

    return make_classifier(spec, pipe)


@dataclass(frozen=True)
class UCEInputs:
    classifier: object = input_field(  # a uce_debias.RatioEstimator once parsed
        "debias: the judge of generated images: 'oracle' (ShapesSD) or 'clip:<hub id>'", parse=_parse_classifier
    )


describe(
    "uce",
    UCEConfig,
    modes=("erase", "moderate", "debias"),
    summary="closed-form edit of cross-attention K/V (erase, moderate, debias; TIME/MEMIT special cases)",
    inputs_cls=UCEInputs,
)
