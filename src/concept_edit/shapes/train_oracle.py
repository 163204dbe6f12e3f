"""Train the oracle classifier on fresh renders of the shapes world.

    python -m concept_edit.shapes.train_oracle --out runs/oracle --seed 0 --ship

About 6 minutes on a 2-core CPU. `--resume` continues an interrupted run; `--ship` copies the final
weights into the package (src/concept_edit/shapes/weights/oracle.safetensors).
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from concept_edit.io import save_tensors
from concept_edit.shapes.oracle import HEADS, WEIGHTS, OracleNet, to_tensor
from concept_edit.shapes.world import COLORS, OBJECTS, STYLES, Scene, logo, render
from concept_edit.training import resume, run_steps, save_checkpoint, step_generator, step_rng

log = logging.getLogger(__name__)
P_LOGO = 0.15


def render_batch(rng: np.random.Generator, n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """n labelled renders, uniform over objects/colours/styles, with ~15% logos (labels -1 there)."""
    images, labels = [], {"object": [], "color": [], "style": [], "logo": []}
    colors = list(COLORS)
    for _ in range(n):
        if rng.random() < P_LOGO:
            images.append(logo())
            for head in HEADS:
                labels[head].append(-1)
            labels["logo"].append(1)
            continue
        o, c, s = int(rng.integers(len(OBJECTS))), int(rng.integers(len(colors))), int(rng.integers(len(STYLES)))
        images.append(render(Scene(OBJECTS[o], colors[c], STYLES[s], int(rng.integers(2**31)))))
        labels["object"].append(o)
        labels["color"].append(c)
        labels["style"].append(s)
        labels["logo"].append(0)
    return np.stack(images), {k: np.array(v) for k, v in labels.items()}


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Perturbations a decoded diffusion sample shows: small shifts, blur, noise, tone and saturation drift."""
    n = len(x)

    def u(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, *shape, generator=gen)

    padded = F.pad(x, (2, 2, 2, 2), mode="replicate")
    dy, dx = torch.randint(0, 5, (2,), generator=gen).tolist()
    x = padded[:, :, dy : dy + 32, dx : dx + 32]
    sigma = u(0.01, 1.0)
    blur = torch.rand(n, generator=gen) < 0.5
    coords = torch.arange(-2, 3, dtype=torch.float32)
    kernels = torch.exp(-(coords[None] ** 2) / (2 * sigma[:, None] ** 2))
    kernels = kernels / kernels.sum(-1, keepdim=True)
    blurred = torch.stack([_separable_blur(img, k) for img, k in zip(x, kernels, strict=True)])
    x = torch.where(blur[:, None, None, None], blurred, x)
    gray = x.mean(1, keepdim=True)
    x = x + u(0, 0.2, 1, 1, 1) * (gray - x)
    x = (x - 0.5) * u(0.9, 1.1, 1, 1, 1) + 0.5 + u(-0.05, 0.05, 1, 1, 1) + u(-0.03, 0.03, 3, 1, 1)
    x = x + u(0, 0.04, 1, 1, 1) * torch.randn(x.shape, generator=gen)
    return x.clamp(0, 1)


def _separable_blur(img: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    c = img.shape[0]
    k = kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    out = F.conv2d(F.pad(img[None], (2, 2, 0, 0), mode="replicate"), k, groups=c)
    out = F.conv2d(F.pad(out, (0, 0, 2, 2), mode="replicate"), k.transpose(2, 3), groups=c)
    return out[0]


def loss_fn(net: OracleNet, x: torch.Tensor, labels: dict[str, np.ndarray]) -> tuple[torch.Tensor, dict]:
    out = net(x)
    total = F.binary_cross_entropy_with_logits(out["logo"], torch.from_numpy(labels["logo"]).float())
    metrics = {}
    for head in HEADS:
        y = torch.from_numpy(labels[head])
        keep = y >= 0
        total = total + F.cross_entropy(out[head][keep], y[keep])
        metrics[head] = (out[head][keep].argmax(-1) == y[keep]).float().mean().item()
    metrics["loss"] = total.item()
    return total, metrics


@torch.no_grad()
def accuracy(net: OracleNet, images: np.ndarray, labels: dict[str, np.ndarray]) -> dict[str, float]:
    net.eval()
    out = net(to_tensor(images))
    acc = {}
    for head in HEADS:
        y = torch.from_numpy(labels[head])
        keep = y >= 0
        acc[head] = (out[head][keep].argmax(-1) == y[keep]).float().mean().item()
    acc["logo"] = ((out["logo"] > 0).long() == torch.from_numpy(labels["logo"])).float().mean().item()
    return acc


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/oracle"))
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.safetensors")
    parser.add_argument("--ship", action="store_true", help="copy the final weights into the package")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(args.seed)

    config = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed}
    net = OracleNet()
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    ckpt = args.out / "checkpoint.safetensors"
    start = resume(ckpt, config, model=net, optimizer=opt, scheduler=sched) if args.resume else 0

    def step_fn(step: int) -> dict[str, float]:
        net.train()
        images, labels = render_batch(step_rng(args.seed, step), args.batch_size)
        x = augment(to_tensor(images), step_generator(args.seed, step))
        loss, metrics = loss_fn(net, x, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        return metrics

    def save_fn(step: int) -> None:
        save_checkpoint(
            ckpt, step, config, model=net.state_dict(), optimizer=opt.state_dict(), scheduler=sched.state_dict()
        )

    run_steps(total=args.steps, start=start, step_fn=step_fn, save_fn=save_fn, every=250, desc="oracle")
    images, labels = render_batch(np.random.default_rng([args.seed, 10**9]), 2000)
    clean = accuracy(net, images, labels)
    noisy = accuracy(
        net, (augment(to_tensor(images), torch.Generator().manual_seed(1)).permute(0, 2, 3, 1).numpy()), labels
    )
    log.info("accuracy on 2000 fresh renders: %s", {k: round(v, 4) for k, v in clean.items()})
    log.info("accuracy on the same renders, augmented: %s", {k: round(v, 4) for k, v in noisy.items()})
    weights = args.out / "oracle.safetensors"
    save_tensors(weights, net.state_dict())
    if args.ship:
        shutil.copyfile(weights, WEIGHTS)
        log.info("shipped %s", WEIGHTS)


if __name__ == "__main__":
    main()
