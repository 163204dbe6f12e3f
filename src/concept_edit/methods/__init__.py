"""Concept-editing methods, dispatched through the registry.

Each built-in method lives in `concept_edit.methods.<name>/`: `config.py` (options and inputs, light to import)
describes it, `fit.py` holds its training code,
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
