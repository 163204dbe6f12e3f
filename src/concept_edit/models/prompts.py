"""Prompt encoding as the denoiser sees it, and where a concept's tokens sit inside a prompt.

Embeddings come from the pipeline's own `encode_prompt`, so they are exactly what cross-attention reads:
CLIP's last hidden state for SD 1.x/2.x, the 2048-d concatenation of both text encoders' penultimate states
for SDXL, MiniLM's token states for ShapesSD. Token positions come from the first tokenizer; they work for
CLIP BPE and BERT WordPiece alike (a concept is found as a subsequence of the prompt's token ids, which is
where both tokenizers put a whole word or phrase).

`encode_prompt_tokens` gives the same rows up to each prompt's end-of-text token but pads every batch only to
its longest prompt, wherever the padding cannot reach the prompt's tokens (`padding_is_invisible`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch


def tokenize(pipe, prompts: Sequence[str]):
    """Token ids and attention mask, padded to the tokenizer's maximum length as the pipeline pads them."""
    tok = pipe.tokenizer
    return tok(
        list(prompts), padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
    )


def _encode_batch(pipe, batch: Sequence[str]) -> torch.Tensor:
    embeds = pipe.encode_prompt(
        prompt=list(batch), device=pipe.device, num_images_per_prompt=1, do_classifier_free_guidance=False
    )[0]
    return embeds.float().cpu()


