"""The edit file and everything that applies it: see `file` (the `Edit`), `changes` (the four kinds of
change), `apply` (apply / revert / compose), `tuning` (`trainable`, for fine-tuning methods), `manifest` (what a
manifest holds, checked without torch)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from concept_edit._lazy import lazy_package

# each public name imports its module (torch) when first read: the CLI's `inspect` reads `edit.manifest` only
lazy_package(
    __name__,
    {
        **dict.fromkeys(("applied", "applied_edits", "apply", "compose", "revert"), "concept_edit.edit.apply"),
        **dict.fromkeys(
            ("ActivationProjection", "Change", "DenseDelta", "EditError", "LowRankDelta", "SparseSet"),
            "concept_edit.edit.changes",
        ),
        **dict.fromkeys(("EDIT_FILENAME", "FORMAT"), "concept_edit.edit.manifest"),
        **dict.fromkeys(("Edit", "get_module", "resolve_edit_path"), "concept_edit.edit.file"),
        **dict.fromkeys(("Tuning", "trainable"), "concept_edit.edit.tuning"),
    },
)

if TYPE_CHECKING:
    from concept_edit.edit.apply import applied, applied_edits, apply, compose, revert
    from concept_edit.edit.changes import ActivationProjection, Change, DenseDelta, EditError, LowRankDelta, SparseSet
    from concept_edit.edit.file import Edit, get_module, resolve_edit_path
    from concept_edit.edit.manifest import EDIT_FILENAME, FORMAT
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
