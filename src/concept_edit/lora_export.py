"""Export edits as a LoRA safetensors file that ComfyUI, AUTOMATIC1111, kohya's scripts and diffusers load.

Every weight change becomes an up/down pair that clients add at scale 1 (W + up @ down is the edited weight;
kohya files carry one alpha, the largest rank, and each `up` is scaled by its rank / alpha to match):
* low-rank changes (UCE, ESD with `--lora-rank`) are written as they are, or compressed to `rank` by a
  truncated SVD when they are wider;
* dense changes (full fine-tuning, folded eigen edits) are compressed by a truncated SVD to `rank`, or, with
  no rank given, to the smallest rank whose relative error ||delta - approx||_F / ||delta||_F is at most
  `max_error`; the error of every tensor and of the whole edit is printed and stored in the metadata, and
  an export past `max_error` is refused;
* an activation projection on a Linear layer's output is folded into that layer's weight first (exact);
  other projections and sparse changes (CAD) are not a LoRA and are refused;
* bias changes cannot be held by a LoRA: refused, unless `skip_biases`, which drops them when their share of
  the edit, ||dropped bias changes|| / ||whole change||, is at most `max_error` (past it only with
  `allow_dropped_biases`); the share is reported and stored.
Several edits are composed first (as `concept-edit compose`). Formats:
* `kohya` (default): `lora_unet_<module>.lora_down.weight` / `lora_up.weight` / `alpha`, and `lora_te_` (SDXL:
  `lora_te1_`/`lora_te2_`) for the text encoders, what ComfyUI, AUTOMATIC1111 and kohya's scripts read and
  diffusers converts. SD 1.x/2.x modules keep their diffusers names (as kohya trains them); SDXL's UNet is
  named by its original (LDM/SGM) layout, `input_blocks`/`middle_block`/`output_blocks`, as kohya trains SDXL;
* `diffusers`: peft keys `unet.<module>.lora_A.weight` / `lora_B.weight`, read by `pipe.load_lora_weights`
  only (ComfyUI and AUTOMATIC1111 ignore them).
The metadata names the model the export was made from and its kind (`ss_base_model_version`, `ss_v2`, as kohya
writes them), read from the loaded model, never from an edit's manifest.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from concept_edit.edit import Edit, compose
from concept_edit.edit.changes import ActivationProjection, LowRankDelta, SparseSet
from concept_edit.edit.file import get_module
from concept_edit.io import atomic_path
from concept_edit.models.targets import get_parameter

FORMATS = ("kohya", "diffusers")
DEFAULT_FORMAT = "kohya"
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")


@dataclass
class LoraExport:
    """What was written: per module the rank and relative error; dropped bias changes; the overall error.

    relative_error: ||edit - LoRA|| / ||edit|| over every changed parameter (truncation and dropped biases);
    dropped_share: ||dropped bias changes|| / ||edit||; dropped_biases: per bias, its change / its norm."""

    path: Path
    modules: dict[str, dict] = field(default_factory=dict)
    dropped_biases: dict[str, float] = field(default_factory=dict)
    dropped_share: float = 0.0
    relative_error: float = 0.0
    keys: dict[str, str] = field(default_factory=dict)  # module -> its key prefix in the file


@dataclass(frozen=True)
class ModelKind:
    """What kohya's metadata calls the model: ss_base_model_version, ss_v2 and the sai modelspec architecture."""

    version: str
    v2: bool
    architecture: str
    sdxl: bool


def model_kind(pipe) -> ModelKind:
    """The family of the loaded model, from its modules (SDXL: two text encoders and the text_time embedding;
    SD 2.x: OpenCLIP's 1024-wide text features) and its scheduler's prediction type (SD 2.x 768-v)."""
    unet = getattr(pipe, "unet", None)
    if unet is None or not hasattr(unet, "config") or getattr(pipe, "text_encoder", None) is None:
        raise ValueError("a LoRA export needs a text-to-image pipeline with a diffusers UNet and a text encoder")
    config = unet.config
    if getattr(config, "addition_embed_type", None) == "text_time" or getattr(pipe, "text_encoder_2", None):
        return ModelKind("sdxl_base_v1-0", False, "stable-diffusion-xl-v1-base/lora", True)
    v_prediction = getattr(getattr(pipe, "scheduler", None), "config", {}).get("prediction_type") == "v_prediction"
    if getattr(config, "cross_attention_dim", None) == 1024:
        if v_prediction:
            return ModelKind("sd_v2_v", True, "stable-diffusion-v2-768-v/lora", False)
        return ModelKind("sd_v2", True, "stable-diffusion-v2-512/lora", False)
    return ModelKind("sd_v1_v" if v_prediction else "sd_v1", False, "stable-diffusion-v1/lora", False)


