"""Train ShapesSD from scratch on the shapes world (the MiniLM text encoder stays frozen).

    python -m concept_edit.worlds.shapes.train_shapes_sd --out runs/shapes_sd --seed 0 --ship

Stages, each checkpointed (re-run with --resume after an interruption; finished stages are skipped):
  1. render a fixed dataset of captioned scenes (the planted bias, rare diamond and logo included);
  2. train the VAE (L1 + a tiny KL, as in Stable Diffusion's KL-f autoencoders), set its scaling factor;
  3. cache VAE latents and MiniLM token embeddings of every distinct caption;
  4. train the UNet on epsilon with EMA, 10% caption dropout (for classifier-free guidance) and
     min-SNR-5 loss weighting;
  5. export fp16 diffusers folders (out/final/unet, out/final/vae); --ship copies them into the package.
Defaults take about 60 minutes on a 2-core CPU. Two-step smoke run:
    python -m concept_edit.worlds.shapes.train_shapes_sd --out /tmp/t --examples 32 --vae-steps 2 --unet-steps 2 \
        --batch-size 4
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tqdm.auto import tqdm

from concept_edit.io import save_tensors, write_json
from concept_edit.training import resume, run_steps, save_checkpoint, step_generator, step_rng
from concept_edit.worlds.shapes import pipeline as shapes
from concept_edit.worlds.shapes.captions import sample_example
from concept_edit.worlds.shapes.world import logo, render

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/shapes_sd"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--examples", type=int, default=60000, help="size of the rendered training set")
    p.add_argument("--vae-steps", type=int, default=1500)
    p.add_argument("--vae-batch-size", type=int, default=32)
    p.add_argument("--unet-steps", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--cfg-dropout", type=float, default=0.1)
    p.add_argument("--snr-gamma", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--ship", action="store_true", help="copy out/final into the package weights folder")
    return p.parse_args(argv)


def cosine_lr(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


# -- stage 1: data ---------------------------------------------------------------------------------------
def render_dataset(path: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng([seed, 1])
    images = np.zeros((n, 32, 32, 3), dtype=np.uint8)
    captions: list[str] = []
    for i in tqdm(range(n), desc="render dataset"):
        ex = sample_example(rng)
        images[i] = logo() if ex.scene is None else render(ex.scene)
        captions.append(ex.caption)
    vocab = sorted(set(captions) | {""})
    index = {c: i for i, c in enumerate(vocab)}
    ids = torch.tensor([index[c] for c in captions], dtype=torch.int64)
    save_tensors(
        path, {"images": torch.from_numpy(images), "caption_ids": ids}, metadata={"captions": json.dumps(vocab)}
    )


def load_dataset(path: Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        vocab = json.loads(f.metadata()["captions"])
    tensors = load_file(str(path))
    return tensors["images"], tensors["caption_ids"], vocab


def to_pixels(images_uint8: torch.Tensor) -> torch.Tensor:
    return images_uint8.permute(0, 3, 1, 2).float() / 127.5 - 1


# -- stage 2: VAE -------------------------------------------------------------------------------------------
def train_vae(args: argparse.Namespace, images: torch.Tensor) -> None:
    vae = shapes.new_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    config = {
        "steps": args.vae_steps,
        "batch_size": args.vae_batch_size,
        "lr": args.vae_lr,
        "seed": args.seed,
        "examples": args.examples,
    }
    ckpt = args.out / "vae_checkpoint.safetensors"
    start = resume(ckpt, config, model=vae, optimizer=opt) if args.resume else 0

    def step_fn(step: int) -> dict[str, float]:
        for group in opt.param_groups:
            group["lr"] = args.vae_lr * cosine_lr(step, args.vae_steps, warmup=50)
        rng = step_rng(args.seed, step, stream=2)
        x = to_pixels(images[rng.integers(len(images), size=args.vae_batch_size)])
        posterior = vae.encode(x).latent_dist
        z = posterior.sample(generator=step_generator(args.seed, step, stream=2))
        recon = vae.decode(z).sample
        l1 = (recon - x).abs().mean()
        # Stable Diffusion's KL-f8 weighting (1e-6 of the summed KL against the summed reconstruction
        # error), written per element.
        kl = posterior.kl().mean() / x[0].numel()
        loss = l1 + 1e-6 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"l1": l1.item(), "kl": kl.item()}

    def save_fn(step: int) -> None:
        save_checkpoint(ckpt, step, config, model=vae.state_dict(), optimizer=opt.state_dict())

    run_steps(total=args.vae_steps, start=start, step_fn=step_fn, save_fn=save_fn, every=200, desc="vae")
    vae.eval()
    with torch.no_grad():
        sample = to_pixels(images[np.random.default_rng([args.seed, 3]).integers(len(images), size=1024)])
        latents = torch.cat([vae.encode(b).latent_dist.mean for b in sample.split(256)])
        scaling = 1.0 / latents.std().item()
        recon = torch.cat([vae.decode(b).sample for b in latents.split(256)])
        log.info(
            "VAE: reconstruction L1 %.4f (pixels in [-1, 1]), latent std %.3f -> scaling factor %.4f",
            (recon - sample).abs().mean().item(),
            latents.std().item(),
            scaling,
        )
    vae.register_to_config(scaling_factor=scaling)
    vae.save_pretrained(args.out / "vae", safe_serialization=True)


# -- stage 3: caches ---------------------------------------------------------------------------------------
@torch.no_grad()
def cache_latents(args: argparse.Namespace, images: torch.Tensor) -> None:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(args.out / "vae").eval()
    chunks = [
        vae.encode(to_pixels(b)).latent_dist.mean * vae.config.scaling_factor
        for b in tqdm(images.split(512), desc="cache latents")
    ]
    save_tensors(args.out / "latents.safetensors", {"latents": torch.cat(chunks)})


@torch.no_grad()
def cache_text(args: argparse.Namespace, vocab: list[str]) -> None:
    encoder, tokenizer = shapes.text_components()
    chunks = []
    for i in tqdm(range(0, len(vocab), 256), desc="cache text"):
        batch = tokenizer(
            vocab[i : i + 256], padding="max_length", max_length=shapes.MAX_TOKENS, truncation=True, return_tensors="pt"
        )
        chunks.append(encoder(batch.input_ids, attention_mask=batch.attention_mask)[0].half())
    save_tensors(args.out / "text.safetensors", {"embeddings": torch.cat(chunks)})


# -- stage 4: UNet ---------------------------------------------------------------------------------------
def train_unet(args: argparse.Namespace, caption_ids: torch.Tensor, vocab: list[str]) -> None:
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel, compute_snr

    latents = load_file(str(args.out / "latents.safetensors"))["latents"]
    text = load_file(str(args.out / "text.safetensors"))["embeddings"]
    empty_id = vocab.index("")
    noise_scheduler = DDPMScheduler(**shapes.NOISE_SCHEDULE)
    unet = shapes.new_unet()
    ema = EMAModel(unet.parameters(), decay=args.ema_decay, use_ema_warmup=True, power=3 / 4)
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=1e-2)
    config = {
        k: getattr(args, k)
        for k in ("unet_steps", "batch_size", "lr", "ema_decay", "cfg_dropout", "snr_gamma", "seed", "examples")
    }
    ckpt = args.out / "unet_checkpoint.safetensors"
    start = resume(ckpt, config, model=unet, optimizer=opt, ema=ema) if args.resume else 0
    unet.train()

    def step_fn(step: int) -> dict[str, float]:
        for group in opt.param_groups:
            group["lr"] = args.lr * cosine_lr(step, args.unet_steps, warmup=200)
        rng = step_rng(args.seed, step, stream=4)
        gen = step_generator(args.seed, step, stream=4)
        idx = torch.from_numpy(rng.integers(len(latents), size=args.batch_size))
        ids = caption_ids[idx].clone()
        ids[torch.from_numpy(rng.random(args.batch_size) < args.cfg_dropout)] = empty_id
        x0 = latents[idx]
        cond = text[ids].float()
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (args.batch_size,), generator=gen)
        xt = noise_scheduler.add_noise(x0, noise, t)
        pred = unet(xt, t, cond).sample
        snr = compute_snr(noise_scheduler, t)
        weight = torch.clamp(snr, max=args.snr_gamma) / snr
        loss = (weight * F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        ema.step(unet.parameters())
        return {"loss": loss.item()}

    def save_fn(step: int) -> None:
        save_checkpoint(ckpt, step, config, model=unet.state_dict(), optimizer=opt.state_dict(), ema=ema.state_dict())

    run_steps(total=args.unet_steps, start=start, step_fn=step_fn, save_fn=save_fn, every=250, desc="unet")
    ema.copy_to(unet.parameters())
    unet.save_pretrained(args.out / "unet_ema", safe_serialization=True)


# -- stage 5: export -------------------------------------------------------------------------------------
def export(args: argparse.Namespace) -> Path:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    final = args.out / "final"
    UNet2DConditionModel.from_pretrained(args.out / "unet_ema").half().save_pretrained(final / "unet")
    AutoencoderKL.from_pretrained(args.out / "vae").half().save_pretrained(final / "vae")
    write_json(final / "training.json", {k: str(v) for k, v in vars(args).items()})
    return final


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.out.exists() and any(args.out.iterdir()) and not args.resume:
        raise SystemExit(f"{args.out} is not empty: pass --resume to continue that run, or choose another --out")
    args.out.mkdir(parents=True, exist_ok=True)

    data = args.out / "data.safetensors"
    if not data.exists():
        render_dataset(data, args.examples, args.seed)
    images, caption_ids, vocab = load_dataset(data)
    log.info("dataset: %d images, %d distinct captions", len(images), len(vocab))
    if not (args.out / "vae" / "config.json").exists():
        train_vae(args, images)
    if not (args.out / "latents.safetensors").exists():
        cache_latents(args, images)
    if not (args.out / "text.safetensors").exists():
        cache_text(args, vocab)
    if not (args.out / "unet_ema" / "config.json").exists():
        train_unet(args, caption_ids, vocab)
    final = export(args)
    log.info("exported %s", final)
    if args.ship:
        for part in ("unet", "vae"):
            target = shapes.WEIGHTS_DIR / part
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(final / part, target)
        log.info("shipped ShapesSD weights into %s", shapes.WEIGHTS_DIR)


if __name__ == "__main__":
    main()
