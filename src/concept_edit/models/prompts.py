"""Prompt encoding as the denoiser sees it, and where a concept's tokens sit inside a prompt.

Embeddings come from the pipeline's own `encode_prompt`, so they are exactly what cross-attention reads:
CLIP's last hidden state for SD 1.x/2.x, the 2048-d concatenation of both text encoders' penultimate states
for SDXL, MiniLM's token states for ShapesSD. Token positions come from the first tokenizer; they work for
CLIP BPE and BERT WordPiece alike (a concept is found as a subsequence of the prompt's token ids, which is
where both tokenizers put a whole word or phrase).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def tokenize(pipe, prompts: Sequence[str]):
    """Token ids and attention mask, padded to the tokenizer's maximum length as the pipeline pads them."""
    tok = pipe.tokenizer
    return tok(
        list(prompts), padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
    )


@torch.no_grad()
def encode_prompts(pipe, prompts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """(N, tokens, dim) text embeddings for `prompts`, on CPU in float32."""
    out = []
    for i in range(0, len(prompts), batch_size):
        batch = list(prompts[i : i + batch_size])
        embeds = pipe.encode_prompt(
            prompt=batch, device=pipe.device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )[0]
        out.append(embeds.float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def forces_zero_unconditional(pipe) -> bool:
    """SDXL pipelines (force_zeros_for_empty_prompt) feed zeros, not the encoded "", as the unconditional input."""
    return bool(getattr(pipe.config, "force_zeros_for_empty_prompt", False))


def unconditional_embedding(pipe, encoded_empty: torch.Tensor) -> torch.Tensor:
    """The per-token embedding the pipeline uses for classifier-free guidance's unconditional branch."""
    return torch.zeros_like(encoded_empty) if forces_zero_unconditional(pipe) else encoded_empty


def concept_ids(pipe, concept: str) -> list[int]:
    """The token ids of `concept` on its own, without special tokens; ValueError if there are none."""
    tok = pipe.tokenizer
    ids = tok(concept, add_special_tokens=False).input_ids
    if not concept.strip() or not ids:
        raise ValueError(f"concept {concept!r} tokenizes to nothing; give a word or phrase")
    if tok.unk_token_id is not None and tok.unk_token_id in ids:
        unknown = [w for w in concept.split() if tok.unk_token_id in tok(w, add_special_tokens=False).input_ids]
        raise ValueError(
            f"concept {concept!r} has text this model's tokenizer does not know ({' '.join(unknown) or concept!r} "
            f"becomes {tok.unk_token}): the edit would change the unknown token, not the concept"
        )
    return list(ids)


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


def prompt_lengths_ok(pipe, prompts: Sequence[str]) -> None:
    """ValueError if a prompt is longer than the tokenizer allows (its end would be silently cut)."""
    limit = pipe.tokenizer.model_max_length
    for prompt in prompts:
        n = len(pipe.tokenizer(prompt).input_ids)
        if n > limit:
            raise ValueError(f"prompt {prompt!r} has {n} tokens; this model reads at most {limit}")
