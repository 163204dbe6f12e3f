"""The method registry, the request every method receives, and the inputs a method may declare.

A method is
* a config dataclass: *how* to edit, every option documented in `field(metadata={"help": ...})`,
  validated in `__post_init__`, scalars or tuples of scalars only, no device or path;
* an inputs dataclass: what a method needs that is not an option (a judge of images, an image folder, a
  prompt list, a cache or resume directory), each field made with `input_field` so that the CLI can render
  it (`Path` -> a path flag, `tuple[...]` -> a repeatable flag, a `parse` function -> a text spec turned
  into an object once the pipeline is loaded, as `--classifier oracle` becomes a judge);
* one `fit(pipe, request, config, inputs, *, seed, progress)` that returns an `Edit` and leaves the
  pipeline as it found it (checked: a method that changes weights without restoring them is an error).
The request says what to edit. The CLI and `concept_edit.fit` dispatch only through this registry.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODES = ("erase", "moderate", "debias", "amplify")


def _norm(text: str) -> str:
    """How two concept texts are compared: case and surrounding or repeated spaces do not matter."""
    return " ".join(text.lower().split())


@dataclass(frozen=True)
class EditRequest:
    """What to edit.

    concepts:   the concepts to act on (prompts or phrases), e.g. ("Van Gogh",);
    mode:       erase | moderate | debias | amplify (each method lists the modes it supports);
    guide:      erase towards this concept instead of the method's default (UCE: the empty prompt; ESD: the
                anchor whose prediction replaces the unconditional one);
    guides:     erase each concept towards its own guide (as long as `concepts`; instead of `guide`),
                as the official UCE scripts take one guide per concept;
    preserve:   concepts whose behaviour must stay as it is;
    attributes: debias: the attributes to balance, e.g. ("male", "female");
    ratios:     debias: the desired share of each attribute (default: uniform); they must sum to 1.
    """

    concepts: tuple[str, ...]
    mode: str = "erase"
    guide: str | None = None
    guides: tuple[str, ...] = ()
    preserve: tuple[str, ...] = ()
    attributes: tuple[str, ...] = ()
    ratios: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "concepts", tuple(self.concepts))
        object.__setattr__(self, "preserve", tuple(self.preserve))
        object.__setattr__(self, "attributes", tuple(self.attributes))
        object.__setattr__(self, "guides", tuple(self.guides))
        if self.ratios is not None:
            object.__setattr__(self, "ratios", tuple(float(r) for r in self.ratios))
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if not self.concepts:
            raise ValueError("no concept given: name at least one concept to edit")
        for text in (*self.concepts, *self.preserve, *self.attributes):
            if not isinstance(text, str) or not text.strip():
                raise ValueError("empty concept: every concept, preserved concept and attribute needs text")
        if len({_norm(c) for c in self.concepts}) != len(self.concepts):
            raise ValueError(f"a concept is listed twice in {list(self.concepts)}")
        if self.guides:
            if self.guide is not None:
                raise ValueError("give one guide for every concept (guides) or one guide for all (guide), not both")
            if len(self.guides) != len(self.concepts):
                raise ValueError(f"{len(self.guides)} guides given for {len(self.concepts)} concepts; give one each")
            if not all(isinstance(g, str) for g in self.guides):
                raise ValueError("every guide must be text ('' for the empty prompt)")
        if self.guide is not None or self.guides:
            if self.mode not in ("erase",):
                raise ValueError(f"a guide concept applies to erase only, not to {self.mode}")
            for concept, guide in zip(self.concepts, self.concept_guides, strict=True):
                if _norm(concept) == _norm(guide):
                    raise ValueError(f"the guide {guide!r} is the concept being erased; pick a different guide")
        overlap = {_norm(c) for c in self.concepts} & {_norm(p) for p in self.preserve}
        if overlap:
            raise ValueError(f"{sorted(overlap)} cannot be both edited and preserved")
        if self.mode == "debias":
            if len(self.attributes) < 2:
                raise ValueError("debias needs at least two attributes to balance")
            if self.ratios is not None:
                if len(self.ratios) != len(self.attributes):
                    raise ValueError(f"{len(self.ratios)} ratios given for {len(self.attributes)} attributes")
                bad = any(not math.isfinite(r) or r < 0 for r in self.ratios)
                if bad or not math.isclose(sum(self.ratios), 1.0, abs_tol=1e-6):
                    raise ValueError(f"debias ratios must be non-negative and sum to 1; got {list(self.ratios)}")
        elif self.attributes or self.ratios is not None:
            raise ValueError("attributes and ratios apply to debias only")

    @property
    def concept_guides(self) -> tuple[str, ...]:
        """Each concept's guide: its own from `guides`, else `guide`, else "" (the empty prompt)."""
        return self.guides or tuple(self.guide or "" for _ in self.concepts)

    @property
    def desired_ratios(self) -> tuple[float, ...]:
        return self.ratios or tuple(1.0 / len(self.attributes) for _ in self.attributes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (tuples as lists), as stored in an edit's manifest."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def input_field(help: str, *, default: Any = None, parse: Callable[[str, Any], Any] | None = None) -> Any:
    """A field of a method's inputs dataclass. `parse(text, pipe)` turns a CLI spec into the value."""
    return field(default=default, metadata={"help": help, "parse": parse})


class CheckpointedInputs:
    """Base of the inputs of a method that checkpoints (its dataclass declares `checkpoint_every`): a run that
    checkpoints every 0 (or -5) steps is refused when the inputs are made, before any work."""

    def __post_init__(self) -> None:
        from concept_edit.validation import check_fields

        check_fields(self, {"checkpoint_every": {"low": 1, "integer": True}})


def read_list_file(path: str | Path) -> tuple[str, ...]:
    """One entry per line of a UTF-8 text file; blank lines and lines starting with '#' are skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"no such file: {path}") from None
    except (UnicodeDecodeError, IsADirectoryError) as err:
        raise ValueError(f"{path} is not a UTF-8 text file: {err}") from None
    return tuple(line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))


@dataclass(frozen=True)
class NoInputs:
    """The inputs of a method that needs nothing beyond its request and config."""


@dataclass(frozen=True)
class Method:
    """A registered method. A built-in one is described by its light options module (`describe`) and its fit
    code, which imports torch and diffusers, is imported the first time `fit` is read."""

    name: str
    config_cls: type
    modes: tuple[str, ...]
    summary: str
    inputs_cls: type = NoInputs
    class_conditional: bool = False  # also trains the digits models (not text-to-image), as Selective Amnesia does
    module: str | None = None  # the module whose `@register(name)` supplies the fit function
    fit_function: Callable[..., Any] | None = None

    @property
    def fit(self) -> Callable[..., Any]:
        if self.fit_function is not None:
            return self.fit_function
        importlib.import_module(self.module)
        loaded = _REGISTRY[self.name].fit_function
        if loaded is None:
            raise RuntimeError(f"{self.module} did not register a fit function for method {self.name!r}")
        return loaded


_REGISTRY: dict[str, Method] = {}
_described = False


def _describe_built_ins() -> None:
    """Import every built-in method's config module (light, no torch): each folder of `concept_edit.methods` with a
    `config.py` describes its method, so a new method is one folder."""
    global _described
    if not _described:
        _described = True
        import pkgutil

        package = importlib.import_module(__name__.rpartition(".")[0])
        for found in pkgutil.iter_modules(package.__path__):
            if found.ispkg and importlib.util.find_spec(f"{package.__name__}.{found.name}.config") is not None:
                importlib.import_module(f"{package.__name__}.{found.name}.config")


def describe(
    name: str,
    config_cls: type,
    modes: Sequence[str],
    summary: str,
    inputs_cls: type = NoInputs,
    class_conditional: bool = False,
    *,
    module: str | None = None,
) -> None:
    """Describe a method whose fit function `module` registers with `@register(name)` when it is imported; by
    default the `fit` module beside the config's (`methods/<name>/config.py` describes, `fit.py` registers)."""
    module = module or f"{config_cls.__module__.rpartition('.')[0]}.fit"
    known = _REGISTRY.get(name)
    fit_function = known.fit_function if known is not None else None
    _REGISTRY[name] = Method(
        name, config_cls, tuple(modes), summary, inputs_cls, class_conditional, module, fit_function
    )


def register(
    name: str,
    config_cls: type | None = None,
    modes: Sequence[str] | None = None,
    summary: str | None = None,
    inputs_cls: type = NoInputs,
    class_conditional: bool = False,
):
    """Decorator for a method's fit function: `@register(name)` for a method already described (a built-in
    one), else `@register(name, config_cls, modes, summary, ...)`."""

    def wrap(fit: Callable[..., Any]) -> Callable[..., Any]:
        if config_cls is None:
            if name not in _REGISTRY:
                raise ValueError(f"method {name!r} is not described: give its config class, modes and summary")
            _REGISTRY[name] = dataclasses.replace(_REGISTRY[name], fit_function=fit)
        else:
            _REGISTRY[name] = Method(
                name, config_cls, tuple(modes or ()), summary or "", inputs_cls, class_conditional, None, fit
            )
        return fit

    return wrap


def available_methods() -> list[str]:
    _describe_built_ins()
    return sorted(_REGISTRY)


def get_method(name: str) -> Method:
    _describe_built_ins()
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(available_methods())}")
    return _REGISTRY[name]