# -- diffusers UNet names -> the original (LDM/SGM) layout that kohya uses for SDXL --------------------------------
_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_OUTSIDE_BLOCKS = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_DOWN_TYPES = {"DownBlock2D": False, "CrossAttnDownBlock2D": True}  # block type -> has attention layers
_UP_TYPES = {"UpBlock2D": False, "CrossAttnUpBlock2D": True}


def ldm_blocks(config) -> dict[str, str]:
    """Each diffusers UNet block (`down_blocks.1.attentions.0`, ...) -> its LDM name (`input_blocks.4.1`, ...).

    Derived from the config as the LDM UNet lays itself out: input_blocks.0 is conv_in; each level then has
    layers_per_block blocks of [resnet, transformer] and, except the last level, one [downsampler]; the
    middle block is [resnet, transformer, resnet]; output levels (reversed) have layers_per_block + 1 blocks,
    the last one of each level but the final one ending with the upsampler. Transformer internals
    (transformer_layers_per_block deep) keep their names. An architecture outside this layout is refused.
    """
    down, up = list(config.down_block_types), list(config.up_block_types)
    if any(t not in _DOWN_TYPES for t in down) or any(t not in _UP_TYPES for t in up) or len(down) != len(up):
        raise ValueError(f"the UNet's blocks {down} / {up} have no LDM (kohya) layout; use --format diffusers")
    if getattr(config, "mid_block_type", None) not in (None, "UNetMidBlock2DCrossAttn"):
        raise ValueError(f"the UNet's middle block {config.mid_block_type} has no LDM (kohya) layout")
    levels = len(config.block_out_channels)
    per = config.layers_per_block
    per = [int(per)] * levels if isinstance(per, int) else [int(n) for n in per]
    blocks, i = {}, 1
    for b, kind in enumerate(down):
        for j in range(per[b]):
            blocks[f"down_blocks.{b}.resnets.{j}"] = f"input_blocks.{i}.0"
            if _DOWN_TYPES[kind]:
                blocks[f"down_blocks.{b}.attentions.{j}"] = f"input_blocks.{i}.1"
            i += 1
        if b < levels - 1:
            blocks[f"down_blocks.{b}.downsamplers.0"] = f"input_blocks.{i}.0"
            i += 1
    blocks |= {"mid_block.resnets.0": "middle_block.0", "mid_block.attentions.0": "middle_block.1",
               "mid_block.resnets.1": "middle_block.2"}  # fmt: skip
    i = 0
    for b, (kind, n) in enumerate(zip(up, reversed(per), strict=True)):
        for j in range(n + 1):
            blocks[f"up_blocks.{b}.resnets.{j}"] = f"output_blocks.{i}.0"
            if _UP_TYPES[kind]:
                blocks[f"up_blocks.{b}.attentions.{j}"] = f"output_blocks.{i}.1"
            i += 1
        if b < levels - 1:
            blocks[f"up_blocks.{b}.upsamplers.0"] = f"output_blocks.{i - 1}.{2 if _UP_TYPES[kind] else 1}"
    return blocks


def ldm_name(module: str, blocks: dict[str, str]) -> str:
    """The LDM name of a diffusers UNet module path (no `unet.` prefix, no `.weight`)."""
    if module in _OUTSIDE_BLOCKS:
        return _OUTSIDE_BLOCKS[module]
    parts = module.split(".")
    for cut in (4, 3):  # `down_blocks.1.attentions.0` / `mid_block.resnets.0`
        head, rest = ".".join(parts[:cut]), parts[cut:]
        if head in blocks and rest:
            if ".resnets." in f".{head}." and rest[0] in _RESNET:
                rest = [*_RESNET[rest[0]].split("."), *rest[1:]]
            elif ".downsamplers." in head and rest == ["conv"]:
                rest = ["op"]
            return ".".join([blocks[head], *rest])
    raise ValueError(f"unet.{module} has no name in the LDM (kohya SDXL) layout; use --format diffusers")


def kohya_key(pipe, module: str, kind: ModelKind, blocks: dict[str, str] | None) -> str:
    """The kohya key prefix of a module path (`unet.<...>`, `text_encoder.<...>`, `text_encoder_2.<...>`)."""
    component, _, inner = module.partition(".")
    if component == "unet":
        return "lora_unet_" + (ldm_name(inner, blocks) if kind.sdxl else inner).replace(".", "_")
    prefix = {"text_encoder": "lora_te1_" if kind.sdxl else "lora_te_", "text_encoder_2": "lora_te2_"}[component]
    return prefix + inner.replace(".", "_")


