"""Export edits as a LoRA safetensors file that diffusers, ComfyUI and AUTOMATIC1111 load.

Every weight change becomes an up/down pair with alpha = rank (scale 1), so W + up @ down is the edited
weight:
* low-rank changes (UCE, ESD with `--lora-rank`) are written as they are, or compressed to `rank` by a
  truncated SVD when they are wider;
* dense changes (full fine-tuning, folded eigen edits) are compressed by a truncated SVD to `rank`, or, with
  no rank given, to the smallest rank whose relative error ||delta - approx||_F / ||delta||_F is at most
  `max_error`; the error of every tensor and of the whole edit is printed and stored in the metadata, and
  an export past `max_error` is refused;
* an activation projection on a Linear layer's output is folded into that layer's weight first (exact);
  other projections and sparse changes (CAD) are not a LoRA and are refused;
* bias changes cannot be held by a LoRA: refused, unless `skip_biases`, which drops them and reports their
  size relative to the biases they change.
Several edits are composed first (as `concept-edit compose`). Formats: `diffusers` (peft keys
`unet.<module>.lora_A.weight` / `lora_B.weight`, what `pipe.load_lora_weights` reads) and `kohya`
(`lora_unet_<module_with_underscores>.lora_down.weight` / `lora_up.weight` / `alpha`, what ComfyUI and
AUTOMATIC1111 read; SD 1.x/2.x only, as kohya names SDXL's UNet by its original layout).
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

FORMATS = ("diffusers", "kohya")


@dataclass
class LoraExport:
    """What was written: per module the rank and relative error; dropped bias changes; the overall error."""

    path: Path
    modules: dict[str, dict] = field(default_factory=dict)
    dropped_biases: dict[str, float] = field(default_factory=dict)
    relative_error: float = 0.0


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


def _weight_changes(pipe, edit: Edit, name: str, skip_biases: bool, report: LoraExport) -> list:
    """The edit's changes as weight changes of Linear/Conv2d weights (projections folded, biases checked).

    `name` is what the user gave (an edit, or several composed), for the messages."""
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
    weights = []
    for change in out:
        if change.target.endswith(".bias"):
            size = float(change.materialize().double().norm())
            base = float(get_parameter(pipe, change.target).detach().double().norm())
            if not skip_biases:
                raise ValueError(
                    f"{name} changes the bias {change.target}, which a LoRA cannot hold; pass --skip-biases "
                    "to export the weight changes without it (the size of what is dropped is reported)"
                )
            report.dropped_biases[change.target] = size / base if base else math.inf
            continue
        if len(change.shape) not in (2, 4) or not change.target.endswith(".weight"):
            raise ValueError(f"{change.target}: only Linear and Conv2d weights have a LoRA form")
        if not change.target.startswith("unet."):
            raise ValueError(f"{change.target}: only the UNet's weights are exported as a LoRA")
        weights.append(change)
    if not weights:
        raise ValueError(f"{name} has no weight change a LoRA can hold")
    return weights


def lora_tensors(pipe, edits: list[Edit], *, rank: int | None = None, max_error: float = 0.01,
                 skip_biases: bool = False, fmt: str = "diffusers") -> tuple[dict, LoraExport]:  # fmt: skip
    """The LoRA state dict of `edits` (made for `pipe`, or each for the result of the ones before) and the report."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    if not 0 <= max_error < 1:
        raise ValueError(f"max_error must be in [0, 1), got {max_error}")
    if fmt == "kohya" and getattr(pipe.unet.config, "addition_embed_type", None) == "text_time":
        raise ValueError("the kohya format names SDXL's UNet by its original (sgm) layout: use --format diffusers")
    if not edits:
        raise ValueError("give at least one edit to export")
    edit = compose(pipe, *edits)  # also checks that each edit belongs to this model (or the ones before it)
    report = LoraExport(path=Path())
    tensors, residual, energy = {}, 0.0, 0.0
    name = " + ".join(e.name for e in edits)
    for change in _weight_changes(pipe, edit, name, skip_biases, report):
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
        down = down.reshape(r, *shape[1:])
        up = up.reshape(shape[0], r, *([1] * (len(shape) - 2)))
        if fmt == "diffusers":
            tensors[f"{module}.lora_A.weight"] = down.contiguous()
            tensors[f"{module}.lora_B.weight"] = up.contiguous()
        else:
            key = "lora_unet_" + module.removeprefix("unet.").replace(".", "_")
            tensors[f"{key}.lora_down.weight"] = down.contiguous()
            tensors[f"{key}.lora_up.weight"] = up.contiguous()
            tensors[f"{key}.alpha"] = torch.tensor(float(r))
    report.relative_error = math.sqrt(residual / energy) if energy else 0.0
    worst = max(report.modules.items(), key=lambda kv: kv[1]["relative_error"])
    if worst[1]["relative_error"] > max_error:
        raise ValueError(
            f"rank {rank} leaves a relative error of {worst[1]['relative_error']:.3g} at {worst[0]} (more than "
            f"--max-error {max_error}); raise --rank, leave it out to choose one per tensor, or raise --max-error"
        )
    return tensors, report


def export_lora(pipe, edits: list[Edit], out: str | Path, **options) -> LoraExport:
    """Write the LoRA file (atomically) with the edits' provenance in its metadata."""
    from safetensors.torch import save_file

    tensors, report = lora_tensors(pipe, edits, **options)
    provenance = [{k: e.manifest.get(k) for k in ("method", "concepts", "base_model", "base_hash", "seed")}
                  for e in edits]  # fmt: skip
    ranks = sorted({m["rank"] for m in report.modules.values()})
    metadata = {
        "concept_edit": json.dumps(
            {
                "edits": provenance,
                "format": options.get("fmt", "diffusers"),
                "modules": report.modules,
                "relative_error": report.relative_error,
                "dropped_biases": report.dropped_biases,
            }
        ),  # fmt: skip
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(max(ranks)),
        "ss_network_alpha": str(max(ranks)),
        "ss_output_name": "+".join(e.name for e in edits),
    }
    report.path = Path(out)
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return report
