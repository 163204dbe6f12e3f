"""Peak memory of every method on a Stable-Diffusion-1.4-shaped pipeline, ours against an official-style loop.

    python benchmarks/sd_memory.py --json                       # every method, 512 px (64x64 latents)
    python benchmarks/sd_memory.py --resolution 256 --json      # 32x32 latents (activations ~1/4)
    python benchmarks/sd_memory.py --methods esd-x esd-u --json # some rows only
    python benchmarks/sd_memory.py --tiny --json                # the tests' tiny pipeline shapes: seconds

The pipeline is built from config with random weights, no download: SD 1.4's UNet2DConditionModel (860M
parameters), a CLIP ViT-L/14 text encoder (hidden 768, 12 layers, 12 heads, MLP 3072, 77 positions) and SD's
AutoencoderKL. The tokenizer is the small CLIP BPE tokenizer the tests write (tests/tiny_models.py) with 77
positions: its vocabulary is not CLIP's (a few hundred tokens), so the text encoder's token embedding has that
many rows instead of CLIP's 49408 (0.3M parameters instead of 38M; every other tensor has SD 1.4's shape).

Each (method, loop) runs in its own fresh subprocess, float32 on the CPU, `--threads` threads: it imports,
records its resident size (VmRSS), builds the pipeline, runs the method, and reports the kernel's peak
resident size `ru_maxrss` (getrusage, KiB). Two figures per run:
* `peak_bytes`: peak RSS minus the RSS after imports (the pipeline's weights + everything the method holds);
* `peak_rss_bytes`: the raw peak RSS of the process (imports included, ~0.5 GB of libraries).
`ratio` = ours / official on `peak_bytes`. `weights_bytes` are the pipeline's parameters (counted);
`extra_bytes` = peak_bytes - weights_bytes is what the method adds (copies, gradients, optimiser states,
statistics, activations, allocator slack).

"ours" is `concept_edit.fit(pipe, method, request, make_config(method, **OURS[method]))` with options that keep
the run to a few iterations (`--iterations`, default 2; 2 sampling steps; eigen's statistics over `--eigen-steps`
denoising steps, 30 by default, as what they hold depends on it). "official" is a loop written here
that holds in memory what the method's official script holds (each function's docstring cites the script),
with the same sizes (batch, sampling steps, iterations). Memory peaks are reached in the first iteration.

Activations scale with the latent's pixels (x4 from 256 to 512 px); weights, copies, gradients and optimiser
states do not depend on the resolution.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # the sibling script's SD-1.4 UNet config, however this one is run
from edit_apply import SD14_UNET  # noqa: E402

METHODS = ("uce", "esd-x", "esd-u", "cad", "amnesia", "eigen", "rece", "advunlearn")
CONCEPT, GUIDE, PRESERVE = "cat", "art", ("a dog", "a photo of a car", "a tree")
SD14_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "norm_num_groups": 32,
    "sample_size": 512,
}
CLIP_L = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "hidden_act": "quick_gelu",
}


def ours_options(method: str, iterations: int, steps: int, eigen_steps: int) -> dict:
    """The options of our run: few iterations, `steps` sampling steps (eigen: `eigen_steps`, see --eigen-steps)."""
    return {
        "uce": {},
        "esd-x": {"variant": "x", "iterations": iterations, "sampling_steps": steps, "schedule": "official"},
        "esd-u": {"variant": "u", "iterations": iterations, "sampling_steps": steps, "schedule": "official"},
        "cad": {"samples": 1, "steps": steps},
        "amnesia": {
            "steps": iterations,
            "batch_size": 1,
            "fisher_samples": 1,
            "fisher_timesteps": steps,
            "replay_samples": 1,
            "surrogate_samples": 1,
            "sampling_steps": steps,
            "surrogate": "uniform",
            "step_in_backward": True,  # Adam stepped per tensor inside backward: no full set of gradients
        },
        "eigen": {"samples": 1, "steps": eigen_steps},
        "rece": {"rounds": 2},
        "advunlearn": {
            "iterations": iterations,
            "warmup": 0,
            "attack_steps": 1,
            "sampling_steps": steps,
            "pool_trajectories": 1,
            "retain_batch": 1,
        },
    }[method]


# -- the pipeline ----------------------------------------------------------------------------------------------
def _tiny_models():
    """tests/tiny_models.py of this checkout (found from the installed package, so a copy of this script works)."""
    import concept_edit

    tests = Path(concept_edit.__file__).resolve().parents[2] / "tests"
    if not (tests / "tiny_models.py").exists():
        raise SystemExit(f"needs the checkout's tests/tiny_models.py (looked in {tests})")
    sys.path.insert(0, str(tests))
    import tiny_models

    return tiny_models


def build_pipe(folder: Path, tiny: bool, resolution: int):
    """SD 1.4's shapes (or the tests' tiny ones) with random weights; marked as a 30-step, guidance-7.5 model."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from concept_edit.models.info import ModelInfo

    tiny_models = _tiny_models()
    if tiny:
        pipe = tiny_models.tiny_sd(tiny_models.write_clip_tokenizer(folder / "tokenizer"), seed=0)
        pipe.concept_edit_info = ModelInfo("tiny-random", None, 30, 7.5, resolution)
        return pipe
    tokenizer = CLIPTokenizer.from_pretrained(tiny_models.write_clip_tokenizer(folder / "tokenizer", max_length=77))
    torch.manual_seed(0)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **CLIP_L,
    )
    text_encoder = CLIPTextModel(config).eval()
    unet = UNet2DConditionModel(**SD14_UNET)
    vae = AutoencoderKL(**SD14_VAE)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        clip_sample=False,
        set_alpha_to_one=False,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.concept_edit_info = ModelInfo("sd14-shaped-random", None, 30, 7.5, resolution)
    return pipe