def truncated(delta: torch.Tensor, rank: int | None, max_error: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(up, down, relative Frobenius error) of the best rank-r approximation of a 2-d delta (Eckart-Young).

    rank None: the smallest rank whose error is at most max_error."""
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    energy = s.square()
    total = float(energy.sum())
    if total == 0:
        raise ValueError("a weight change is all zeros: nothing to export")
    tail = torch.flip(torch.cumsum(torch.flip(energy, [0]), 0), [0])  # tail[k] = sum of s_i^2 for i >= k
    errors = torch.cat([(tail / total).sqrt(), torch.zeros(1, dtype=tail.dtype)])  # errors[k]: error at rank k
    if rank is None:
        rank = max(1, int(torch.nonzero(errors <= max_error)[0]))
    elif rank > len(s):
        raise ValueError(f"rank {rank} is larger than this {tuple(delta.shape)} change allows ({len(s)})")
    return (u[:, :rank] * s[:rank]).float(), vh[:rank].float(), float(errors[rank])


def _changes(pipe, edit: Edit, name: str) -> list:
    """The edit's changes with activation projections folded into weights (sparse changes refused)."""
    from concept_edit.eigen.erasers import fold

    out = []
    for change in edit.changes():
        if isinstance(change, SparseSet):
            raise ValueError(
                f"{name} sets individual entries of {change.target} (a sparse change, as CAD makes): that is "
                "not a low-rank update, so it has no LoRA form; export the whole model with `concept-edit export`"
            )
        if isinstance(change, ActivationProjection):
            try:
                folded = fold(change, get_module(pipe, change.target))
            except ValueError as err:
                raise ValueError(f"{name}: {err}; such an edit has no LoRA form") from None
            out.extend(folded)
            continue
        out.append(change)
    return out


def _check_loraable(pipe, change) -> None:
    """A change every client applies: a Linear or Conv2d weight of the UNet or a text encoder (an embedding
    table is 2-d too, but ComfyUI and AUTOMATIC1111 patch only Linear and Conv2d layers)."""
    from torch import nn

    component = change.target.partition(".")[0]
    if component not in ("unet", *TEXT_ENCODERS):
        raise ValueError(f"{change.target}: only the UNet's and the text encoders' weights have a LoRA form")
    module = get_module(pipe, change.target.removesuffix(".weight")) if change.target.endswith(".weight") else None
    if not isinstance(module, nn.Linear | nn.Conv2d) or len(change.shape) not in (2, 4):
        raise ValueError(f"{change.target}: only Linear and Conv2d weights have a LoRA form")


def lora_tensors(pipe, edits: list[Edit], *, rank: int | None = None, max_error: float = 0.01,
                 skip_biases: bool = False, allow_dropped_biases: bool = False,
                 fmt: str = DEFAULT_FORMAT) -> tuple[dict, LoraExport]:  # fmt: skip
    """The LoRA state dict of `edits` (made for `pipe`, or each for the result of the ones before) and the report."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    if not 0 <= max_error < 1:
        raise ValueError(f"max_error must be in [0, 1), got {max_error}")
    if not edits:
        raise ValueError("give at least one edit to export")
    kind = model_kind(pipe)
    blocks = ldm_blocks(pipe.unet.config) if fmt == "kohya" and kind.sdxl else None
    edit = compose(pipe, *edits)  # also checks that each edit belongs to this model (or the ones before it)
    name = " + ".join(e.name for e in edits)
    report = LoraExport(path=Path())
    weights, biases = [], []
    for change in _changes(pipe, edit, name):
        (biases if change.target.endswith(".bias") else weights).append(change)
    for change in weights:
        _check_loraable(pipe, change)
    if fmt == "kohya":  # name every module before any work: a module without a kohya name is refused, not dropped
        report.keys = {c.target.removesuffix(".weight"): kohya_key(pipe, c.target.removesuffix(".weight"), kind, blocks)
                       for c in weights}  # fmt: skip
    bias_energy = 0.0
    for change in biases:
        size = float(change.materialize().double().norm())
        base = float(get_parameter(pipe, change.target).detach().double().norm())
        report.dropped_biases[change.target] = size / base if base else math.inf
        bias_energy += size**2
    if biases and not (skip_biases or allow_dropped_biases):
        raise ValueError(
            f"{name} changes {len(biases)} bias(es) ({biases[0].target}{', ...' if len(biases) > 1 else ''}), "
            "which a LoRA cannot hold; pass --skip-biases to export the weight changes without them (allowed when "
            "what is dropped is within --max-error of the edit)"
        )
    if not weights:
        raise ValueError(f"{name} has no weight change a LoRA can hold")
    tensors, residual, energy = {}, 0.0, 0.0
    for change in weights:
        shape = change.shape
        if rank is not None and rank > min(shape[0], math.prod(shape[1:])):
            raise ValueError(f"rank {rank} is larger than {change.target} {tuple(shape)} allows")
        delta = change.materialize()  # once: its norm weighs the overall error, the SVD may need it
        if isinstance(change, LowRankDelta) and (rank is None or change.rank <= rank):
            up, down, error = change.up.float(), change.down.float(), 0.0
        else:
            up, down, error = truncated(delta.reshape(shape[0], -1), rank, max_error)
        norm2 = float(delta.double().square().sum())
        residual, energy = residual + error**2 * norm2, energy + norm2
        r = up.shape[1]
        module = change.target.removesuffix(".weight")
        report.modules[module] = {"rank": r, "relative_error": round(error, 6)}
        down = down.reshape(r, *shape[1:]).contiguous()
        up = up.reshape(shape[0], r, *([1] * (len(shape) - 2))).contiguous()
        if fmt == "diffusers":  # no alpha: peft's convention is scale 1 per module, whatever its rank
            tensors[f"{module}.lora_A.weight"], tensors[f"{module}.lora_B.weight"] = down, up
        else:
            key = report.keys[module]
            tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"] = down, up
    if fmt == "kohya":
        # Clients scale each pair by alpha / its rank. One alpha for every module (the largest rank), with `up`
        # scaled by rank / alpha, keeps that scale right in every client: diffusers' kohya converter mis-keys
        # per-module alphas that differ (peft then ignores them, silently scaling those modules wrongly).
        alpha = max(m["rank"] for m in report.modules.values())
        for module, info in report.modules.items():
            key = report.keys[module]
            if info["rank"] != alpha:
                tensors[f"{key}.lora_up.weight"] = tensors[f"{key}.lora_up.weight"] * (info["rank"] / alpha)
            tensors[f"{key}.alpha"] = torch.tensor(float(alpha))
    total = energy + bias_energy
    report.dropped_share = math.sqrt(bias_energy / total) if total else 0.0
    report.relative_error = math.sqrt((residual + bias_energy) / total) if total else 0.0
    if report.dropped_share > max_error and not allow_dropped_biases:
        raise ValueError(
            f"dropping the bias changes leaves out {report.dropped_share:.3g} of {name} (||dropped|| / ||edit||, "
            f"more than --max-error {max_error}): the LoRA would not be the same edit; pass --allow-dropped-biases "
            "to export it anyway, or export the whole model with `concept-edit export`"
        )
    worst = max(report.modules.items(), key=lambda kv: kv[1]["relative_error"])
    if worst[1]["relative_error"] > max_error:
        raise ValueError(
            f"rank {rank} leaves a relative error of {worst[1]['relative_error']:.3g} at {worst[0]} (more than "
            f"--max-error {max_error}); raise --rank, leave it out to choose one per tensor, or raise --max-error"
        )
    return tensors, report


def export_lora(pipe, edits: list[Edit], out: str | Path, **options) -> LoraExport:
    """Write the LoRA file (atomically) with the edits' provenance and the loaded model's kind in its metadata."""
    tensors, report = lora_tensors(pipe, edits, **options)
    return write_lora(pipe, edits, tensors, report, out, fmt=options.get("fmt", DEFAULT_FORMAT))


def write_lora(pipe, edits: list[Edit], tensors: dict, report: LoraExport, out: str | Path, *, fmt: str) -> LoraExport:
    """Write what `lora_tensors` made (atomically; a Ctrl-C while writing is reported as one, and leaves nothing)."""
    from safetensors.torch import save_file

    from concept_edit.export import stop_signals
    from concept_edit.models.loading import model_info

    kind = model_kind(pipe)
    base_model = model_info(pipe).spec  # the model loaded for the export, not what an edit's manifest claims
    provenance = [{k: e.manifest.get(k) for k in ("method", "concepts", "base_hash", "seed")} for e in edits]
    ranks = sorted({m["rank"] for m in report.modules.values()})
    title = "+".join(e.name for e in edits)
    metadata = {
        "concept_edit": json.dumps(
            {
                "base_model": base_model,
                "edits": provenance,
                "format": fmt,
                "modules": report.modules,
                "relative_error": report.relative_error,
                "dropped_biases": report.dropped_biases,
                "dropped_share": report.dropped_share,
            }
        ),
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(max(ranks)),
        "ss_network_alpha": str(max(ranks)),
        "ss_output_name": title,
        "ss_sd_model_name": base_model,
        "ss_base_model_version": kind.version,
        "ss_v2": str(kind.v2),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": kind.architecture,
        "modelspec.title": title,
    }
    report.path = Path(out)
    with stop_signals() as stop, atomic_path(out) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except Exception:
            stop.deliver()  # an interrupt that surfaced inside the writer as another error is reported as one
            raise
        stop.complete()  # an interrupt the writer swallowed stops here; after it, the rename makes the file whole
    return report