@torch.no_grad()
def encode_prompts(pipe, prompts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """(N, tokens, dim) text embeddings for `prompts`, padded to the maximum length, on CPU in float32."""
    out = [_encode_batch(pipe, prompts[i : i + batch_size]) for i in range(0, len(prompts), batch_size)]
    return torch.cat(out) if out else torch.zeros(0)


# -- encoding padded to the batch's longest prompt ------------------------------------------------------------
def _tokenizers(pipe) -> list:
    return [t for t in (pipe.tokenizer, getattr(pipe, "tokenizer_2", None)) if t is not None]


def _text_encoders(pipe) -> list:
    return [e for e in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if e is not None]


def token_counts(pipe, prompts: Sequence[str]) -> list[int]:
    """Tokens of each prompt, start and end-of-text included (the most any of the pipeline's tokenizers makes)."""
    counts = [0] * len(prompts)
    for tok in _tokenizers(pipe):
        ids = tok(list(prompts), truncation=True, max_length=tok.model_max_length).input_ids
        counts = [max(c, len(i)) for c, i in zip(counts, ids, strict=True)]
    return counts


def _is_causal(encoder) -> bool:
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    # CLIP's text transformer always applies its causal mask; a BERT is causal when it was built with
    # is_decoder (its config says so and every attention layer is causal: setting the config after loading
    # makes only the padding mask causal)
    if isinstance(encoder, CLIPTextModel | CLIPTextModelWithProjection):
        return True
    layers = [m for m in encoder.modules() if hasattr(m, "is_causal")]
    return bool(getattr(encoder.config, "is_decoder", False)) and bool(layers) and all(m.is_causal for m in layers)


def _gets_attention_mask(pipe, encoder) -> bool:
    from diffusers import StableDiffusionPipeline

    # StableDiffusionPipeline passes the mask when the encoder's config asks for it; SDXL's pipeline never does
    return isinstance(pipe, StableDiffusionPipeline) and bool(getattr(encoder.config, "use_attention_mask", False))


def padding_is_invisible(pipe) -> bool:
    """Whether a prompt's token states are the same however far its batch is padded.

    True when no real token attends to the padding: the encoder is causal (a token reads only the tokens
    before it; the padding comes after the prompt) or is given the attention mask (which hides the padding).
    SD 1.x/2.x (CLIP, causal), SDXL (two CLIPs, causal) and ShapesSD (MiniLM run causally, with the mask) are.
    A bidirectional encoder without the mask is not: every token attends to the padding, so its states
    change with it, and such a pipeline must keep max-length padding.
    """
    return all(_is_causal(e) or _gets_attention_mask(pipe, e) for e in _text_encoders(pipe))


def _batch_length(pipe, counts: Sequence[int]) -> int:
    """One more than the batch's longest prompt, at most the maximum: every batch keeps some padding.

    With no padding at all transformers drops the attention mask; an encoder that is causal only through
    its mask would then attend in both directions (ShapesSD's MiniLM was, before it was built causal).
    """
    return min(max(counts) + 1, min(t.model_max_length for t in _tokenizers(pipe)))


@contextmanager
def _padding_to(pipe, length: int) -> Iterator[None]:
    """Let the pipeline's own `encode_prompt` pad to `length` tokens (it pads to `tokenizer.model_max_length`)."""
    tokenizers = _tokenizers(pipe)
    saved = [t.model_max_length for t in tokenizers]
    try:
        for t in tokenizers:
            t.model_max_length = length
        yield
    finally:
        for t, limit in zip(tokenizers, saved, strict=True):
            t.model_max_length = limit


def _encode_short(pipe, prompts: Sequence[str], counts: Sequence[int], batch_size: int, sort: bool):
    """Batches padded to their longest prompt (+1), whatever the encoder; `encode_prompt_tokens` checks it may."""
    order = sorted(range(len(prompts)), key=counts.__getitem__) if sort else list(range(len(prompts)))
    out: list[torch.Tensor] = [torch.zeros(0)] * len(prompts)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        with _padding_to(pipe, _batch_length(pipe, [counts[i] for i in batch])):
            embeds = _encode_batch(pipe, [prompts[i] for i in batch])
        for i, e in zip(batch, embeds, strict=True):
            out[i] = e[: counts[i]]
    return out


@torch.no_grad()
def encode_prompt_tokens(
    pipe, prompts: Sequence[str], batch_size: int = 64, *, sort: bool = True, padded: bool = False
) -> list[torch.Tensor]:
    """Each prompt's (tokens, dim) embeddings, start token through end-of-text, on CPU in float32.

    The rows are those of `encode_prompts` (max-length padding), but each batch is padded only to its longest
    prompt (plus one pad, `_batch_length`): CLIP otherwise runs 77 positions for a prompt of 8 tokens, and
    encoding dominated large UCE edits. Prompts are batched in order of length (`sort`; 16% faster on the
    benchmark's prompts) so that a batch's padding is short. A pipeline
    whose encoder sees the padding (`padding_is_invisible` is False), or `padded=True`, encodes padded to the
    maximum length and keeps the same rows.
    """
    counts = token_counts(pipe, prompts)
    if padded or not padding_is_invisible(pipe):
        full = encode_prompts(pipe, prompts, batch_size)
        return [e[:n] for e, n in zip(full, counts, strict=True)]
    return _encode_short(pipe, prompts, counts, batch_size, sort)


def forces_zero_unconditional(pipe) -> bool:
    """SDXL pipelines (force_zeros_for_empty_prompt) feed zeros, not the encoded "", as the unconditional input."""
    return bool(getattr(pipe.config, "force_zeros_for_empty_prompt", False))


def unconditional_embedding(pipe, encoded_empty: torch.Tensor) -> torch.Tensor:
    """The per-token embedding the pipeline uses for classifier-free guidance's unconditional branch."""
    return torch.zeros_like(encoded_empty) if forces_zero_unconditional(pipe) else encoded_empty


def concept_ids(pipe, concept: str, what: str = "concept") -> list[int]:
    """The token ids of `concept` on its own, without special tokens; ValueError if there are none."""
    tok = pipe.tokenizer
    ids = tok(concept, add_special_tokens=False).input_ids
    if not concept.strip() or not ids:
        raise ValueError(f"{what} {concept!r} tokenizes to nothing; give a word or phrase")
    if tok.unk_token_id is not None and tok.unk_token_id in ids:
        unknown = [w for w in concept.split() if tok.unk_token_id in tok(w, add_special_tokens=False).input_ids]
        raise ValueError(
            f"{what} {concept!r} has text this model's tokenizer does not know ({' '.join(unknown) or concept!r} "
            f"becomes {tok.unk_token}): the edit would change the unknown token, not the {what}"
        )
    return list(ids)


def check_text(pipe, text: str, what: str = "concept") -> None:
    """ValueError unless the text encoder reads `text` as given: UTF-8, every token known, not cut at the end.

    Every method's concepts, guides, surrogates and preserved concepts go through this before any work
    (`concept_edit.methods.fit`): a tokenizer raises a TypeError on text holding undecodable bytes (a
    non-UTF-8 command-line argument arrives surrogate-escaped), maps what it does not know to its unknown
    token (the edit would then act on that token) and silently cuts a text longer than the encoder reads.
    "" (the empty prompt, a guide) passes. A pipeline without a tokenizer (the digits models) gets the
    UTF-8 check only.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise ValueError(f"{what} '{shown}' is not UTF-8 text; give it in UTF-8") from None
    if not text or getattr(pipe, "tokenizer", None) is None:
        return
    concept_ids(pipe, text, what)
    for tok in _tokenizers(pipe):
        n = len(tok(text).input_ids)
        if n > tok.model_max_length:
            shown = text if len(text) <= 60 else text[:57] + "..."
            raise ValueError(
                f"{what} {shown!r} has {n} tokens; this model reads at most {tok.model_max_length}, so the rest "
                "would be cut off: shorten it"
            )


def check_request_texts(pipe, request, extra: Sequence[tuple[str, str]] = ()) -> None:
    """`check_text` on every text of an `EditRequest` and on `extra` (what, text) pairs from a method's config."""
    texts = [
        *(("concept", c) for c in request.concepts),
        *(("guide", g) for g in request.concept_guides),
        *(("preserved concept", p) for p in request.preserve),
        *(("attribute", a) for a in request.attributes),
        *extra,
    ]
    for what, text in texts:
        check_text(pipe, text, what)


def concept_token_positions(pipe, prompt: str, concept: str) -> list[int]:
    """Positions (in the padded token sequence of `prompt`) of the first occurrence of `concept`.

    Raises ValueError when the concept's tokens do not occur in the prompt or were cut by truncation.
    """
    needle = concept_ids(pipe, concept)
    ids = tokenize(pipe, [prompt]).input_ids[0].tolist()
    for start in range(len(ids) - len(needle) + 1):
        if ids[start : start + len(needle)] == needle:
            return list(range(start, start + len(needle)))
    raise ValueError(
        f"concept {concept!r} does not occur in prompt {prompt!r} "
        f"(or is cut off at {pipe.tokenizer.model_max_length} tokens)"
    )


def last_token_index(pipe, prompts: Sequence[str]) -> torch.Tensor:
    """Index of each prompt's last real token (the one before end-of-text); 0 (start token) for "".

    This is the official UCE convention (`attention_mask.sum() - 2`).
    """
    mask = tokenize(pipe, prompts).attention_mask
    return (mask.sum(dim=1) - 2).clamp(min=0)


def overlong_prompts(pipe, prompts: Sequence[str]) -> list[tuple[str, int]]:
    """(prompt, tokens) for each prompt longer than the tokenizer allows (its end would be cut)."""
    limit = pipe.tokenizer.model_max_length
    counts = ((prompt, len(pipe.tokenizer(prompt).input_ids)) for prompt in prompts)
    return [(prompt, n) for prompt, n in counts if n > limit]


def prompt_lengths_ok(pipe, prompts: Sequence[str]) -> None:
    """ValueError if a prompt is longer than the tokenizer allows (its end would be silently cut)."""
    for prompt, n in overlong_prompts(pipe, prompts)[:1]:
        raise ValueError(
            f"prompt {prompt!r} has {n} tokens; this model reads at most {pipe.tokenizer.model_max_length}"
        )
