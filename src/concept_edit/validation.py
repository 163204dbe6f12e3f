"""Checks of numbers and seeds at the library's boundary, shared by the configs, the CLI and the Python API.

Each check raises one `ValueError` that names the option, says what it must be and what it got, so that
`--lam nan`, `--steps 0` or a seed of 10**30 is refused where it is read, not found later as a traceback,
a black image or a silent default.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

MAX_SEED = 2**32 - 1  # numpy's range; torch's 64-bit seeds overflow when derived seeds are computed from them


def check_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    integer: bool = False,
    optional: bool = False,
) -> Any:
    """`value` if it is a finite number in range (an int if `integer`), else ValueError naming `name`."""
    if value is None and optional:
        return value
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return value


def check_seed(seed: Any, name: str = "seed") -> int:
    return check_number(name, seed, low=0, high=MAX_SEED, integer=True)


def check_choice(name: str, value: Any, allowed) -> Any:
    """ValueError naming the allowed values unless `value` is one of them."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def check_fields(obj: Any, rules: dict[str, dict]) -> None:
    """Apply `check_number` to dataclass fields: {field name: check_number keyword arguments}."""
    for field_name, rule in rules.items():
        check_number(field_name, getattr(obj, field_name), **rule)


def check_unused(obj: Any, names: Sequence[str], why: str) -> None:
    """ValueError for the first dataclass field of `names` set away from its default: it would do nothing (`why`).

    An option that is silently ignored in some mode (LoRA's alpha without LoRA, a pool option with another
    schedule) lets the user believe it took effect; a value equal to the default changes nothing either way.
    """
    defaults = {f.name: f.default for f in dataclasses.fields(obj)}
    for name in names:
        value = getattr(obj, name)
        if value != defaults[name]:
            raise ValueError(f"{name} {value!r} does nothing: {why}; leave it out")
