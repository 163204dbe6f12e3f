"""Evaluation: suites of prompts with expected labels, the papers' metrics, results files and the report."""

from __future__ import annotations

from typing import TYPE_CHECKING

from concept_edit._lazy import lazy_package

# each public name imports its module (torch, diffusers) when first read: `import concept_edit` stays light
lazy_package(
    __name__,
    {
        "Entry": "concept_edit.evaluation.suites",
        "EvaluationSpec": "concept_edit.evaluation.evaluate",
        "Suite": "concept_edit.evaluation.suites",
        "build_report": "concept_edit.evaluation.report",
        "evaluate": "concept_edit.evaluation.evaluate",
        "get_suite": "concept_edit.evaluation.suites",
        "write_report": "concept_edit.evaluation.report",
    },
)

if TYPE_CHECKING:
    from concept_edit.evaluation.evaluate import EvaluationSpec, evaluate
    from concept_edit.evaluation.report import build_report, write_report
    from concept_edit.evaluation.suites import Entry, Suite, get_suite

__all__ = [
    "Entry",
    "EvaluationSpec",
    "Suite",
    "build_report",
    "evaluate",
    "get_suite",
    "write_report",
]
