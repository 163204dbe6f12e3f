"""Concept attribution (CAD, paper 002): scores w * dJ/dw, ablation of the top entries, the approximation check."""

from concept_edit.cad.ablation import ablation_changes, ablation_indices
from concept_edit.cad.attribution import GROUPS, group_weights
from concept_edit.cad.images import ConceptImages, resolve_images

__all__ = ["GROUPS", "ConceptImages", "ablation_changes", "ablation_indices", "group_weights", "resolve_images"]
