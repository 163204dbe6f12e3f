"""Attacks that try to bring an erased concept back, and `probe`, which runs one and measures it.

* `paraphrase` — other wordings of the concept (black-box);
* `soft-prompt` — free token embeddings optimised so the edited model predicts what the unedited one does
  for the concept (white-box, P4D / UnlearnDiff);
* `ring-a-bell` — a concept direction in the text encoder's output added to a prompt, projected back to
  discrete tokens by a genetic search (black-box, Ring-A-Bell);
* `concept-inversion` — a new word learned on the edited model from images of the concept (Textual
  Inversion, as Pham et al. circumvent erasures).
Each attack's options are a dataclass in `attacks.registry`. See `concept_edit.attacks.probe` for the results
dictionary; a judge is a `ConceptJudge` (`world_judge`, `suite_judge`, or `FunctionJudge` of your own).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from concept_edit._lazy import lazy_package

# each public name imports its module (torch, diffusers) when first read: `import concept_edit` stays light
lazy_package(
    __name__,
    {
        "ATTACKS": "concept_edit.attacks.registry",
        "DEFAULT_BUDGET": "concept_edit.attacks.registry",
        "ConceptInversionOptions": "concept_edit.attacks.registry",
        "ConceptJudge": "concept_edit.attacks.judging",
        "FunctionJudge": "concept_edit.attacks.judging",
        "RingABellOptions": "concept_edit.attacks.registry",
        "SoftPromptOptions": "concept_edit.attacks.registry",
        "probe": "concept_edit.attacks.probe",
        "suite_judge": "concept_edit.attacks.judging",
        "world_judge": "concept_edit.attacks.judging",
    },
)

if TYPE_CHECKING:
    from concept_edit.attacks.judging import ConceptJudge, FunctionJudge, suite_judge, world_judge
    from concept_edit.attacks.probe import probe
    from concept_edit.attacks.registry import (
        ATTACKS,
        DEFAULT_BUDGET,
        ConceptInversionOptions,
        RingABellOptions,
        SoftPromptOptions,
    )

__all__ = [
    "ATTACKS",
    "DEFAULT_BUDGET",
    "ConceptInversionOptions",
    "ConceptJudge",
    "FunctionJudge",
    "RingABellOptions",
    "SoftPromptOptions",
    "probe",
    "suite_judge",
    "world_judge",
]