def request_for(method: str):
    from concept_edit import EditRequest

    if method in ("uce", "rece"):
        return EditRequest(concepts=(CONCEPT,), guide=GUIDE, preserve=PRESERVE)
    if method in ("amnesia", "advunlearn"):
        return EditRequest(concepts=(CONCEPT,), preserve=PRESERVE[:1])
    return EditRequest(concepts=(CONCEPT,))


# -- official-style loops --------------------------------------------------------------------------------------
def _encode(pipe, texts):
    import torch

    tok = pipe.tokenizer
    ids = tok(list(texts), padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
    with torch.no_grad():
        return pipe.text_encoder(ids.input_ids)[0], ids.attention_mask


def _latents(pipe, n: int = 1):
    import torch

    size = pipe.concept_edit_info.resolution // 8
    return torch.randn(n, pipe.unet.config.in_channels, size, size, generator=torch.Generator().manual_seed(0))


def _sample_till(pipe, unet, emb_c, emb_u, steps: int, till: int, guidance: float = 3.0):
    """CompVis `quick_sample_till_t`: guided DDIM from noise for `till` of `steps` steps, no grad."""
    import torch
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    x = _latents(pipe)
    with torch.no_grad():
        for t in scheduler.timesteps[:till]:
            u, c = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([emb_u, emb_c])).sample.chunk(2)
            x = scheduler.step(u + guidance * (c - u), t, x).prev_sample
    return x, scheduler.timesteps[min(till, steps - 1)]


def official_esd(pipe, variant: str, iterations: int, steps: int) -> None:
    """CompVis ESD `train-scripts/train-esd.py` (rohitgandikota/erasing): `get_models` loads the model twice
    (`model_orig`, `model`); here the frozen one is a `copy.deepcopy` of the UNet only (the CompVis script also
    holds a second text encoder and VAE). `model.model.diffusion_model` keeps `requires_grad` on every parameter
    (the LDM never turns it off), so backward fills a gradient for the whole UNet while Adam updates only
    `xattn` ('attn2' in the name) or `noxattn` (all but attn2, out., time_embed) parameters."""
    import torch

    unet = pipe.unet
    model_orig = copy.deepcopy(unet).requires_grad_(False)
    unet.requires_grad_(True).train()

    def chosen(name: str) -> bool:
        if variant == "x":
            return "attn2" in name
        return not (name.startswith("conv_out") or "attn2" in name or "time_emb" in name)

    opt = torch.optim.Adam([p for n, p in unet.named_parameters() if chosen(n)], lr=1e-5)
    emb_0, _ = _encode(pipe, [""])
    emb_p, _ = _encode(pipe, [CONCEPT])
    for _ in range(iterations):
        opt.zero_grad()
        z, t = _sample_till(pipe, unet, emb_p, emb_0, steps, steps - 1)
        with torch.no_grad():
            e_0 = model_orig(z, t, encoder_hidden_states=emb_0).sample
            e_p = model_orig(z, t, encoder_hidden_states=emb_p).sample
        e_n = unet(z, t, encoder_hidden_states=emb_p).sample
        loss = torch.nn.functional.mse_loss(e_n, e_0 - 1.0 * (e_p - e_0))
        loss.backward()
        opt.step()


