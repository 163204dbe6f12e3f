"""Command-line flags generated from options dataclasses (a method's config and inputs, an attack's options): one
`--flag` per field, its help from the field's metadata and its default from the field, so `--help` and the docs
cannot drift from the code."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path


def field_kind(hint) -> tuple[type, bool]:
    """(element type, repeatable) of a config or inputs field: `X | None` -> X; `tuple[X, ...]` -> X, repeatable."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0] if len(args) == 1 else str
    if typing.get_origin(hint) in (tuple, list):
        return typing.get_args(hint)[0], True
    return hint, False


def path_type(text: str) -> Path:
    if not text.strip():  # Path("") would be the current folder
        raise argparse.ArgumentTypeError("empty path: give a file or folder name")
    return Path(text)


def dataclass_flags(parser, cls: type, only: tuple[str, ...] | None = None) -> list[str]:
    """Add one --option per field (help from the field's metadata), or per field named in `only`; returns the
    field names.

    A field with a `parse` function (an input such as the debias judge) takes a text spec, parsed later.
    """
    hints = typing.get_type_hints(cls)
    names = []
    for f in dataclasses.fields(cls):
        if only is not None and f.name not in only:
            continue
        default = f.default if f.default is not dataclasses.MISSING else "none"
        help_text = f.metadata.get("help", "")
        if "default" not in help_text:  # a help that explains its own default keeps it
            help_text += f" (default: {default})"
        _add(parser, f, hints[f.name], help_text)
        names.append(f.name)
    return names


def shared_flags(parser, classes: dict[str, type]) -> dict[str, set[str]]:
    """One --option per field name over several dataclasses ({owner name: class}), for a verb whose choice picks
    the class (probe's --attack): the help says which owners take it and each one's default. Returns
    {field name: owners that take it}, for refusing a flag the chosen owner does not take."""
    owners: dict[str, list[tuple[str, dataclasses.Field, object]]] = {}
    for owner, cls in classes.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            owners.setdefault(f.name, []).append((owner, f, hints[f.name]))
    for taken in owners.values():
        help_text = "; ".join(
            f"{owner}: {f.metadata.get('help', '')} (default: {f.default})" for owner, f, _ in taken
        )
        _add(parser, taken[0][1], taken[0][2], help_text)
    return {name: {owner for owner, _, _ in taken} for name, taken in owners.items()}


def _add(parser, f: dataclasses.Field, hint, help_text: str) -> None:
    flag = "--" + f.name.replace("_", "-")
    kind, repeatable = field_kind(hint)
    if f.metadata.get("parse") is not None:
        kind = str
    if kind is bool:
        parser.add_argument(
            flag, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text
        )
    elif repeatable:
        parser.add_argument(
            flag, dest=f.name, type=kind, action="append", default=argparse.SUPPRESS, help=help_text + " (repeat)"
        )
    else:
        metavar = "PATH" if kind is Path else None
        parser.add_argument(
            flag, dest=f.name, type=path_type if kind is Path else kind, default=argparse.SUPPRESS, metavar=metavar,
            choices=f.metadata.get("choices"), help=help_text,
        )
