"""The text encoder run with free token embeddings in some of its slots (the soft-prompt and Ring-A-Bell
searches), its vocabulary, and the weights frozen while an attack differentiates only its own inputs.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence

import torch

from concept_edit.models.loading import model_info


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
    ids, mask, _ = template_ids(pipe, ["{} " + p if p else "{}" for p in prompts], free_tokens)
    return ids, mask


def template_ids(pipe, templates: Sequence[str], free_tokens: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, mask, first): padded token ids and attention mask of each template with `free_tokens` placeholder
    slots where its "{}" stands ("a picture of a {}"), and the position of each row's first slot.

    ValueError when a template has no "{}" or does not fit the tokenizer's length with its free slots.
    """
    tok = pipe.tokenizer
    length = tok.model_max_length
    start, end, pad = special_ids(tok)
    rows, masks, firsts = [], [], []
    for template in templates:
        before, mark, after = template.partition("{}")
        if not mark:
            raise ValueError(f"template {template!r} has no '{{}}' where the free tokens go")
        head = tok(before.strip(), add_special_tokens=False).input_ids if before.strip() else []
        tail = tok(after.strip(), add_special_tokens=False).input_ids if after.strip() else []
        if len(head) + len(tail) + free_tokens + 2 > length:
            shown = template.replace("{}", "").strip()
            raise ValueError(
                f"prompt {shown!r} has {len(head) + len(tail)} tokens; with {free_tokens} free tokens it does not "
                f"fit the {length} tokens this model reads"
            )
        ids = [start, *head] + [pad] * free_tokens + tail + [end]
        rows.append(ids + [pad] * (length - len(ids)))
        masks.append([1] * len(ids) + [0] * (length - len(ids)))
        firsts.append(1 + len(head))
    return torch.tensor(rows), torch.tensor(masks), torch.tensor(firsts)


@contextlib.contextmanager
def _token_slots(text_encoder, free: torch.Tensor | None, first: int | torch.Tensor) -> Iterator[None]:
    """While open, the token-embedding layer returns `free` (N, k, dim) at positions first..first+k-1 (`first` one
    position for every row, or one per row)."""
    if free is None:
        yield
        return

    def hook(module, inputs, output):
        output = output.clone()
        if isinstance(first, int):
            output[:, first : first + free.shape[1]] = free.to(output.dtype)
            return output
        rows = torch.arange(len(output), device=output.device)[:, None]
        cols = first.to(output.device)[:, None] + torch.arange(free.shape[1], device=output.device)
        output[rows, cols] = free.to(output.dtype)
        return output

    handle = text_encoder.get_input_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def encode_ids(
    pipe, ids: torch.Tensor, mask: torch.Tensor, free: torch.Tensor | None = None, first: int | torch.Tensor = 1
) -> torch.Tensor:
    """Per-token prompt embeddings (N, tokens, dim) as the pipeline's `encode_prompt` computes them (SD 1.x/2.x,
    ShapesSD), with `free` (N, k, dim) token embeddings in the slots from `first` (after the start token, or each
    row's from `template_ids`); differentiable in `free`."""
    te = pipe.text_encoder
    device = pipe.device
    use_mask = bool(getattr(te.config, "use_attention_mask", False))
    with _token_slots(te, free, first):
        out = te(ids.to(device), attention_mask=mask.to(device) if use_mask else None)[0]
    return out.to(pipe.unet.dtype)


def token_embeddings(pipe) -> torch.Tensor:
    """The text encoder's input token-embedding matrix (vocabulary, dim)."""
    return pipe.text_encoder.get_input_embeddings().weight


def random_token_embeddings(pipe, allowed: torch.Tensor, count: int, rng) -> torch.Tensor:
    """Embeddings (1, count, dim) of `count` tokens picked by the numpy generator `rng` from the `allowed` ids: the
    starting point of an attack inside a defence (AdvUnlearn's `init_adv`)."""
    ids = allowed[torch.as_tensor(rng.choice(len(allowed), count))].to(pipe.device)
    return token_embeddings(pipe).detach()[ids].float().unsqueeze(0).clone()


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
