"""Train the digits models on the train split and write their weights into the package.

    python -m concept_edit.worlds.digits.train classifier --seed 0
    python -m concept_edit.worlds.digits.train vae --seed 0
    python -m concept_edit.worlds.digits.train ddpm --seed 0

Train the classifier first: the generators' final check reads their samples with it. Each run uses one CPU
thread (--threads); measured on one core of a busy 2-core machine: classifier 37 s, VAE 33 s, DDPM 5.7 min
(1500 steps of 128 at ~5 steps/s, then 1000 guided samples). Progress shows
in a bar; Ctrl-C writes a checkpoint to --work (default runs/digits-<model>) and the same command with
--resume continues exactly where it stopped. The final weights go atomically to
src/concept_edit/digits/weights/<model>.safetensors (or --out), with the config and the measured numbers
in the file's metadata.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from concept_edit.training import resume, run_steps, save_checkpoint, step_generator, step_rng
from concept_edit.worlds.digits import ddpm
from concept_edit.worlds.digits.classifier import DigitsClassifier
from concept_edit.worlds.digits.data import CLASSES, load_split
from concept_edit.worlds.digits.loading import WEIGHT_FILES, WEIGHTS_DIR, DigitsModel, load_classifier, save_weights
from concept_edit.worlds.digits.vae import ConditionalVAE

log = logging.getLogger(__name__)

DEFAULTS = {  # steps, batch size, learning rate
    "classifier": (3000, 64, 1e-3),
    "vae": (6000, 64, 1e-3),
    "ddpm": (1500, 128, 1e-3),
}
SAMPLES_PER_CLASS = 100


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", choices=tuple(DEFAULTS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="training steps (default per model)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None, help="peak Adam learning rate (cosine decay after warm-up)")
    p.add_argument("--ema-decay", type=float, default=0.999, help="DDPM only")
    p.add_argument("--work", type=Path, default=None, help="checkpoint folder (default runs/digits-<model>)")
    p.add_argument("--out", type=Path, default=None, help="weights file (default: the package's weights folder)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --work")
    args = p.parse_args(argv)
    steps, batch_size, lr = DEFAULTS[args.model]
    args.steps = args.steps or steps
    args.batch_size = args.batch_size or batch_size
    args.lr = args.lr or lr
    args.work = args.work or Path("runs") / f"digits-{args.model}"
    args.out = args.out or WEIGHTS_DIR / WEIGHT_FILES[args.model]
    return args


def cosine_lr(step: int, total: int, warmup: int) -> float:
    """Linear warm-up then cosine decay to 0: the factor applied to the peak learning rate."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by up to one pixel in each direction (zero fill): the classifier's augmentation."""
    padded = F.pad(x, (1, 1, 1, 1))
    offsets = torch.randint(0, 3, (len(x), 2), generator=gen).tolist()
    return torch.stack([padded[i, :, dy : dy + 8, dx : dx + 8] for i, (dy, dx) in enumerate(offsets)])


