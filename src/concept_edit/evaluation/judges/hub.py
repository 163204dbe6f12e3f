"""What the judges whose answers rest on weights share (ImageNet and CLIP from the Hugging Face hub, NudeNet
from its package), each judge module keeping only what is its own.

* `load_from_hub`: the one way weights come from the hub: the cache only when the hub cannot be reached, and
  one ValueError naming the download instead of minutes of retries and a traceback.
* `HubModel`: a transformers model and its processor, given or loaded by id (`load`), with `from_spec`
  ("<name>:<hub id>") and the weights' identity for a protocol (`weights()`: hub id, commit, transformers).
* `WeightsJudge`: `protocol()` = {"judge": name, **weights(), **settings()}, no summary by default, and the
  checks of a judge that answers one head and reads no attribute.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from concept_edit.hub import cache_only, first_line, offline_note


def load_from_hub(load: Callable, model_id: str, role: str, alternative: str = ""):
    """`load(model_id, **from_pretrained keywords)` reading the cache only when the hub cannot be reached;
    weights neither cached nor downloadable: one ValueError naming the download (`alternative` adds what the
    caller can use instead, e.g. "; for ShapesSD, pass --classifier oracle instead")."""
    try:
        return load(model_id, **cache_only())  # offline: the cache or one error at once, not minutes of retries
    except OSError as err:
        raise ValueError(
            f"cannot load the {role} {model_id!r}: {first_line(err)}{offline_note()}. Download it first on a machine "
            f"with internet (`hf download {model_id}`); it is then read from the Hugging Face cache{alternative}"
        ) from None


def hub_weights(model, model_id: str) -> dict:
    """A transformers model's identity for a protocol: its hub id, the commit its weights came from, and the
    transformers version (shown, not compared)."""
    from importlib.metadata import version

    revision = getattr(model.config, "_commit_hash", None)
    return {"weights": model_id, "revision": revision, "transformers": version("transformers")}


class HubModel:
    """A transformers model and its processor: given (tests, notebooks) or loaded by hub id with `load`."""

    default_model: ClassVar[str]

    def __init__(self, model=None, processor=None, model_id: str | None = None) -> None:
        if model is None:
            model, processor = self.load(model_id or self.default_model)
        self.model, self.processor = model, processor
        self.model_id = model_id or self.unnamed(model)

    @classmethod
    def from_spec(cls, argument: str | None):
        """The default model for "<name>", the given one for "<name>:<hub id>"."""
        return cls(model_id=argument or cls.default_model)

    def load(self, model_id: str) -> tuple:
        """(model, processor) for a hub id, through `load_from_hub`."""
        raise NotImplementedError

    def unnamed(self, model) -> str:
        """The id a protocol gives a model passed in without one."""
        return getattr(model.config, "name_or_path", "") or "in-memory"

    def weights(self) -> dict:
        return hub_weights(self.model, self.model_id)


class WeightsJudge:
    """A judge (`base.Judge`) whose answers rest on weights: its protocol names them, then its settings."""

    name: ClassVar[str]
    title: ClassVar[str]  # the judge in messages: "the {title} judge ..."

    def weights(self) -> dict:
        """What identifies the weights (hub id and commit, or the package version)."""
        return {}

    def settings(self) -> dict:
        """The judge's own choices that decide its answers (a threshold, top-k)."""
        return {}

    def protocol(self) -> dict:
        return {"judge": self.name, **self.weights(), **self.settings()}

    def summary(self, reading, suite) -> dict:
        return {}

    def asked(self, suite, head: str) -> list:
        """The entries that ask `head`, the one question this judge answers; ValueError when the suite asks for an
        attribute or an entry asks another head (entries with head "" ask nothing)."""
        if suite.attribute_head:
            asks = f"{suite.name} asks for {suite.attribute_head!r}"
            raise ValueError(f"the {self.title} judge reads no attribute; {asks}")
        for entry in suite.entries:
            if entry.head not in (head, ""):
                raise ValueError(f"the {self.title} judge answers head {head!r}, not {entry.head!r} ({entry.prompt!r})")
        return [entry for entry in suite.entries if entry.head]
