"""Train the oracle classifier on fresh renders of the shapes world.

    python -m concept_edit.worlds.shapes.train_oracle --out runs/oracle --seed 0 --ship

About 8 minutes on a 2-core CPU. `--resume` continues an interrupted run; `--ship` copies the final
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
from PIL import Image

from concept_edit.io import save_tensors
from concept_edit.training import resume, run_steps, save_checkpoint, step_generator, step_rng
from concept_edit.worlds.shapes.oracle import HEADS, NONE, OUTPUTS, WEIGHTS, OracleNet, to_tensor
from concept_edit.worlds.shapes.world import COLORS, OBJECTS, SIZE, STYLES, Scene, _background, logo, render

log = logging.getLogger(__name__)
P_LOGO = 0.15
# Reject examples, labelled "none" where the attribute is absent or ambiguous (see `reject_example`).
P_EMPTY, P_BLEND, P_CORRUPT = 0.06, 0.08, 0.08


def render_batch(rng: np.random.Generator, n: int, *, rejects: bool = True) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """n labelled images: ~15% logos (heads ignored there, label -1), ~22% reject examples (unless
    `rejects` is False), the rest renders uniform over objects/colours/styles."""
    images, labels = [], {"object": [], "color": [], "style": [], "logo": []}
    for _ in range(n):
        u = rng.random()
        if not rejects and P_LOGO <= u < P_LOGO + P_EMPTY + P_BLEND + P_CORRUPT:
            u = 1.0 - 1e-9  # a render instead
        if u < P_LOGO:
            image, named = logo(), dict.fromkeys(HEADS, -1)
        elif u < P_LOGO + P_EMPTY + P_BLEND + P_CORRUPT:
            image, named = reject_example(rng, (u - P_LOGO) / (P_EMPTY + P_BLEND + P_CORRUPT))
        else:
            scene = _random_scene(rng)
            image, named = render(scene), _indices(scene.obj, scene.color, scene.style)
        images.append(image)
        for head in HEADS:
            labels[head].append(named[head])
        labels["logo"].append(int(u < P_LOGO))
    return np.stack(images), {k: np.array(v) for k, v in labels.items()}


def reject_example(rng: np.random.Generator, u: float) -> tuple[np.ndarray, dict[str, int]]:
    """An image that shows no single object: u in [0, 1) picks the kind.

    * empty: a background without an object (object and colour "none", the style is still there);
    * blend: two scenes with different objects mixed half and half (object "none"; colour and style
      "none" where the two differ);
    * corrupt: a render under heavy noise, or a smooth random colour field (every head "none").
    """
    cut_empty = P_EMPTY / (P_EMPTY + P_BLEND + P_CORRUPT)
    cut_blend = (P_EMPTY + P_BLEND) / (P_EMPTY + P_BLEND + P_CORRUPT)
    if u < cut_empty:
        style = STYLES[int(rng.integers(len(STYLES)))]
        image = _background(style, np.random.default_rng(int(rng.integers(2**31))))
        return np.clip(np.rint(image), 0, 255).astype(np.uint8), _indices(NONE, NONE, style)
    if u < cut_blend:
        a = _random_scene(rng)
        b = _random_scene(rng)
        while b.obj == a.obj:
            b = _random_scene(rng)
        w = rng.uniform(0.35, 0.65)
        image = w * render(a).astype(np.float32) + (1 - w) * render(b).astype(np.float32)
        color = a.color if a.color == b.color else NONE
        style = a.style if a.style == b.style else NONE
        return np.clip(np.rint(image), 0, 255).astype(np.uint8), _indices(NONE, color, style)
    if rng.random() < 0.5:
        image = render(_random_scene(rng)).astype(np.float32) + rng.normal(0, rng.uniform(90, 200), (SIZE, SIZE, 3))
    else:  # a smooth random colour field: coarse noise upsampled
        coarse = rng.uniform(0, 255, (int(rng.integers(2, 9)),) * 2 + (3,)).astype(np.uint8)
        image = np.asarray(Image.fromarray(coarse).resize((SIZE, SIZE), Image.BICUBIC), dtype=np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), _indices(NONE, NONE, NONE)


def _random_scene(rng: np.random.Generator) -> Scene:
    colors = list(COLORS)
    o, c, s = int(rng.integers(len(OBJECTS))), int(rng.integers(len(colors))), int(rng.integers(len(STYLES)))
    return Scene(OBJECTS[o], colors[c], STYLES[s], int(rng.integers(2**31)))


def _indices(obj: str, color: str, style: str) -> dict[str, int]:
    return {head: OUTPUTS[head].index(label) for head, label in zip(HEADS, (obj, color, style), strict=True)}


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
def reject_batch(rng: np.random.Generator, n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """n reject examples, in the proportions training uses (no logos)."""
    pairs = [reject_example(rng, rng.random()) for _ in range(n)]
    labels = {head: np.array([named[head] for _, named in pairs]) for head in HEADS}
    labels["logo"] = np.zeros(n, dtype=np.int64)
    return np.stack([image for image, _ in pairs]), labels


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
    parser.add_argument("--steps", type=int, default=3000)
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
    for name, (images, labels) in {
        "2000 fresh renders": render_batch(np.random.default_rng([args.seed, 10**9]), 2000, rejects=False),
        "600 fresh reject examples": reject_batch(np.random.default_rng([args.seed, 10**9 + 1]), 600),
    }.items():
        augmented = augment(to_tensor(images), torch.Generator().manual_seed(1)).permute(0, 2, 3, 1).numpy()
        for kind, shown in (("", images), (", augmented", augmented)):
            scores = {k: round(v, 4) for k, v in accuracy(net, shown, labels).items()}
            log.info("accuracy on %s%s: %s", name, kind, scores)
    weights = args.out / "oracle.safetensors"
    save_tensors(weights, net.state_dict())
    if args.ship:
        shutil.copyfile(weights, WEIGHTS)
        log.info("shipped %s", WEIGHTS)


if __name__ == "__main__":
    main()
