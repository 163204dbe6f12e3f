"""Concept-editing methods. Importing this package registers every method."""

from concept_edit.methods import amnesia, cad, eigen, esd, uce  # noqa: F401 - registers each method
from concept_edit.methods.registry import (
    MODES,
    EditRequest,
    Method,
    NoInputs,
    available_methods,
    fit,
    get_method,
    input_field,
    make_config,
    make_inputs,
    read_list_file,
    register,
)

__all__ = [
    "MODES",
    "EditRequest",
    "Method",
    "NoInputs",
    "available_methods",
    "fit",
    "get_method",
    "input_field",
    "make_config",
    "make_inputs",
    "read_list_file",
    "register",
]