def _make(name: str, cls: type, what: str, options: dict[str, Any]):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(
            f"unknown {what}(s) for {name}: {', '.join(unknown)}; known: {', '.join(sorted(known)) or 'none'}"
        )
    return cls(**options)


def make_config(name: str, **options: Any):
    """The method's config with `options` set; ValueError naming any unknown option."""
    return _make(name, get_method(name).config_cls, "option", options)


def make_inputs(name: str, **values: Any):
    """The method's inputs with `values` set; ValueError naming any unknown input."""
    return _make(name, get_method(name).inputs_cls, "input", values)


def fit(pipe, method: str, request: EditRequest, config=None, inputs=None, *, seed: int = 0, progress: bool = True):
    """Run `method` on `pipe` for `request`; returns an `Edit` and leaves the pipeline unchanged."""
    from concept_edit.edit.state import changed_since, state_of, versions
    from concept_edit.models.info import model_info
    from concept_edit.worlds import world_of

    spec = get_method(method)
    if not world_of(pipe).text_to_image and not spec.class_conditional:
        usable = ", ".join(m for m in available_methods() if get_method(m).class_conditional)
        raise ValueError(f"{method} edits text-to-image pipelines; {model_info(pipe).spec} takes {usable}")
    if request.mode not in spec.modes:
        raise ValueError(f"{method} does not support mode {request.mode!r}; it supports {', '.join(spec.modes)}")
    config = config if config is not None else spec.config_cls()
    if not isinstance(config, spec.config_cls):
        raise ValueError(f"{method} takes a {spec.config_cls.__name__}, not a {type(config).__name__}")
    inputs = inputs if inputs is not None else spec.inputs_cls()
    if not isinstance(inputs, spec.inputs_cls):
        raise ValueError(f"{method} takes inputs {spec.inputs_cls.__name__}, not a {type(inputs).__name__}")
    from concept_edit.models.prompts import check_request_texts

    # one check of every text the encoder will read, for every method, before any work
    check_request_texts(pipe, request, getattr(config, "concept_texts", ()))
    state = state_of(pipe)
    before, depth = versions(pipe), len(state.stack)
    state.fit_versions.append(before)
    try:
        edit = spec.fit(pipe, request, config, inputs, seed=seed, progress=progress)
    finally:
        state.fit_versions.pop()
    if len(state.stack) != depth:
        raise RuntimeError(
            f"method {method} left {len(state.stack) - depth} edit(s) applied to the pipeline; a method must revert "
            "what it applies (use concept_edit.applied). Reload the pipeline."
        )
    changed = changed_since(pipe, before)
    if changed:
        raise RuntimeError(
            f"method {method} left {len(changed)} weight(s) of the pipeline changed (e.g. {changed[0]}); "
            "a method must restore them (train inside concept_edit.trainable). Reload the pipeline."
        )
    return edit
