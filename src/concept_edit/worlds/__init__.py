"""Worlds by name: every subpackage of `concept_edit.worlds` whose module defines `WORLD`, and every package named
by the `concept_edit.worlds` entry point group. Nothing here names a world: a new one is a new folder.

`world_of(pipe)` is the world of a loaded model (the real-model world for anything no world claims);
`world_for_spec(spec)` the world that loads a model spec itself ("shapes", "digits-vae"), if any.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from importlib.metadata import entry_points

from concept_edit.worlds.base import World

DEFAULT = "real"  # the world of a model no other world claims (a hub id, a local diffusers folder)


@cache
def worlds() -> dict[str, World]:
    found: dict[str, World] = {}
    modules = [f"{__name__}.{m.name}" for m in pkgutil.iter_modules(__path__) if m.ispkg]
    modules += [ep.value for ep in entry_points(group="concept_edit.worlds")]
    for module in modules:
        world = getattr(importlib.import_module(module), "WORLD", None)
        if isinstance(world, World):
            found[world.name] = world
    return found


def get_world(name: str | None) -> World:
    """The world called `name`; the real-model world for None."""
    known = worlds()
    if name is None:
        return known[DEFAULT]
    if name not in known:
        raise ValueError(f"unknown world {name!r}; known: {', '.join(sorted(known))}")
    return known[name]


def world_for_spec(spec: str) -> World | None:
    return next((w for w in worlds().values() if spec in w.model_specs), None)


def model_specs() -> list[str]:
    """Every model spec a world loads by name (for did-you-mean)."""
    return [spec for w in worlds().values() for spec in w.model_specs]


def world_of(pipe) -> World:
    """The world a loaded model belongs to (its `concept_edit_info.world`, set by the loader), the real-model world
    for a pipeline no world claims or one built by hand."""
    info = getattr(pipe, "concept_edit_info", None)
    return get_world(info.world if info is not None else None)


def all_suites() -> dict:
    """Suite name -> builder, over every world."""
    return {name: build for w in worlds().values() for name, build in w.suites().items()}


def registered(kind: str) -> dict[str, str]:
    """Every world's additions to `judges`, `feature_extractors` or `attribute_classifiers`."""
    return {name: target for w in worlds().values() for name, target in getattr(w, kind).items()}


__all__ = ["World", "all_suites", "get_world", "model_specs", "registered", "world_for_spec", "world_of", "worlds"]