def official_cad(pipe, iterations: int, steps: int, ratio: float = 0.001) -> None:
    """CAD's official `compute_positive_neurons.py`: every UNet parameter requires grad, both guidance branches
    are backpropagated, and the gradient of every parameter is kept in a `{name: grad}` dictionary summed over
    samples and steps (then saved); the ablation then zeroes the top `ablate_ratio` of w * grad per row of the
    2-d weights of the chosen layers (here the feed-forward ones, as our default)."""
    import torch

    unet = pipe.unet
    unet.requires_grad_(True)
    emb_0, _ = _encode(pipe, [""])
    emb_c, _ = _encode(pipe, [CONCEPT])
    grads: dict[str, torch.Tensor] = {}
    for k in range(steps):
        x, t = _sample_till(pipe, unet, emb_c, emb_0, steps, k)
        unet.zero_grad()
        u, c = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([emb_0, emb_c])).sample.chunk(2)
        ((u - c) ** 2).sum().backward()
        for name, p in unet.named_parameters():
            grads[name] = grads[name] + p.grad.clone() if name in grads else p.grad.clone()
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if ".ff." in name and name.endswith("weight") and p.ndim == 2:
                score = p * grads[name]
                n = max(1, int(ratio * p.shape[1]))
                top = score.topk(n, dim=1).indices
                p.scatter_(1, top, 0.0)


def official_amnesia(pipe, iterations: int, steps: int, lam: float = 50.0) -> None:
    """Selective Amnesia's SD scripts (clear-nus/selective-amnesia `sd/`): `calculate_fisher` keeps
    `fisher_dict = {name: zeros_like(p)}` for every UNet parameter and adds each sample's squared gradient;
    `ddpm_forget.py` keeps the Fisher and `params_mle` (a full copy of the parameters, theta*), trains every UNet
    parameter with AdamW and adds lam * sum_n (F_n * (p_n - theta*_n) ** 2).sum() to the loss in the autograd
    graph. One Fisher sample of `steps` timesteps, then `iterations` steps on a forget + replay batch."""
    import torch

    unet = pipe.unet
    unet.requires_grad_(True).train()
    emb_c, _ = _encode(pipe, [CONCEPT])
    emb_r, _ = _encode(pipe, [PRESERVE[0]])
    x0 = _latents(pipe)
    fisher = {n: torch.zeros_like(p) for n, p in unet.named_parameters()}
    unet.zero_grad()
    for t in torch.linspace(999, 0, steps).long():
        noise = torch.randn_like(x0)
        xt = pipe.scheduler.add_noise(x0, noise, t.view(1))
        torch.nn.functional.mse_loss(unet(xt, t, encoder_hidden_states=emb_r).sample, noise).backward()
    for n, p in unet.named_parameters():
        fisher[n] += p.grad.data**2
    unet.zero_grad()
    params_mle = {n: p.detach().clone() for n, p in unet.named_parameters()}
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-5)
    for _ in range(iterations):
        opt.zero_grad()
        t = torch.randint(0, 1000, (2,))
        noise = torch.randn(2, *x0.shape[1:])
        xt = pipe.scheduler.add_noise(torch.cat([torch.rand_like(x0), x0]), noise, t)
        pred = unet(xt, t, encoder_hidden_states=torch.cat([emb_c, emb_r])).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        for n, p in unet.named_parameters():
            loss = loss + lam * (fisher[n] * (p - params_mle[n]) ** 2).sum()
        loss.backward()
        opt.step()


def _cross_attentions(unet):
    return [m for n, m in unet.named_modules() if n.endswith("attn2")]


