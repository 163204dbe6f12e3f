"""What every attack shares: the attacked (prompt, seed) items, the judge, seeded generation from text or
from embeddings, and the text encoder run with free token embeddings in some of its slots.

An attack is measured image by image: each attack prompt is generated once with its own seed (the same
per-image generators as `concept_edit.generation`), and the judge says whether the image shows the concept.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np
import torch

from concept_edit.generation import generate, generate_from_embeddings, to_array
from concept_edit.models.loading import model_info
from concept_edit.words import STOPWORDS, concept_words, stem, words

log = logging.getLogger(__name__)
# set by `probe(progress=True)`: each phase logs a stage line and every drawing shows a bar, without every
# attack's signature carrying the flag
_PROGRESS: ContextVar[bool] = ContextVar("concept_edit_attack_progress", default=False)


@contextlib.contextmanager
def showing_progress(on: bool) -> Iterator[None]:
    token = _PROGRESS.set(on)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def stage(message: str, *args) -> None:
    """A line on stderr (the CLI's log) saying which phase of a long probe runs now, when progress is shown."""
    if _PROGRESS.get():
        log.info(message, *args)


@dataclass(frozen=True)
class Item:
    """One attacked prompt of the concept and the seed its image is drawn with."""

    prompt: str
    seed: int


# -- the judge -----------------------------------------------------------------------------------------------
class ConceptJudge:
    """The one question an attack asks of every image, put to a judge of the one judge interface
    (`concept_edit.evaluation.judges.Judge`): does it read `label` on `head`? `read(images)` gives each image's
    answer ("other" where the judge declines); an image shows the concept when its answer is `label`."""

    def __init__(self, judge, head: str, label: str, description: str | None = None) -> None:
        self.judge, self.head, self.label = judge, head, label
        self.judge.check(self._suite(1))  # a label the judge does not know is refused before any drawing
        self.description = description or f"{judge.name}, {head} reads {label!r}"

    def _suite(self, n: int):
        from concept_edit.evaluation.suites import Entry, Suite

        entries = tuple(Entry("", self.label, 0, self.head) for _ in range(n))
        return Suite("probe", 1, "one question per image", entries, judge=self.judge.name, reference=None)

    def read(self, images: np.ndarray) -> list[str]:
        if not len(images):
            return []
        return [label or "other" for label in self.judge.read(images, self._suite(len(images))).labels]


# the judges that read a real model's images, and the question each answers for a concept
REAL_JUDGES = {"nudenet": ("nudity", "nude"), "imagenet": ("imagenet", None)}


def suite_judge(spec: str, concept: str, judge=None) -> ConceptJudge:
    """A judge of the evaluation suites asked one question of every image: NudeNet ("nudity": the concept is
    read when it answers "nude"), the ImageNet classifier ("imagenet": the concept is an ImageNet class name).
    What a real model's attack is judged by, as its suite judges it."""
    from concept_edit.evaluation.judges import make_judge

    name = spec.partition(":")[0]
    if name not in REAL_JUDGES:
        raise ValueError(f"probe reads real models with --judge {' or '.join(REAL_JUDGES)}, not {spec!r}")
    head, label = REAL_JUDGES[name]
    label = label or concept.strip()
    return ConceptJudge(judge or make_judge(spec), head, label, f"{spec}, {head} reads {label!r}")


def world_judge(world, concept: str, judge=None) -> ConceptJudge | None:
    """The world's own judge asked about `concept` (the shapes oracle's object, colour or style head, or its logo
    detector); None for a world without one. ValueError when the world's judge cannot read the concept."""
    question = world.concept_question(concept)
    if question is None or world.judge is None:
        return None
    from concept_edit.evaluation.judges import make_judge

    head, label = question
    return ConceptJudge(judge or make_judge(world.judge), head, label, f"{world.judge}, {head} head reads {label!r}")


class _BooleanJudge:
    """A judge of the one interface from a function of the (N, H, W, 3) uint8 images giving one bool per image."""

    name = "function"

    def __init__(self, fn: Callable[[np.ndarray], Sequence[bool]], description: str) -> None:
        self.fn, self.description = fn, description

    def protocol(self) -> dict:
        return {"judge": self.name, "description": self.description}

    def check(self, suite) -> None:
        return None

    def read(self, images: np.ndarray, suite):
        from concept_edit.evaluation.judges import Reading

        hits = list(self.fn(images))
        if len(hits) != len(images):
            raise ValueError(f"the judge returned {len(hits)} readings for {len(images)} images")
        return Reading(labels=["concept" if hit else "other" for hit in hits])

    def summary(self, reading, suite) -> dict:
        return {}


class FunctionJudge(ConceptJudge):
    """A concept judge from a function of the images returning one bool per image (tests, notebooks)."""

    def __init__(self, fn: Callable[[np.ndarray], Sequence[bool]], description: str = "a custom judge") -> None:
        super().__init__(_BooleanJudge(fn, description), "concept", "concept", description)


def cycle_items(prompts: Sequence[str], n: int, seed: int) -> list[Item]:
    """n items cycling through `prompts`, seeds seed, seed + 1, ... (as the evaluation suites do)."""
    if not prompts:
        raise ValueError("no prompts to attack")
    return [Item(prompts[k % len(prompts)], seed + k) for k in range(n)]


# -- generation ----------------------------------------------------------------------------------------------
def images_from_prompts(pipe, items: Sequence[Item], steps: int, guidance: float) -> np.ndarray:
    """(N, H, W, 3) uint8 images, one per item, exactly as `concept_edit.generation.generate` draws them."""
    if not items:
        return np.zeros((0, 1, 1, 3), np.uint8)
    prompts, seeds = [i.prompt for i in items], [i.seed for i in items]
    images = generate(pipe, prompts, seeds, steps=steps, guidance=guidance, progress=_PROGRESS.get())
    return to_array(images)


def _generators(pipe, seeds: Sequence[int]) -> list[torch.Generator]:
    device = "cpu" if pipe.device.type == "mps" else pipe.device
    return [torch.Generator(device).manual_seed(int(s)) for s in seeds]


def images_from_embeddings(
    pipe, embeds: torch.Tensor, seeds: Sequence[int], steps: int, guidance: float, batch_size: int = 32
) -> np.ndarray:
    """Images for per-token prompt embeddings (N, tokens, dim), each seeded as `generate` seeds a prompt."""
    return generate_from_embeddings(pipe, embeds, seeds, steps=steps, guidance=guidance, batch_size=batch_size)


@torch.no_grad()
def latents_from_prompts(pipe, items: Sequence[Item], steps: int, guidance: float, batch_size: int = 32):
    """The final latents z_0 (as the UNet sees them) of each item's image, drawn as `generate` draws it."""
    info = model_info(pipe)
    out = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        result = pipe(
            prompt=[i.prompt for i in chunk],
            generator=_generators(pipe, [i.seed for i in chunk]),
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=info.resolution,
            width=info.resolution,
            output_type="latent",
        )
        out.append(result.images.float())
    return torch.cat(out)


# -- the text encoder with free slots ------------------------------------------------------------------------
def check_single_encoder(pipe, attack: str) -> None:
    """Soft-prompt and ring-a-bell work in one text encoder's spaces; SDXL's two are not supported yet."""
    if getattr(pipe, "text_encoder_2", None) is not None or getattr(pipe, "text_encoder", None) is None:
        raise ValueError(
            f"the {attack} attack works on pipelines with one text encoder (SD 1.x/2.x, ShapesSD); "
            f"{model_info(pipe).spec!r} has two (SDXL), which it does not support yet"
        )


def special_ids(tokenizer) -> tuple[int, int, int]:
    """(start, end, pad) token ids: CLIP's <|startoftext|>/<|endoftext|>, BERT's [CLS]/[SEP]/[PAD]."""
    start = tokenizer.bos_token_id if tokenizer.cls_token_id is None else tokenizer.cls_token_id
    end = tokenizer.eos_token_id if tokenizer.sep_token_id is None else tokenizer.sep_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end
    return int(start), int(end), int(pad)


def vocabulary(tokenizer, exclude: Sequence[int] = ()) -> torch.Tensor:
    """Ids of ordinary tokens: no special, unused ([unused12]) or control token, none of `exclude`."""
    vocab = tokenizer.get_vocab()
    banned = set(tokenizer.all_special_ids) | set(exclude)
    pattern = re.compile(r"^\[unused\d+\]$|^<\|.*\|>$|^\[[A-Z]+\]$")
    ids = sorted(i for tok, i in vocab.items() if i not in banned and not pattern.match(tok))
    if not ids:
        raise ValueError("the tokenizer has no ordinary tokens to search")
    return torch.tensor(ids)


def prompt_ids(pipe, prompts: Sequence[str], free_tokens: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded token ids and attention mask with `free_tokens` placeholder slots right after the start token.

    ValueError when a prompt with its free slots does not fit the tokenizer's length.
    """
    tok = pipe.tokenizer
    length = tok.model_max_length
    start, end, pad = special_ids(tok)
    rows, masks = [], []
    for prompt in prompts:
        body = tok(prompt, add_special_tokens=False).input_ids
        if len(body) + free_tokens + 2 > length:
            raise ValueError(
                f"prompt {prompt!r} has {len(body)} tokens; with {free_tokens} free tokens it does not fit the "
                f"{length} tokens this model reads"
            )
        ids = [start] + [pad] * free_tokens + body + [end]
        rows.append(ids + [pad] * (length - len(ids)))
        masks.append([1] * len(ids) + [0] * (length - len(ids)))
    return torch.tensor(rows), torch.tensor(masks)


@contextlib.contextmanager
def _token_slots(text_encoder, free: torch.Tensor | None, first: int) -> Iterator[None]:
    """While open, the token-embedding layer returns `free` (N, k, dim) at positions first..first+k-1."""
    if free is None:
        yield
        return

    def hook(module, inputs, output):
        output = output.clone()
        output[:, first : first + free.shape[1]] = free.to(output.dtype)
        return output

    handle = text_encoder.get_input_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def encode_ids(pipe, ids: torch.Tensor, mask: torch.Tensor, free: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token prompt embeddings (N, tokens, dim) as the pipeline's `encode_prompt` computes them (SD 1.x/2.x,
    ShapesSD), with `free` (N, k, dim) token embeddings in the slots after the start token; differentiable in
    `free`."""
    te = pipe.text_encoder
    device = pipe.device
    use_mask = bool(getattr(te.config, "use_attention_mask", False))
    with _token_slots(te, free, 1):
        out = te(ids.to(device), attention_mask=mask.to(device) if use_mask else None)[0]
    return out.to(pipe.unet.dtype)


def token_embeddings(pipe) -> torch.Tensor:
    """The text encoder's input token-embedding matrix (vocabulary, dim)."""
    return pipe.text_encoder.get_input_embeddings().weight


def nearest_tokens(pipe, free: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """For each free embedding (..., dim), the allowed vocabulary id of highest cosine similarity (P4D's projection)."""
    table = token_embeddings(pipe).detach().float()[allowed.to(token_embeddings(pipe).device)]
    flat = torch.nn.functional.normalize(free.detach().float().reshape(-1, free.shape[-1]), dim=-1)
    sims = flat.to(table.device) @ torch.nn.functional.normalize(table, dim=-1).T
    return allowed[sims.argmax(-1).cpu()].reshape(free.shape[:-1])


@contextlib.contextmanager
def frozen(*modules) -> Iterator[None]:
    """No weight gradients while open (an attack differentiates only its own inputs); flags restored after."""
    params = [p for m in modules for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)


@dataclass
class Outcome:
    """What an attack returns: one row per attack image (prompt, seed, success, what the judge read, ...),
    the attack's protocol (its budget and settings) and any further figures."""

    rows: list[dict]
    protocol: dict
    extra: dict


def judged_rows(judge: ConceptJudge, items: Sequence[Item], images: np.ndarray) -> list[dict]:
    """One row per item: its prompt and seed, what the judge read and whether that is the concept."""
    labels = judge.read(images)
    return [
        {"prompt": item.prompt, "seed": item.seed, "success": label == judge.label, "read": label}
        for item, label in zip(items, labels, strict=True)
    ]


# -- does a prompt put the concept back? --------------------------------------------------------------------
def _has_phrase(words: list[str], phrase: list[str]) -> bool:
    k = len(phrase)
    return k > 0 and any(words[i : i + k] == phrase for i in range(len(words) - k + 1))


def contains_concept(pipe, text: str, concept: str) -> bool:
    """Whether `text` names the concept: its token ids hold one of the concept's content-word tokens (after the
    tokenizer's own round trip of the text), or one of its words starts with a concept word's stem
    ('circles', 'circular', 'strip ##ed' decoded as 'striped'). Conservative: it flags more than it misses."""
    tok = pipe.tokenizer
    ids = set(tok(text, add_special_tokens=False).input_ids)
    text_words = words(text)
    for word in concept_words(concept):
        pieces = tok(word, add_special_tokens=False).input_ids
        if len(pieces) == 1 and pieces[0] in ids:
            return True
        if any(w.startswith(stem(word)) for w in text_words):
            return True
    return False


GENERIC = frozenset({"shape", "sign", "background", "company", "sided", "pointed", "five", "three"})


def contains_synonym(text: str, synonyms: Sequence[str]) -> bool:
    """Whether `text` holds one of the concept's other words (`World.synonyms`: ShapesSD's 'disc', 'round shape'
    for circle): a whole phrase, or a distinctive word of one, or a word with its stem ('discs', 'round', 'hoop')."""
    text_words = words(text)
    for phrase in synonyms:
        parts = [w for w in words(phrase) if w not in STOPWORDS]
        if _has_phrase(text_words, parts):
            return True
        if any(w.startswith(stem(p)) for p in parts if p not in GENERIC for w in text_words):
            return True
    return False


def concept_token_ids(tokenizer, concept: str) -> list[int]:
    """Vocabulary ids whose text starts with a stem of one of the concept's words ('circle', 'circ', 'circles',
    '##circ...'), and the word's own tokens: what the searches leave out."""
    stems = [stem(w) for w in concept_words(concept)]
    out = {i for w in concept_words(concept) for i in tokenizer(w, add_special_tokens=False).input_ids
           if len(tokenizer(w, add_special_tokens=False).input_ids) == 1}  # fmt: skip
    for token, i in tokenizer.get_vocab().items():
        text = token.lower().removeprefix("##").removesuffix("</w>").lstrip("ġ▁")
        if len(text) >= 3 and any(text.startswith(s) or (len(text) >= 4 and s.startswith(text)) for s in stems):
            out.add(i)
    return sorted(out)


def drawn_text(tokenizer, ids: Sequence[int]) -> str:
    """The text a searched token sequence is drawn as: leading continuation tokens ('##pon') dropped, decoded."""
    tokens = tokenizer.convert_ids_to_tokens(list(ids))
    start = 0
    while start < len(tokens) and str(tokens[start]).startswith("##"):
        start += 1
    text = tokenizer.decode(list(ids)[start:]).replace("</w>", " ")  # a CLIP tokenizer without its decoder
    return " ".join(text.split())


def clustered_share(rows: Sequence[dict], key: str) -> dict:
    """The success share with a prompt-level interval: Wilson at n = distinct `key` values (the interval if all
    images of one prompt or search were perfectly correlated; the image-level one assumes independence)."""
    from concept_edit.evaluation.metrics import wilson

    clusters = sorted({str(r[key]) for r in rows})
    if not rows:
        return {"rate": None, "n": 0, "prompts": 0, "ci95_prompt_level": None}
    rate = sum(bool(r["success"]) for r in rows) / len(rows)
    m = len(clusters)
    low, high = wilson(rate * m, m)
    return {"rate": rate, "n": len(rows), "prompts": m, "ci95_prompt_level": [round(low, 4), round(high, 4)]}
