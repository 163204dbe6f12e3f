"""concept_edit: edit what a text-to-image diffusion model knows, and measure what changed.

import concept_edit as ce
pipe = ce.load_pipeline("shapes")
edit = ce.fit(pipe, "uce", ce.EditRequest(concepts=("circle",)))
edit.save("edits/no-circle")
with ce.applied(pipe, edit):
    ...
"""

__version__ = "0.1.0"

from concept_edit.edit import (  # noqa: E402
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
from concept_edit.methods import EditRequest, available_methods, fit, get_method, make_config, make_inputs  # noqa: E402
from concept_edit.models import ModelLoadError, load_pipeline  # noqa: E402

__all__ = [
    "ActivationProjection",
    "DenseDelta",
    "Edit",
    "EditError",
    "EditRequest",
    "ModelLoadError",
    "LowRankDelta",
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
