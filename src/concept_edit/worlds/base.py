"""What a world is: the plug-in that knows one family of models — its models, suites, judge and vocabulary.

Evaluation, attacks and methods never import a world; they ask the world of the model they were given
(`concept_edit.worlds.world_of(pipe)`). Every question has a default here that means "this world knows nothing
particular", which is what a real Stable Diffusion model from the hub gets: the user names the judge, the
prompts and the images, as the papers' protocols do. A world overrides what it can answer itself (ShapesSD can
draw the truth of any prompt and read any image with its oracle). A new world is one folder in
`concept_edit/worlds/` (or a package named by the `concept_edit.worlds` entry point) whose `WORLD` is an instance.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class World:
    name: str = "real"
    title: str = "a real text-to-image model"  # how a report names the model ("ShapesSD")
    model_specs: tuple[str, ...] = ()  # the model specs this world loads itself ("shapes")
    text_to_image: bool = True  # False: class-conditional models (no prompts, no tokenizer)
    heads: tuple[str, ...] = ()  # the questions its judge answers (`Entry.head`), for custom suite files
    judge: str | None = None  # the judge spec that reads this world's images (`evaluation.judges.make_judge`)
    features: str | None = None  # the Frechet features native to this world (`evaluation.features`)
    judges: dict[str, str] = {}  # judge name -> "module:Class" this world adds to the judges
    feature_extractors: dict[str, str] = {}  # features name -> "module:Class" this world adds
    attribute_classifiers: dict[str, str] = {}  # classifier name -> "module:Class" (UCE debias)
    colors: dict[str, tuple[int, int, int]] = {}  # colour names the report draws as swatches
    default_steps: int = 30
    default_guidance: float = 7.5
    # the sampling steps methods draw their own trajectories with on this world's models (ESD, CAD, Selective
    # Amnesia); None: each method's official count (50 for all three)
    method_sampling_steps: int | None = None
    generic_words: frozenset[str] = frozenset()  # words of its synonyms too common to flag alone ("shape")

    # -- models ---------------------------------------------------------------------------------------------
    def load(self, spec: str, device, dtype):
        """The model `spec` (one of `model_specs`) on `device`; its `concept_edit_info` set by the loader."""
        raise NotImplementedError(f"the {self.name} world loads no model by name")

    # -- evaluation -----------------------------------------------------------------------------------------
    def suites(self) -> dict[str, Callable[..., Any]]:
        """Suite name -> builder(n: int | None, seed: int, argument: str | None) -> `evaluation.suites.Suite`."""
        return {}

    def renders(self, entries):
        """True images of what each suite entry asks for ((N, H, W, 3) uint8), or None: no ground truth."""
        return None

    def default_classifier(self) -> str:
        """The attribute classifier UCE's debias loop uses when none is named."""
        return "clip"

    # -- attacks --------------------------------------------------------------------------------------------
    def concept_question(self, concept: str) -> tuple[str, str] | None:
        """(head, label) this world's judge answers to say an image shows `concept`; None: the user names a judge.
        ValueError when the world's judge cannot read the concept."""
        return None

    def concept_prompts(self, concept: str) -> list[str] | None:
        """Prompts that name the concept as this world's suites word it (an attack's starting points)."""
        return None

    def synonyms(self, concept: str) -> list[str]:
        """Other words this world's captions use for the concept ('disc' for circle), [] if none known."""
        return []

    def paraphrases(self, concept: str) -> list[str] | None:
        """Wordings of the concept that avoid its name (the paraphrase attack); None: the user gives them."""
        return None

    def concept_pairs(self, concept: str) -> list[tuple[str, str]] | None:
        """(with, without) prompt pairs differing by the concept only (Ring-A-Bell); None: the user gives them."""
        return None

    def inversion_templates(self) -> tuple[str, ...]:
        """Prompt templates a learned word is trained and drawn in (concept inversion); "{}" is the word.
        Default: a subset of Textual Inversion's (Gal et al.) object templates."""
        return (
            "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
            "a close-up photo of a {}", "a bright photo of the {}", "a good photo of a {}", "a photo of one {}",
        )  # fmt: skip

    # -- methods --------------------------------------------------------------------------------------------
    def concept_images(self, spec: str, size: int, seed: int = 0):
        """(images (N, H, W, 3) uint8, description) for a `<world>:...` image spec (CAD-Amplify), or None."""
        return None

    def replay_prompts(self, concepts: tuple[str, ...], n: int, seed: int) -> list[str] | None:
        """Prompts for generative replay that avoid `concepts` (Selective Amnesia); None: the user gives them."""
        return None

    def backend(self, method: str, pipe, **options):
        """The adapter `method` trains this world's models through, when they are not text-to-image pipelines
        (Selective Amnesia on the digits models); None: the method's own."""
        return None

    def method_defaults(self, method: str, pipe) -> dict[str, Any]:
        """Option values tuned for this world, replacing the paper's defaults for `method` ({} keeps them)."""
        return {}

    def describe_suite(self, name: str) -> str | None:
        """One sentence for the report: what suite `name` measures."""
        return None

    def owns_export(self, marker: dict) -> bool:
        """Whether an exported diffusers folder's `concept_edit.json` marker says it came from this world."""
        return marker.get("world") == self.name