@torch.no_grad()
def accuracy(classifier: DigitsClassifier, x: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of images the classifier reads as their label."""
    classifier.eval()
    return (classifier(x).argmax(-1) == labels).float().mean().item()


@torch.no_grad()
def read_as_class(model: DigitsModel, classifier: DigitsClassifier, per_class: int, seed: int) -> dict[str, float]:
    """Sample `per_class` images of each class; per class and overall, the share the classifier reads as it."""
    labels = torch.arange(len(CLASSES)).repeat_interleave(per_class)
    images = model.sample(labels, torch.Generator().manual_seed(seed))
    hits = classifier(images).argmax(-1) == labels
    out = {name: hits[labels == c].float().mean().item() for c, name in enumerate(CLASSES)}
    out["all"] = hits.float().mean().item()
    return out


def judge(model: DigitsModel, seed: int) -> dict[str, float]:
    """`read_as_class` with the shipped classifier, or {} (and a warning) when it is not trained yet."""
    try:
        classifier = load_classifier("cpu")
    except FileNotFoundError as err:
        log.warning("skipping the sample check: %s", err)
        return {}
    read = read_as_class(model, classifier, SAMPLES_PER_CLASS, seed)
    log.info(
        "classifier reads %.1f%% of %d samples as their class (per class: %s)",
        100 * read["all"],
        SAMPLES_PER_CLASS * len(CLASSES),
        " ".join(f"{k}:{v:.2f}" for k, v in read.items() if k != "all"),
    )
    return read


def train(args: argparse.Namespace) -> dict:
    """Train args.model; returns the module, its config and the metrics measured at the end."""
    x_train, y_train = load_split("train")
    x_test, y_test = load_split("test")
    config = {k: getattr(args, k) for k in ("model", "steps", "batch_size", "lr", "seed")}
    if args.model == "ddpm":
        config["ema_decay"] = args.ema_decay
    torch.manual_seed(args.seed)
    if args.model == "classifier":
        module = DigitsClassifier()
    elif args.model == "vae":
        module = ConditionalVAE()
    else:
        module = ddpm.new_unet()
        scheduler = ddpm.new_scheduler()
    opt = torch.optim.Adam(module.parameters(), lr=args.lr)
    ema = None
    if args.model == "ddpm":
        from diffusers.training_utils import EMAModel

        ema = EMAModel(module.parameters(), decay=args.ema_decay, use_ema_warmup=True, power=3 / 4)
    state = {"model": module, "optimizer": opt, **({"ema": ema} if ema else {})}
    ckpt = args.work / "checkpoint.safetensors"
    if ckpt.exists() and not args.resume:
        raise SystemExit(f"{ckpt} exists: pass --resume to continue that run, or choose another --work")
    start = resume(ckpt, config, **state) if args.resume else 0

    def step_fn(step: int) -> dict[str, float]:
        for group in opt.param_groups:
            group["lr"] = args.lr * cosine_lr(step, args.steps, warmup=min(100, args.steps // 10 + 1))
        idx = torch.from_numpy(step_rng(args.seed, step).integers(len(x_train), size=args.batch_size))
        x, y = x_train[idx], y_train[idx]
        gen = step_generator(args.seed, step)
        module.train()
        if args.model == "classifier":
            logits = module(shift(x, gen))
            loss = F.cross_entropy(logits, y)
            metrics = {"loss": loss.item(), "acc": (logits.argmax(-1) == y).float().mean().item()}
        elif args.model == "vae":
            loss = module.neg_elbo(x, y, torch.randn(len(x), module.latent_dim, generator=gen)).mean()
            metrics = {"neg_elbo": loss.item()}
        else:
            drop = torch.rand(len(y), generator=gen) < 0.1  # classifier-free guidance: learn the null class too
            y = torch.where(drop, torch.full_like(y, ddpm.NULL_CLASS), y)
            t = torch.randint(0, ddpm.NUM_TRAIN_TIMESTEPS, (len(x),), generator=gen)
            loss = ddpm.neg_elbo_terms(module, scheduler, x, y, t, torch.randn(x.shape, generator=gen)).mean()
            metrics = {"loss": loss.item()}
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if ema is not None:
            torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        if ema is not None:
            ema.step(module.parameters())
        return metrics

    def save_fn(step: int) -> None:
        save_checkpoint(ckpt, step, config, **{name: obj.state_dict() for name, obj in state.items()})

    run_steps(total=args.steps, start=start, step_fn=step_fn, save_fn=save_fn, every=500, desc=f"digits {args.model}")
    module.eval()
    metrics: dict = {}
    with torch.no_grad():
        if args.model == "classifier":
            metrics["test_accuracy"] = accuracy(module, x_test, y_test)
            metrics["test_n"] = len(y_test)
            log.info("test accuracy %.4f (n=%d)", metrics["test_accuracy"], len(y_test))
        elif args.model == "vae":
            noise = torch.randn(len(x_test), module.latent_dim, generator=torch.Generator().manual_seed(args.seed))
            metrics["test_neg_elbo"] = module.neg_elbo(x_test, y_test, noise).mean().item()
            log.info("test negative ELBO %.3f nats per image", metrics["test_neg_elbo"])
            metrics["read_as_class"] = judge(DigitsModel("digits-vae", vae=module), args.seed)
        else:
            ema.copy_to(module.parameters())
            gen = torch.Generator().manual_seed(args.seed)
            t = torch.randint(0, ddpm.NUM_TRAIN_TIMESTEPS, (len(x_test),), generator=gen)
            noise = torch.randn(x_test.shape, generator=gen)
            metrics["test_loss"] = ddpm.neg_elbo_terms(module, scheduler, x_test, y_test, t, noise).mean().item()
            log.info("test loss (EMA weights) %.4f", metrics["test_loss"])
            model = DigitsModel("digits-ddpm", unet=module, scheduler=scheduler)
            metrics["read_as_class"] = judge(model, args.seed)
    if args.model == "ddpm":
        weights_config = {k: v for k, v in module.config.items() if not k.startswith("_")}
        extra = {"scheduler": ddpm.SCHEDULER_CONFIG}
    else:
        weights_config, extra = module.config, {}
    return {"module": module, "config": weights_config, "extra": extra, "metrics": metrics, "training": config}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    result = train(args)
    save_weights(
        args.out,
        args.model,
        result["module"],
        result["config"],
        training=result["training"],
        metrics=result["metrics"],
        **result["extra"],
    )
    log.info("wrote %s (%.0f s)", args.out, time.perf_counter() - began)


if __name__ == "__main__":
    main()
