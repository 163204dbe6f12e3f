"""Concept attribution (CAD, paper 002): scores w * dJ/dw, ablation of the top entries, the approximation check."""

from __future__ import annotations

from typing import TYPE_CHECKING

from concept_edit._lazy import lazy_package

# each public name imports its module (torch, diffusers) when first read: `import concept_edit` stays light
lazy_package(
    __name__,
    {
        "ConceptImages": "concept_edit.cad.images",
        "GROUPS": "concept_edit.cad.attribution",
        "ablation_changes": "concept_edit.cad.ablation",
        "ablation_indices": "concept_edit.cad.ablation",
        "group_weights": "concept_edit.cad.attribution",
        "resolve_images": "concept_edit.cad.images",
    },
)

if TYPE_CHECKING:
    from concept_edit.cad.ablation import ablation_changes, ablation_indices
    from concept_edit.cad.attribution import GROUPS, group_weights
    from concept_edit.cad.images import ConceptImages, resolve_images

__all__ = [
    "ConceptImages",
    "GROUPS",
    "ablation_changes",
    "ablation_indices",
    "group_weights",
    "resolve_images",
]
