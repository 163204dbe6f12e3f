"""What a method can edit in a pipeline's denoiser, found by module type and named by module path.

Paths are relative to the pipeline (e.g. `unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k`),
so an edit file can name tensors of any component. Cross-attention layers are the diffusers `Attention`
modules with `is_cross_attention` set (their K/V read the text embedding); roles follow ESD's split:

* `cross-attn`     every parameter of the cross-attention modules (ESD-x);
* `non-cross-attn` every denoiser parameter outside them (ESD-u);
* `self-attn`      parameters of the self-attention modules;
* `ff`             parameters of the transformer feed-forward blocks;
* `all`            every denoiser parameter.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

ROLES = ("cross-attn", "non-cross-attn", "self-attn", "ff", "all")


@dataclass(frozen=True)
class CrossAttentionLayer:
    """One cross-attention module of the denoiser and its key/value projections."""

    path: str  # pipeline-relative module path, e.g. "unet.mid_block.attentions.0.transformer_blocks.0.attn2"
    to_k: str
    to_v: str
    in_features: int
    out_features: int


def denoiser(pipe) -> tuple[str, nn.Module]:
    """The component that is edited: the UNet for every supported pipeline."""
    unet = getattr(pipe, "unet", None)
    if unet is None:
        raise ValueError(f"{type(pipe).__name__} has no UNet denoiser to edit")
    return "unet", unet


def _attention_modules(module: nn.Module) -> list[tuple[str, nn.Module]]:
    from diffusers.models.attention_processor import Attention

    return [(name, m) for name, m in module.named_modules() if isinstance(m, Attention)]


def cross_attention_layers(pipe) -> list[CrossAttentionLayer]:
    """Every cross-attention layer of the denoiser in module order, with its to_k / to_v paths."""
    prefix, unet = denoiser(pipe)
    layers = []
    for name, attn in _attention_modules(unet):
        if not attn.is_cross_attention:
            continue
        layers.append(
            CrossAttentionLayer(
                path=f"{prefix}.{name}",
                to_k=f"{prefix}.{name}.to_k",
                to_v=f"{prefix}.{name}.to_v",
                in_features=attn.to_k.in_features,
                out_features=attn.to_k.out_features,
            )
        )
    if not layers:
        raise ValueError(f"the denoiser of {type(pipe).__name__} has no cross-attention layers")
    return layers


def parameters_by_role(pipe, role: str) -> dict[str, nn.Parameter]:
    """Pipeline-relative parameter paths -> parameters of the denoiser that play `role` (see ROLES)."""
    from diffusers.models.attention import FeedForward

    if role not in ROLES:
        raise ValueError(f"unknown parameter role {role!r}; choose one of {', '.join(ROLES)}")
    prefix, unet = denoiser(pipe)
    cross, self_attn, ff = set(), set(), set()
    for name, attn in _attention_modules(unet):
        bucket = cross if attn.is_cross_attention else self_attn
        bucket.update(f"{name}.{p}" for p, _ in attn.named_parameters())
    for name, module in unet.named_modules():
        if isinstance(module, FeedForward):
            ff.update(f"{name}.{p}" for p, _ in module.named_parameters())
    selected = {}
    for name, param in unet.named_parameters():
        keep = {
            "cross-attn": name in cross,
            "non-cross-attn": name not in cross,
            "self-attn": name in self_attn,
            "ff": name in ff,
            "all": True,
        }[role]
        if keep:
            selected[f"{prefix}.{name}"] = param
    return selected


def get_parameter(pipe, path: str) -> nn.Parameter:
    """Resolve a pipeline-relative parameter path such as `unet.conv_in.weight`."""
    component, _, rest = path.partition(".")
    module = getattr(pipe, component, None)
    if not isinstance(module, nn.Module) or not rest:
        raise KeyError(path)
    return module.get_parameter(rest)