def _uce_official_edit(
    pipe, projections, old_texts, new_texts, retain_texts, lamb=0.5, erase_scale=1.0, preserve_scale=1.0
) -> None:
    """`edit_model` of UCE's `train-scripts/train_erase.py` (rohitgandikota/unified-concept-editing), as it does
    it: float32; for each projection and each text pair, the embeddings from the last word token to the end of
    the padded prompt (`old_emb[final_token_idx:...]`), their outer products `value_vector @ context_vector_T`
    summed over the tokens, and `mat1 @ torch.inverse(mat2)`."""
    import torch

    def rows(old, new):
        (emb, mask) = _encode(pipe, [old, new])
        idx, idx_new = int(mask[0].sum()) - 2, int(mask[1].sum()) - 2
        farthest = max(idx, idx_new)
        old_emb = emb[0][idx : len(emb[0]) - max(0, farthest - idx)]
        new_emb = emb[1][idx_new : len(emb[1]) - max(0, farthest - idx_new)]
        return old_emb, new_emb

    pairs = [(rows(o, n), erase_scale) for o, n in zip(old_texts, new_texts, strict=True)]
    pairs += [(rows(r, r), preserve_scale) for r in retain_texts]
    with torch.no_grad():
        for layer in projections:
            mat1 = lamb * layer.weight
            mat2 = lamb * torch.eye(layer.weight.shape[1])
            for (context, new_emb), scale in pairs:
                values = layer(new_emb).detach()
                context_vector = context.reshape(context.shape[0], context.shape[1], 1)
                context_vector_t = context.reshape(context.shape[0], 1, context.shape[1])
                value_vector = values.reshape(values.shape[0], values.shape[1], 1)
                mat1 = mat1 + scale * (value_vector @ context_vector_t).sum(dim=0)
                mat2 = mat2 + scale * (context_vector @ context_vector_t).sum(dim=0)
            layer.weight = torch.nn.Parameter(mat1 @ torch.inverse(mat2))


def official_uce(pipe) -> None:
    """UCE's official `train_erase.py`: `edit_model` over every cross-attention to_k and to_v."""
    projections = [p for a in _cross_attentions(pipe.unet) for p in (a.to_k, a.to_v)]
    _uce_official_edit(pipe, projections, [CONCEPT], [GUIDE], list(PRESERVE))


def official_rece(pipe, rounds: int) -> None:
    """RECE (Gong et al. 2024): the official code was not available to this project; rendered as its algorithm
    run with UCE's official `edit_model`: a copy of the original projection matrices (`copy.deepcopy`), then per
    round the closed-form embedding e* = (W^T W + lambda I)^{-1} W^T W c over the edited projections (float32)
    and a fresh `edit_model` from the original weights with e* added to the erased texts' rows."""
    import torch

    projections = [p for a in _cross_attentions(pipe.unet) for p in (a.to_k, a.to_v)]
    originals = [copy.deepcopy(p) for p in projections]
    _uce_official_edit(pipe, projections, [CONCEPT], [GUIDE], list(PRESERVE))
    emb, mask = _encode(pipe, [CONCEPT])
    c = emb[0, int(mask[0].sum()) - 2]
    for _ in range(rounds):
        with torch.no_grad():
            gram = sum(p.weight.T @ p.weight for p in projections)
            rhs = sum(p.weight.T @ (o.weight @ c) for p, o in zip(projections, originals, strict=True))
            e_star = torch.linalg.solve(gram + 1e-2 * torch.eye(len(c)) * gram.diagonal().mean(), rhs)
            for p, o in zip(projections, originals, strict=True):
                p.weight = torch.nn.Parameter(o.weight.clone())
        _uce_official_edit(pipe, projections, [CONCEPT], [GUIDE], list(PRESERVE))
        del e_star


