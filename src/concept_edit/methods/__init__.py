"""Concept-editing methods. Importing this package registers every method."""

from concept_edit.methods import uce  # noqa: F401 - registers "uce"
from concept_edit.methods.registry import (
    MODES,
    EditRequest,
    Method,
    available_methods,
    fit,
    get_method,
    make_config,
    register,
)

__all__ = ["MODES", "EditRequest", "Method", "available_methods", "fit", "get_method", "make_config", "register"]
