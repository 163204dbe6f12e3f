"""The edit file and everything that applies it: see `file` (the `Edit`), `changes` (the four kinds of
change), `apply` (apply / revert / compose), `tuning` (`trainable`, for fine-tuning methods)."""

from concept_edit.edit.apply import applied, applied_edits, apply, compose, revert
from concept_edit.edit.changes import (
    ActivationProjection,
    Change,
    DenseDelta,
    EditError,
    LowRankDelta,
    SparseSet,
)
from concept_edit.edit.file import EDIT_FILENAME, FORMAT, Edit, get_module, resolve_edit_path
from concept_edit.edit.tuning import Tuning, trainable

__all__ = [
    "EDIT_FILENAME",
    "FORMAT",
    "ActivationProjection",
    "Change",
    "DenseDelta",
    "Edit",
    "EditError",
    "LowRankDelta",
    "SparseSet",
    "Tuning",
    "applied",
    "applied_edits",
    "apply",
    "compose",
    "get_module",
    "resolve_edit_path",
    "revert",
    "trainable",
]
