"""Evaluation: suites of prompts with expected labels, the papers' metrics, results files and the report."""

from concept_edit.evaluation.evaluate import evaluate
from concept_edit.evaluation.report import build_report, write_report
from concept_edit.evaluation.suites import Entry, Suite, get_suite

__all__ = ["Entry", "Suite", "build_report", "evaluate", "get_suite", "write_report"]
