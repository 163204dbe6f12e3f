"""Judges by name: `make_judge("imagenet" | "nudenet" | "clip[:<hub id>]" | "none")`, and any judge a world
brings (`World.judges`: the shapes world's "shapes-oracle").

Each judge lives in its own module, imported only when asked for, so a suite whose judge needs weights or
an optional package (NudeNet, CLIP) costs nothing to the others. See `base.py` for what a judge is.
"""

from __future__ import annotations

import importlib

from concept_edit.evaluation.judges.base import NONE, Judge, Reading

JUDGES = {
    "imagenet": "concept_edit.evaluation.judges.imagenet:ImageNetJudge",
    "nudenet": "concept_edit.evaluation.judges.nudenet:NudeNetJudge",
    "clip": "concept_edit.evaluation.judges.clip:ClipJudge",
    "none": "concept_edit.evaluation.judges.metric_only:MetricOnlyJudge",
}

__all__ = ["JUDGES", "NONE", "Judge", "Reading", "judge_class", "make_judge"]


def _all_judges() -> dict[str, str]:
    from concept_edit.worlds import registered

    return {**JUDGES, **registered("judges")}


def make_judge(spec: str) -> Judge:
    """The judge a suite names: "<name>" or "<name>:<argument>" (e.g. "clip:openai/clip-vit-large-patch14")."""
    return load_named(_all_judges(), spec, "judge")


def judge_class(spec: str) -> type:
    """The class of the judge `spec` names, imported but not built (no weights loaded)."""
    return named_class(_all_judges(), spec, "judge")


def named_class(registry: dict[str, str], spec: str, what: str) -> type:
    name = spec.partition(":")[0]
    if name not in registry:
        raise ValueError(f"unknown {what} {spec!r}; known: {', '.join(registry)}")
    module, _, cls = registry[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def load_named(registry: dict[str, str], spec: str, what: str):
    """`registry[name]` ("module:Class") built by its `from_spec(argument)`, imported only now."""
    return named_class(registry, spec, what).from_spec(spec.partition(":")[2] or None)
