"""The `concept-edit` command: every verb lives here (`app` builds the parser and runs `main`; `edit`, `tools`,
`cad`, `evaluation` and `attacks` add their groups of verbs; `support` and `flags` hold what they share).

Library packages hold no CLI code; method flags come from each method's config dataclass and attack flags from
each attack's options dataclass, so `--help` and the docs cannot drift from the code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from concept_edit._lazy import lazy_package

# `main` is read when the command starts; a verb module imported alone (tests, docs) does not load the others
lazy_package(__name__, {"build_parser": "concept_edit.cli.app", "main": "concept_edit.cli.app"})

if TYPE_CHECKING:
    from concept_edit.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
