"""The shapes world: ShapesSD (a tiny Stable-Diffusion-architecture model of procedural shapes, shipped with the
project), its oracle (which reads object, colour, background and the logo in any image), its suites, and its
caption grammar. Everything world-specific the rest of the library asks for comes from `WORLD`."""

from __future__ import annotations

from concept_edit.worlds.base import World


class ShapesWorld(World):
    name = "shapes"
    title = "ShapesSD"
    model_specs = ("shapes",)
    heads = ("object", "color", "style", "logo")
    judge = "shapes-oracle"
    features = "shapes-oracle"
    judges = {"shapes-oracle": "concept_edit.worlds.shapes.judge:ShapesOracleJudge"}
    feature_extractors = {"shapes-oracle": "concept_edit.worlds.shapes.judge:OracleFeatures"}
    attribute_classifiers = {"oracle": "concept_edit.worlds.shapes.judge:OracleAttributeClassifier"}

    @property
    def colors(self) -> dict[str, tuple[int, int, int]]:
        from concept_edit.worlds.shapes.world import COLORS

        return COLORS

    @property
    def default_steps(self) -> int:
        from concept_edit.worlds.shapes.pipeline import DEFAULT_STEPS

        return DEFAULT_STEPS

    @property
    def method_sampling_steps(self) -> int:
        return self.default_steps  # ShapesSD's methods sample its own 25-step trajectories

    # words of its synonyms ("round shape", "five-pointed star", "the acme company logo") too common to flag alone
    generic_words = frozenset({"shape", "sign", "background", "company", "sided", "pointed", "five", "three"})

    @property
    def default_guidance(self) -> float:
        from concept_edit.worlds.shapes.pipeline import DEFAULT_GUIDANCE

        return DEFAULT_GUIDANCE

    def load(self, spec, device, dtype):
        from concept_edit.models.info import ModelInfo
        from concept_edit.worlds.shapes.pipeline import IMAGE_SIZE, load_shapes_pipeline

        pipe = load_shapes_pipeline(device=device, dtype=dtype)
        pipe.concept_edit_info = ModelInfo(spec, self.name, self.default_steps, self.default_guidance, IMAGE_SIZE)
        return pipe

    def suites(self):
        from concept_edit.worlds.shapes.suites import SUITES

        return SUITES

    def describe_suite(self, name):
        from concept_edit.worlds.shapes.suites import REPORT_SENTENCES

        return REPORT_SENTENCES.get(name)

    def renders(self, entries):
        from concept_edit.worlds.shapes.renders import entry_renders

        return entry_renders(entries)

    def default_classifier(self) -> str:
        return "oracle"

    def concept_question(self, concept):
        from concept_edit.worlds.shapes.vocabulary import oracle_head

        return oracle_head(concept)

    def concept_prompts(self, concept):
        from concept_edit.worlds.shapes.vocabulary import concept_prompts

        return concept_prompts(concept)

    def synonyms(self, concept):
        from concept_edit.worlds.shapes.vocabulary import synonyms

        return synonyms(concept)

    def paraphrases(self, concept):
        from concept_edit.worlds.shapes.vocabulary import paraphrases

        return paraphrases(concept)

    def concept_pairs(self, concept):
        from concept_edit.worlds.shapes.vocabulary import concept_pairs

        return concept_pairs(concept)

    def inversion_templates(self):
        from concept_edit.worlds.shapes.captions import PREFIXES

        return tuple(f"{prefix} {{}}" for prefix in PREFIXES)  # the training captions' own openings

    def concept_images(self, spec, size, seed=0):
        if not spec.startswith(f"{self.name}:"):
            return None
        from concept_edit.worlds.shapes.renders import object_renders

        return object_renders(spec, seed), spec

    def replay_prompts(self, concepts, n, seed):
        from concept_edit.worlds.shapes.vocabulary import replay_prompts

        return replay_prompts(tuple(concepts), n, seed)

    def method_defaults(self, method, pipe):
        from concept_edit.worlds.shapes.tuned import METHOD_DEFAULTS

        return dict(METHOD_DEFAULTS.get(method, {}))


WORLD = ShapesWorld()
