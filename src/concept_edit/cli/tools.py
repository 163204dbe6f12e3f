"""CLI verbs that use edits already made: draw with them (`generate`, `attention`), write them out as a
pipeline, a LoRA or one merged edit (`export`, `export-lora`, `compose`), and read one's manifest (`inspect`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from concept_edit.cli.support import (
    add_edit_args,
    add_force,
    add_generation_args,
    add_model_args,
    add_store_dtype,
    check_output,
    edit_inputs,
    load_edits,
    load_model,
    number,
    seed_type,
    stored_as,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def add_verbs(verbs) -> None:
    gen = verbs.add_parser("generate", help="generate a grid of images, optionally with edits applied")
    add_model_args(gen)
    add_edit_args(gen)
    gen.add_argument("--prompt", action="append", required=True, help="a prompt (repeat: one row each)")
    gen.add_argument("-n", type=number("-n", low=1, integer=True), default=8, help="images per prompt (seeds seed..)")
    gen.add_argument("--seed", type=seed_type(), default=0)
    add_generation_args(gen)
    gen.add_argument("--out", required=True, help="grid image file (.png/.jpg/.webp)")
    add_force(gen)
    gen.set_defaults(func=cmd_generate)

    att = verbs.add_parser("attention", help="cross-attention maps of one token, per layer and step, as a PNG grid")
    add_model_args(att)
    add_edit_args(att)
    att.add_argument("--prompt", required=True)
    att.add_argument("--token", required=True, help="the word (as it appears in the prompt) whose maps to show")
    att.add_argument("--seed", type=seed_type(), default=0)
    add_generation_args(att)
    att.add_argument("--out", required=True, help="grid image file (.png)")
    add_force(att)
    att.set_defaults(func=cmd_attention)

    export = verbs.add_parser("export", help="write a full diffusers pipeline folder with edits applied")
    add_model_args(export)
    add_edit_args(export, required=True)
    export.add_argument("--out", required=True, help="a new (or empty) folder")
    add_force(export)
    export.set_defaults(func=cmd_export)

    lora_help = "write edits as a LoRA file for diffusers, ComfyUI, AUTOMATIC1111"
    lora = verbs.add_parser("export-lora", help=lora_help, description=lora_help)
    add_model_args(lora)
    add_edit_args(lora, required=True)
    lora.add_argument("--rank", type=number("--rank", low=1, integer=True),
                      help="rank of every LoRA pair (default: low-rank changes keep theirs; dense ones get the "
                           "smallest rank within --max-error)")  # fmt: skip
    lora.add_argument("--format", choices=("kohya", "diffusers"), default="kohya",
                      help="kohya (default): keys that ComfyUI, AUTOMATIC1111, kohya's scripts and diffusers load "
                           "(SDXL in kohya's LDM layout); diffusers: peft keys for diffusers only (ComfyUI and "
                           "AUTOMATIC1111 ignore it)")  # fmt: skip
    lora.add_argument("--max-error", type=number("--max-error", low=0, high=0.999), default=0.01,
                      help="largest relative error a compressed tensor, or the bias changes --skip-biases drops, "
                           "may have (default: 0.01)")  # fmt: skip
    lora.add_argument("--skip-biases", action="store_true",
                      help="drop bias changes (a LoRA cannot hold them) when they are at most --max-error of the "
                           "edit's change; the share dropped is printed and stored")  # fmt: skip
    lora.add_argument("--allow-dropped-biases", action="store_true",
                      help="drop bias changes however large a share of the edit they are (the LoRA is then "
                           "not the same edit)")  # fmt: skip
    lora.add_argument("--out", required=True, help="the LoRA .safetensors file")
    add_force(lora)
    lora.set_defaults(func=cmd_export_lora)

    comp = verbs.add_parser("compose", help="merge several edits into one edit file")
    add_model_args(comp)
    add_edit_args(comp, required=True)
    comp.add_argument("--out", required=True)
    add_force(comp)
    add_store_dtype(comp)
    comp.set_defaults(func=cmd_compose, writes_edit=True)

    insp = verbs.add_parser("inspect", help="print an edit's manifest")
    insp.add_argument("edit")
    insp.add_argument("--full", action="store_true", help="include every tensor and the debias history")
    insp.set_defaults(func=cmd_inspect, light=True)


def cmd_generate(args: argparse.Namespace) -> None:
    from concept_edit.edit import applied
    from concept_edit.generation import generate, image_grid

    out = Path(args.out)
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"--out must be an image file ({', '.join(IMAGE_SUFFIXES)}), got {out}")
    check_output(out, force=args.force, inputs=edit_inputs(args.edit))
    edits = load_edits(args.edit)
    pipe = load_model(args)
    prompts = [p for p in args.prompt for _ in range(args.n)]
    seeds = [args.seed + k for _ in args.prompt for k in range(args.n)]
    with applied(pipe, *edits, allow_repeat=args.allow_repeat):
        images = generate(pipe, prompts, seeds, steps=args.steps, guidance=args.guidance, progress=True)
    from concept_edit.io import atomic_path

    with atomic_path(out) as tmp:
        image_grid(images, cols=args.n).save(tmp, format=out.suffix.lstrip(".").upper().replace("JPG", "JPEG"))
    print(f"wrote {out} ({len(args.prompt)} prompt(s) x {args.n} seeds from {args.seed})")


def cmd_attention(args: argparse.Namespace) -> None:
    from concept_edit.attention_maps import attention_maps, save_attention_grid
    from concept_edit.edit import applied
    from concept_edit.io import atomic_path

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out must be a .png file, got {out}")
    check_output(out, force=args.force, inputs=edit_inputs(args.edit))
    edits = load_edits(args.edit)
    pipe = load_model(args)
    with applied(pipe, *edits, allow_repeat=args.allow_repeat):
        maps, image = attention_maps(
            pipe, args.prompt, args.token, seed=args.seed, steps=args.steps, guidance=args.guidance
        )
    with atomic_path(out) as tmp:
        save_attention_grid(maps, image, tmp, title=f"{args.token!r} in {args.prompt!r} (seed {args.seed})")
    print(f"wrote {out}: {len(maps)} cross-attention layers (rows, by index) x denoising steps")


def cmd_export(args: argparse.Namespace) -> None:
    from concept_edit.export import export_pipeline, keep_complete_output, stop_signals

    check_output(args.out, force=args.force, folder=True, inputs=[args.model])
    edits = load_edits(args.edit)
    if not args.allow_repeat and len({e.identity for e in edits}) < len(edits):
        raise ValueError("the same edit is given twice; pass --allow-repeat to apply it twice")
    pipe = load_model(args)
    with stop_signals():  # one watch from the first file written to the line saying it is done
        out = export_pipeline(pipe, edits, args.out, args.model, force=args.force)
        print(f"wrote diffusers pipeline to {out}", flush=True)
        keep_complete_output(entry=args.entry)


def cmd_export_lora(args: argparse.Namespace) -> None:
    from concept_edit.export import keep_complete_output, stop_signals
    from concept_edit.lora_export import lora_tensors, write_lora

    out = check_output(args.out, force=args.force, suffix=".safetensors", inputs=edit_inputs(args.edit))
    edits = load_edits(args.edit)
    pipe = load_model(args)
    tensors, report = lora_tensors(pipe, edits, rank=args.rank, max_error=args.max_error, skip_biases=args.skip_biases,
                                   allow_dropped_biases=args.allow_dropped_biases, fmt=args.format)  # fmt: skip
    ranks = sorted({m["rank"] for m in report.modules.values()})
    worst = max(m["relative_error"] for m in report.modules.values())
    with stop_signals():  # one watch from the file's first byte to the lines saying it is done
        write_lora(pipe, edits, tensors, report, out, fmt=args.format)
        print(f"wrote {out}: {len(report.modules)} LoRA pairs ({args.format} keys), rank "
              f"{'-'.join(map(str, ranks))}, relative error {report.relative_error:.3g} overall, {worst:.3g} at "
              "worst per tensor")  # fmt: skip
        if report.dropped_biases:
            print(f"dropped {len(report.dropped_biases)} bias change(s): {report.dropped_share:.3g} of the edit's "
                  "change (||dropped|| / ||edit||); the LoRA is the edit without them")  # fmt: skip
        for target, share in report.dropped_biases.items():
            print(f"  {target}: change {share:.3g} of that bias's norm")
        sys.stdout.flush()
        keep_complete_output(entry=args.entry)


def cmd_compose(args: argparse.Namespace) -> None:
    from concept_edit.edit import compose, resolve_edit_path

    target = check_output(
        resolve_edit_path(args.out, for_writing=True), force=args.force, inputs=edit_inputs(args.edit)
    )
    edits = load_edits(args.edit)
    merged = compose(load_model(args, text_to_image=False), *edits, allow_repeat=args.allow_repeat)
    merged = stored_as(merged, args.store_dtype)
    merged.save(target)
    print(f"wrote {target}: {' + '.join(e.name for e in edits)}")


def cmd_inspect(args: argparse.Namespace) -> None:
    import json

    from concept_edit.cli.support import read_manifest

    manifest = read_manifest(args.edit)  # the file's header only: no torch, no tensor read
    changes = manifest.pop("changes")
    kinds = [c.get("kind") for c in changes]
    if args.full:
        manifest["changes"] = [{k: v for k, v in c.items() if k != "tensors"} for c in changes]
    else:
        manifest["changes"] = ", ".join(f"{kinds.count(kind)} {kind}" for kind in sorted(set(kinds)))
        manifest.get("stats", {}).pop("history", None)
    print(json.dumps(manifest, indent=2))
