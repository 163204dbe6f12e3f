"""concept_edit: edit what a text-to-image diffusion model knows, and measure what changed.

import concept_edit as ce
pipe = ce.load_pipeline("shapes")
edit = ce.fit(pipe, "uce", ce.EditRequest(concepts=("circle",)))
edit.save("edits/no-circle")
with ce.applied(pipe, edit):
    ...
"""

__version__ = "0.1.0"

from concept_edit.edit import Edit, EditError, WeightDelta, applied, apply, compose, revert  # noqa: E402
from concept_edit.methods import EditRequest, available_methods, fit, get_method, make_config  # noqa: E402
from concept_edit.models import ModelLoadError, load_pipeline  # noqa: E402

__all__ = [
    "Edit",
    "EditError",
    "EditRequest",
    "ModelLoadError",
    "WeightDelta",
    "__version__",
    "applied",
    "apply",
    "available_methods",
    "compose",
    "fit",
    "get_method",
    "load_pipeline",
    "make_config",
    "revert",
]