def official_eigen(pipe, steps: int, k: int = 3) -> None:
    """Eigen-direction erasure as the paper's eq. 4 writes it and the eigens repository's notebooks compute it:
    every feature vector of the layer (each image token at every denoising step, conditional branch) is kept,
    stacked into a matrix, and decomposed with `torch.linalg.svd` (rohitgandikota/eigens; its
    `scripts/edit-diffusion.py` is an ESD-style fine-tuning and holds no such statistics)."""
    import torch

    unet = pipe.unet
    layers = [a.to_out[0] for a in _cross_attentions(unet)]
    kept: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(layers))}
    hooks = [
        layer.register_forward_hook(lambda m, i, o, j=j: kept[j].append(o[-1].detach().clone()))
        for j, layer in enumerate(layers)
    ]
    emb_0, _ = _encode(pipe, [""])
    emb_c, _ = _encode(pipe, [CONCEPT])
    try:
        _sample_till(pipe, unet, emb_c, emb_0, steps, steps)
    finally:
        for h in hooks:
            h.remove()
    for j in kept:
        stacked = torch.cat(kept[j]).T  # d x m
        u, _, _ = torch.linalg.svd(stacked, full_matrices=False)
        kept[j] = u[:, :k].clone()


def official_advunlearn(pipe, iterations: int, steps: int) -> None:
    """AdvUnlearn's official `train-scripts/AdvUnlearn.py` (OPTML-Group/AdvUnlearn), text-encoder mode:
    `get_models` loads the diffusion model twice (`model_orig`, `model`: here a `copy.deepcopy` of the UNet and of
    the text encoder stand for the second copy); Adam trains the text encoder's layers; `model`'s UNet keeps
    `requires_grad` (the LDM never turns it off), so backward through it fills a gradient for the whole UNet.
    Per step: a 1-step soft-prompt attack (one prefix embedding), then the ESD loss on [delta, c]."""
    import torch

    unet, text_encoder = pipe.unet, pipe.text_encoder
    unet_orig = copy.deepcopy(unet).requires_grad_(False)
    text_encoder_orig = copy.deepcopy(text_encoder).requires_grad_(False)
    unet.requires_grad_(True)
    text_encoder.requires_grad_(False)
    params = [p for n, p in text_encoder.named_parameters() if "layers" in n or "final_layer_norm" in n]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=1e-5)
    tok = pipe.tokenizer
    ids = tok([CONCEPT], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    embeddings = text_encoder.get_input_embeddings()
    delta = embeddings(ids[:, 1:2]).detach().clone().requires_grad_(True)
    attack_opt = torch.optim.Adam([delta], lr=1e-3)

    def encode_with(encoder, prefix):
        """The prompt with its first word's embedding replaced by `prefix` (the official `prefix_k` slot)."""

        def put(module, inputs, out):
            return torch.cat([out[:, :1], prefix, out[:, 2:]], dim=1)

        hook = encoder.get_input_embeddings().register_forward_hook(put)
        try:
            return encoder(ids)[0]
        finally:
            hook.remove()

    with torch.no_grad():
        emb_0 = text_encoder_orig(
            tok([""], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
        )[0]
        emb_p = text_encoder_orig(ids)[0]
    for _ in range(iterations):
        z, t = _sample_till(pipe, unet, emb_p, emb_0, steps, steps - 1)
        with torch.no_grad():
            e_0 = unet_orig(z, t, encoder_hidden_states=emb_0).sample
            e_p = unet_orig(z, t, encoder_hidden_states=emb_p).sample
        attack_loss = torch.nn.functional.mse_loss(
            unet(z, t, encoder_hidden_states=encode_with(text_encoder, delta)).sample, e_p
        )
        attack_loss.backward()
        attack_opt.step()
        opt.zero_grad()
        e_n = unet(z, t, encoder_hidden_states=encode_with(text_encoder, delta.detach())).sample
        torch.nn.functional.mse_loss(e_n, e_0 - 1.0 * (e_p - e_0)).backward()
        opt.step()


def run_official(pipe, method: str, iterations: int, steps: int, eigen_steps: int) -> None:
    if method in ("esd-x", "esd-u"):
        official_esd(pipe, method[-1], iterations, steps)
    elif method == "cad":
        official_cad(pipe, iterations, steps)
    elif method == "amnesia":
        official_amnesia(pipe, iterations, steps)
    elif method == "uce":
        official_uce(pipe)
    elif method == "rece":
        official_rece(pipe, ours_options("rece", iterations, steps, eigen_steps)["rounds"])
    elif method == "eigen":
        official_eigen(pipe, eigen_steps)
    elif method == "advunlearn":
        official_advunlearn(pipe, iterations, steps)
    else:
        raise ValueError(method)


# -- one measured run (the child process) ----------------------------------------------------------------------
def _rss_bytes() -> int:
    return int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024


def _guard(limit_bytes: int, row: dict) -> None:
    """Stop this process (exit 0 with a row saying so) once its RSS passes `limit_bytes`: the machine is shared."""
    import threading

    def watch() -> None:
        while True:
            if _rss_bytes() > limit_bytes:
                print(json.dumps({**row, "stopped_above_bytes": limit_bytes}), flush=True)
                os._exit(0)
            time.sleep(0.02)

    threading.Thread(target=watch, daemon=True).start()


def measure(method: str, loop: str, args) -> dict:
    import torch

    import concept_edit
    from concept_edit import make_config

    torch.set_num_threads(args.threads)
    # everything either loop imports, before the baseline: the figures are what the run holds, not libraries
    import diffusers  # noqa: F401
    import peft  # noqa: F401
    from diffusers import StableDiffusionPipeline  # noqa: F401
    from transformers import CLIPTextModel  # noqa: F401

    from concept_edit.methods import get_method

    get_method("esd" if method.startswith("esd") else method).fit  # noqa: B018 - imports the method's module
    after_imports = _rss_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        pipe = build_pipe(Path(tmp), args.tiny, args.resolution)
    weights = sum(
        p.numel() * p.element_size() for m in (pipe.unet, pipe.text_encoder, pipe.vae) for p in m.parameters()
    )
    unet_bytes = sum(p.numel() * p.element_size() for p in pipe.unet.parameters())
    trained = trained_bytes(pipe, method)
    built = _rss_bytes()
    row = {"method": method, "loop": loop, "rss_after_imports_bytes": after_imports, "weights_bytes": weights}
    _guard(int(args.max_gb * 1e9), {**row, "unet_bytes": unet_bytes, "trained_bytes": trained})
    started = time.perf_counter()
    if loop == "ours":
        name = "esd" if method.startswith("esd") else method
        config = make_config(name, **ours_options(method, args.iterations, args.steps, args.eigen_steps))
        concept_edit.fit(pipe, name, request_for(method), config, seed=0, progress=False)
    else:
        run_official(pipe, method, args.iterations, args.steps, args.eigen_steps)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "method": method,
        "loop": loop,
        "peak_bytes": peak - after_imports,
        "peak_rss_bytes": peak,
        "rss_after_imports_bytes": after_imports,
        "rss_after_build_bytes": built,
        "weights_bytes": weights,
        "unet_bytes": unet_bytes,
        "extra_bytes": peak - after_imports - weights,
        "trained_bytes": trained,
        "seconds": round(seconds, 1),
    }


def trained_bytes(pipe, method: str) -> int:
    """Bytes of the tensors our method trains (float32): ESD's variant, amnesia's `all` (the UNet), AdvUnlearn's
    text-encoder Linear layers; 0 for the closed-form and statistics methods."""
    import torch

    if method.startswith("esd"):
        from concept_edit.methods.esd.fit import variant_parameters
        from concept_edit.models.targets import get_parameter

        return sum(get_parameter(pipe, k).nbytes for k in variant_parameters(pipe, method[-1]))
    if method == "amnesia":
        return sum(p.nbytes for p in pipe.unet.parameters())
    if method == "advunlearn":
        return sum(
            p.nbytes for m in pipe.text_encoder.modules() if isinstance(m, torch.nn.Linear) for p in m.parameters()
        )
    return 0


def run_child(method: str, loop: str, args, resolution: int | None = None) -> dict:
    resolution = resolution or args.resolution
    child = [
        sys.executable,
        __file__,
        "--child",
        method,
        loop,
        "--resolution",
        str(resolution),
        "--iterations",
        str(args.iterations),
        "--steps",
        str(args.steps),
        "--eigen-steps",
        str(args.eigen_steps),
        "--threads",
        str(args.threads),
        "--max-gb",
        str(args.max_gb),
    ]
    child += ["--tiny"] if args.tiny else []
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    run = subprocess.run(child, capture_output=True, text=True, env=env)
    if run.returncode != 0:
        raise SystemExit(f"{method} / {loop} failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def _line(row: dict) -> str:
    def gb(loop: str, key: str) -> str:
        if row[key] is not None:
            return f"{row[key] / 1e9:.2f}"
        return f">{row['stopped_above'][loop] / 1e9:.2f}" if loop in row.get("stopped_above", {}) else "-"

    ratio = row["ratio"] if row["ratio"] is not None else f"<{row['ratio_below']}" if "ratio_below" in row else "-"
    seconds = {loop: run.get("seconds", "-") for loop, run in row["runs"].items()}
    return (
        f"{row['method']:<11} {gb('ours', 'peak_bytes'):>8} {gb('official', 'official_peak_bytes'):>12} {ratio:>6} "
        f"{row['weights_bytes'] / 1e9:>11.2f} {seconds.get('ours', '-'):>7} {seconds.get('official', '-'):>11}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--resolution", type=int, default=512, help="image size in pixels (latents: /8)")
    parser.add_argument("--iterations", type=int, default=2, help="training iterations / optimiser steps")
    parser.add_argument("--steps", type=int, default=2, help="sampling steps of every generated trajectory")
    parser.add_argument(
        "--eigen-steps",
        type=int,
        default=30,
        help="eigen's denoising steps (SD's 30 by default): what its statistics hold depends on them",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--loops", nargs="+", default=["ours", "official"], choices=["ours", "official"])
    parser.add_argument(
        "--low-resolution",
        type=int,
        default=None,
        help="also run ours at this size, to extrapolate the peak to 512 px (activations ~ pixels)",
    )
    parser.add_argument("--max-gb", type=float, default=13.0, help="stop a run whose RSS passes this many GB")
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny pipeline: a quick check only")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "LOOP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tiny and args.resolution == 512:
        args.resolution = 64
    if args.child:
        print(json.dumps(measure(*args.child, args)))
        return
    rows = []
    print(
        f"{'method':<11} {'ours GB':>8} {'official GB':>12} {'ratio':>6} {'weights GB':>11} {'ours s':>7} "
        f"{'official s':>11}",
        flush=True,
    )
    for method in args.methods:
        runs = {loop: run_child(method, loop, args) for loop in args.loops}
        ours, official = runs.get("ours"), runs.get("official")
        head = ours or official
        stopped = {loop: run["stopped_above_bytes"] for loop, run in runs.items() if "stopped_above_bytes" in run}
        ours_peak = ours.get("peak_bytes") if ours else None
        official_peak = official.get("peak_bytes") if official else None
        row = {
            "method": method,
            "peak_bytes": ours_peak,
            "official_peak_bytes": official_peak,
            "ratio": round(ours_peak / official_peak, 3) if ours_peak and official_peak else None,
            "dtype": "float32",
            "weights_bytes": head["weights_bytes"],
            "unet_bytes": head["unet_bytes"],
            "trained_bytes": head["trained_bytes"],
            "runs": runs,
        }
        if stopped:  # a run stopped at the limit: its peak is above (limit - RSS after imports), a bound
            row["stopped_above"] = {loop: b - runs[loop]["rss_after_imports_bytes"] for loop, b in stopped.items()}
            if ours_peak and "official" in stopped:
                row["ratio_below"] = round(ours_peak / row["stopped_above"]["official"], 3)
        if args.low_resolution and ours_peak:
            low = run_child(method, "ours", args, args.low_resolution)["peak_bytes"]
            r, r_low = args.resolution, args.low_resolution
            per_pixel = (ours_peak - low) / (r**2 - r_low**2)
            row["low_resolution_peak_bytes"] = low
            row["peak_bytes_512_estimate"] = round(ours_peak + per_pixel * (512**2 - r**2))
        rows.append(row)
        print(_line(row), flush=True)
    if args.json:
        protocol = {
            "resolution": args.resolution,
            "latent": args.resolution // 8,
            "iterations": args.iterations,
            "sampling_steps": args.steps,
            "eigen_steps": args.eigen_steps,
            "low_resolution": args.low_resolution,
            "dtype": "float32",
            "threads": args.threads,
            "device": "cpu",
            "pipeline": "tiny (tests)" if args.tiny else "SD-1.4 shapes, random weights",
            "peak": "ru_maxrss of a fresh process minus its VmRSS after imports (peak_rss_bytes: raw)",
        }
        print(json.dumps({"rows": rows, "protocol": protocol, **({"tiny": True} if args.tiny else {})}))


if __name__ == "__main__":
    main()
