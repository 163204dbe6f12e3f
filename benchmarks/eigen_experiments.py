"""The eigen-direction paper's experiments, offline: iris MLP, digits CNN, ShapesSD cross-attention, attention maps.

    python benchmarks/eigen_experiments.py [--parts iris,digits,shapes,maps] [--seeds 0,1,2] [--n 16] [--json]

a) iris (Figure 1): an MLP 4-100-100-3 trained on half of iris (stratified), statistics of the last hidden layer
   on the training half; each class's top-1 direction erased in turn; change[i][j] = accuracy of class j on the
   test half after erasing class i's direction minus before (percentage points; negative = worse; the
   paper's tables print the drop as a positive number). LEACE of class i (against the rest) beside it.
   Mean over --seeds (each its own split, training and statistics); every seed's matrix is in the JSON.
b) digits (Tables 1-2, A.1-A.4): a small CNN on scikit-learn's 8x8 digits (half train, half test); erasure at
   the second conv layer's output (C x H x W flattened, as the paper treats conv maps) and at the first fully
   connected layer's output, top-1, 3 and 5; LEACE at the FC layer.
c) ShapesSD (Figure 2): "circle" erased at the cross-attention outputs of chosen layers; circle accuracy, the
   other objects' accuracy (shapes-objects, --n images each, seeds from 40000: not used elsewhere) and the
   image change against the unedited model. Layer sets: those the maps (d) show reading the object word
   (0, 4, 5 draw the circle's outline), layer 4 alone, and all seven. The method's defaults (all layers,
   k = 3) were chosen from a run with --eval-seed 5000 --n 8.
d) attention maps (Figures B.1-B.2) of "circle" and "square" as PNG grids (`concept-edit attention`).
Writes benchmarks/results/eigen_*.png; with --json prints one JSON object last:
{"iris": {"classes": [...], "change": [[...]], ...}, "digits_conv": {...}, "digits_fc": {...}, "shapes": [...]}
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from concept_edit.eigen import ActivationStatistics, erased, leace_eraser, recording, svd_eraser
from concept_edit.evaluation.metrics import format_share, wilson

RESULTS = Path(__file__).parent / "results"
SHAPES_EVAL_SEED = 40000


# -- small classifiers --------------------------------------------------------------------------------------------
def _split(x, y, seed):
    from sklearn.model_selection import train_test_split

    return train_test_split(x, y, test_size=0.5, stratify=y, random_state=seed)


def _train(model, x, y, seed, epochs, lr=1e-2):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x, y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            opt.step()
    return model.eval()


def _per_class_accuracy(model, x, y, classes, changes=()):
    with torch.no_grad(), erased(model, list(changes)):
        pred = model(torch.as_tensor(x, dtype=torch.float32)).argmax(1).numpy()
    return np.array([(pred[y == c] == c).mean() for c in classes])


def _stats(model, layer, x, y, classes, feature_dims=1):
    stats = ActivationStatistics([layer], list(classes), feature_dims=feature_dims)
    with torch.no_grad(), recording(stats, model) as rec:
        rec.labels = torch.as_tensor(y)
        model(torch.as_tensor(x, dtype=torch.float32))
    return stats


def _matrix(model, stats, layer, x, y, classes, make):
    before = _per_class_accuracy(model, x, y, classes)
    rows = [_per_class_accuracy(model, x, y, classes, [make(stats, layer, c)]) - before for c in classes]
    return 100 * np.array(rows), before


def _report(name, change, before, y, classes):
    counts = [int((y == c).sum()) for c in classes] if y is not None else None
    diag = np.diag(change)
    off = change[~np.eye(len(change), dtype=bool)]
    return {
        "classes": [str(c) for c in classes] if classes is not None else None,
        "change": np.round(change, 1).tolist(),
        "before": np.round(before, 4).tolist(),
        "test_n_per_class": counts,
        "mean_change_erased_class": round(float(diag.mean()), 1),
        "mean_change_other_classes": round(float(off.mean()), 1),
        "name": name,
    }


def iris(seed: int) -> dict:
    from sklearn.datasets import load_iris

    data = load_iris()
    x_train, x_test, y_train, y_test = _split(data.data, data.target, seed)
    mean, std = x_train.mean(0), x_train.std(0)
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 3))
    _train(model, x_train, y_train, seed, epochs=200)
    classes = [0, 1, 2]
    stats = _stats(model, "3", x_train, y_train, classes)  # the last hidden layer's activations (after its ReLU)
    out = {}
    for name, make in (
        ("top-1", lambda s, layer, c: svd_eraser(s, layer, c, 1)),
        ("leace", lambda s, layer, c: leace_eraser(s, layer, c)),
    ):
        change, before = _matrix(model, stats, "3", x_test, y_test, classes, make)
        out[name] = _report(f"iris {name}", change, before, y_test, classes)
    result = dict(out["top-1"])
    result["classes"] = list(data.target_names)
    result["leace"] = {**out["leace"], "classes": list(data.target_names)}
    return result


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = x.reshape(-1, 1, 8, 8)
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        x = nn.functional.max_pool2d(x, 2).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))


def digits(seed: int) -> dict:
    from sklearn.datasets import load_digits

    data = load_digits()
    x_train, x_test, y_train, y_test = _split(data.data / 16.0, data.target, seed)
    torch.manual_seed(seed)
    model = _train(DigitsCNN(), x_train, y_train, seed, epochs=30, lr=3e-3)
    classes = list(range(10))
    out = {}
    for site, layer, dims in (("conv", "conv2", 3), ("fc", "fc1", 1)):
        stats = _stats(model, layer, x_train, y_train, classes, feature_dims=dims)
        for k in (1, 3, 5):
            change, before = _matrix(
                model, stats, layer, x_test, y_test, classes, lambda s, la, c, k=k: svd_eraser(s, la, c, k)
            )
            report = _report(f"digits {site} top-{k}", change, before, y_test, classes)
            if k == 1:
                out[f"digits_{site}"] = report
            else:
                out[f"digits_{site}_top{k}"] = report
        if site == "fc":
            change, before = _matrix(model, stats, layer, x_test, y_test, classes, leace_eraser)
            out["digits_fc_leace"] = _report("digits fc leace", change, before, y_test, classes)
    return out


# -- ShapesSD ----------------------------------------------------------------------------------------------------
LAYER_SETS = {"4": ("4",), "0,4,5": ("0", "4", "5"), "all": ()}
# (eraser, layer set, k, centre): the paper's top-k at the layers whose maps outline the object, then wider
SHAPES_ROWS = [
    *[("svd", layers, k, False) for layers in LAYER_SETS for k in (1, 3)],
    ("svd", "all", 5, False),
    ("svd", "all", 3, True),
    *[("leace", layers, 1, False) for layers in LAYER_SETS],
]


def shapes(n: int, seed: int, eval_seed: int) -> list[dict]:
    from concept_edit import EditRequest, fit, make_config
    from concept_edit.evaluation.evaluate import evaluate
    from concept_edit.evaluation.suites import get_suite
    from concept_edit.models import load_pipeline

    pipe = load_pipeline("shapes", device="cpu")
    suite = get_suite("shapes-objects", n, eval_seed)
    base, base_images = evaluate(pipe, suite, progress=False)
    rows = [_shapes_row("unedited", "", base, "circle")]
    print(_shapes_line(rows[-1]), flush=True)
    for eraser, layers, k, centre in SHAPES_ROWS:
        svd = {"k": k, "centre": centre} if eraser == "svd" else {}  # LEACE refuses the svd-only options
        config = make_config("eigen", layers=LAYER_SETS[layers], eraser=eraser, **svd)
        edit = fit(pipe, "eigen", EditRequest(concepts=("circle",)), config, seed=seed, progress=False)
        result, _ = evaluate(pipe, suite, edits=[edit], target="circle", baseline_images=base_images, progress=False)
        label = eraser if eraser == "leace" else f"svd k={k}" + (" centred" if centre else "")
        rows.append(_shapes_row(label, layers, result, "circle"))
        print(_shapes_line(rows[-1]), flush=True)
    return rows


def _shapes_row(eraser: str, layers: str, result: dict, target: str) -> dict:
    per = result["per_concept"]
    others = [v for k, v in per.items() if k != target]
    hits, count = sum(round(v["accuracy"] * v["n"]) for v in others), sum(v["n"] for v in others)
    row = {
        "eraser": eraser,
        "layers": layers,
        "circle": {"accuracy": per[target]["accuracy"], "n": per[target]["n"], "ci95": per[target]["ci95"]},
        "others": {"accuracy": hits / count, "n": count, "ci95": list(wilson(hits, count))},
    }
    if "image_change" in result:  # mean over every prompt of the suite, against the unedited images
        row["image_change"] = result["image_change"]
    return row


def _shapes_line(row: dict) -> str:
    change = f"{row['image_change']['mean']:.3f}" if "image_change" in row else ""
    cells = (row["eraser"], row["layers"], format_share(row["circle"]), format_share(row["others"]), change)
    return "| " + " | ".join(cells) + " |"


def maps() -> list[str]:
    from concept_edit.attention_maps import attention_maps, save_attention_grid
    from concept_edit.models import load_pipeline

    pipe = load_pipeline("shapes", device="cpu")
    written = []
    prompts = (("a red circle on a striped background", "circle"), ("a blue square on a dotted background", "square"))
    for prompt, token in prompts:
        found, image = attention_maps(pipe, prompt, token, seed=0)
        path = RESULTS / f"eigen_attention_{token}.png"
        save_attention_grid(found, image, path, title=f"{token!r} in {prompt!r} (seed 0)")
        written.append(str(path.relative_to(Path(__file__).parent.parent)))
    return written


# -- output --------------------------------------------------------------------------------------------------------
CHANGE_IS = "accuracy after erasure minus before, in percentage points (negative: the class lost accuracy)"


def _mean_over_seeds(reports: list[dict]) -> dict:
    """The seeds' mean matrix (what is printed and drawn), each seed's matrix kept; test n summed over seeds."""
    changes = np.array([r["change"] for r in reports])
    out = _report(reports[0]["name"], changes.mean(0), np.mean([r["before"] for r in reports], 0), None, None)
    out["classes"] = reports[0]["classes"]
    out["test_n_per_class"] = [int(sum(col)) for col in zip(*(r["test_n_per_class"] for r in reports), strict=True)]
    out["change_sd_over_seeds"] = np.round(changes.std(0, ddof=1), 1).tolist() if len(reports) > 1 else None
    out["change_per_seed"] = [r["change"] for r in reports]
    return out


def _heatmap(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    change = np.array(report["change"])
    size = 1 + 0.45 * len(change)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    limit = max(float(np.abs(change).max()), 1.0)
    image = ax.imshow(change, cmap="RdBu", vmin=-limit, vmax=limit)
    ax.set_xticks(range(len(change)), report["classes"], rotation=45, fontsize=7)
    ax.set_yticks(range(len(change)), report["classes"], fontsize=7)
    ax.set_xlabel("accuracy change of this class (points; negative = lost)")
    ax.set_ylabel("directions erased of class")
    for i in range(len(change)):
        for j in range(len(change)):
            ax.text(j, i, f"{change[i, j]:.0f}", ha="center", va="center", fontsize=6)
    fig.colorbar(image)
    ax.set_title(report["name"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _print_matrix(report: dict) -> None:
    print(f"\n{report['name']}: {CHANGE_IS}; mean of {len(report['change_per_seed'])} seeds")
    print(f"test n per class (all seeds) {report['test_n_per_class']}; accuracy before {report['before']}")
    print("| erased \\ class | " + " | ".join(report["classes"]) + " |")
    print("|---" * (len(report["classes"]) + 1) + "|")
    for name, row in zip(report["classes"], report["change"], strict=True):
        print(f"| {name} | " + " | ".join(f"{v:+.1f}" for v in row) + " |")
    print(f"mean change: erased class {report['mean_change_erased_class']:+.1f}, "
          f"other classes {report['mean_change_other_classes']:+.1f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="iris,digits,shapes,maps")
    parser.add_argument("--seeds", default="0,1,2", help="iris/digits: data split and training seeds (mean shown)")
    parser.add_argument("--seed", type=int, default=0, help="ShapesSD statistics seed")
    parser.add_argument("--n", type=int, default=16, help="ShapesSD images per object")
    parser.add_argument("--eval-seed", type=int, default=SHAPES_EVAL_SEED, help="first ShapesSD suite seed")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    parts = args.parts.split(",")
    RESULTS.mkdir(exist_ok=True)
    seeds = [int(x) for x in args.seeds.split(",")]
    out: dict = {"seeds": seeds, "shapes_seed": args.seed, "change_is": CHANGE_IS}
    matrices = {}
    if "iris" in parts:
        runs = [iris(seed) for seed in seeds]
        out["iris"] = _mean_over_seeds(runs)
        out["iris"]["leace"] = _mean_over_seeds([r["leace"] for r in runs])
        matrices["iris"] = out["iris"]
        matrices["iris_leace"] = out["iris"]["leace"]
    if "digits" in parts:
        runs = [digits(seed) for seed in seeds]
        for name in runs[0]:
            out[name] = matrices[name] = _mean_over_seeds([r[name] for r in runs])
    for name, report in matrices.items():
        _print_matrix(report)
        _heatmap(report, RESULTS / f"eigen_{name}.png")
    if "maps" in parts:
        out["attention_maps"] = maps()
    if "shapes" in parts:
        print("\n| eraser | layers | circle | other objects | image change |\n|---|---|---|---|---|")
        out["shapes"] = shapes(args.n, args.seed, args.eval_seed)
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
