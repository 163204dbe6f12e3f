"""Concept-editing methods, dispatched through the registry.

The built-in methods are described by their options modules (`concept_edit.methods.options`, light to import);
a method's training code (torch, diffusers) is imported the first time it is run.
"""

from concept_edit.methods.registry import (
    MODES,
    EditRequest,
    Method,
    NoInputs,
    available_methods,
    describe,
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
    "describe",
    "fit",
    "get_method",
    "input_field",
    "make_config",
    "make_inputs",
    "read_list_file",
    "register",
]
