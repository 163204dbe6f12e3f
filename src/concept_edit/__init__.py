"""concept_edit: edit what a text-to-image diffusion model knows, and measure what changed.

import concept_edit as ce
pipe = ce.load_pipeline("shapes")
edit = ce.fit(pipe, "uce", ce.EditRequest(concepts=("circle",)))
edit.save("edits/no-circle")
with ce.applied(pipe, edit):
    ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from concept_edit._lazy import lazy_package
from concept_edit._version import __version__

# each public name imports its module (torch, diffusers) when first read: `import concept_edit` stays light
lazy_package(
    __name__,
    {
        "ActivationProjection": "concept_edit.edit",
        "DenseDelta": "concept_edit.edit",
        "Edit": "concept_edit.edit",
        "EditError": "concept_edit.edit",
        "EditRequest": "concept_edit.methods",
        "LowRankDelta": "concept_edit.edit",
        "ModelLoadError": "concept_edit.models",
        "SparseSet": "concept_edit.edit",
        "applied": "concept_edit.edit",
        "apply": "concept_edit.edit",
        "available_methods": "concept_edit.methods",
        "compose": "concept_edit.edit",
        "fit": "concept_edit.methods",
        "get_method": "concept_edit.methods",
        "load_pipeline": "concept_edit.models",
        "make_config": "concept_edit.methods",
        "make_inputs": "concept_edit.methods",
        "revert": "concept_edit.edit",
        "trainable": "concept_edit.edit",
    },
)

if TYPE_CHECKING:
    from concept_edit.edit import (
        ActivationProjection,
        DenseDelta,
        Edit,
        EditError,
        LowRankDelta,
        SparseSet,
        applied,
        apply,
        compose,
        revert,
        trainable,
    )
    from concept_edit.methods import EditRequest, available_methods, fit, get_method, make_config, make_inputs
    from concept_edit.models import ModelLoadError, load_pipeline

__all__ = [
    "ActivationProjection",
    "DenseDelta",
    "Edit",
    "EditError",
    "EditRequest",
    "LowRankDelta",
    "ModelLoadError",
    "SparseSet",
    "__version__",
    "applied",
    "apply",
    "available_methods",
    "compose",
    "fit",
    "get_method",
    "load_pipeline",
    "make_config",
    "make_inputs",
    "revert",
    "trainable",
]
