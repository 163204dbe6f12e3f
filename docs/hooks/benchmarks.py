"""mkdocs hook: benchmark tables and figures generated from benchmarks/results/*.json at build time.

No number on a benchmark page is typed by hand:

* `<!-- benchmark: NAME -->` on its own line becomes the command that produced the results, a link to the
  JSON, and the table(s) that `TABLES[NAME]` builds from it;
* `{{ NAME }}` inside a sentence becomes one value from `VALUES[NAME]`, read from the JSON the same way.

The result files (JSON, logs, PNG figures) are copied into the site under `results/`, so a page links them
as `../results/FILE` (from a page one folder down). An unknown name, a missing file or key is a build error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

RESULTS = Path("benchmarks") / "results"
SITE_DIR = "results"
PLACEHOLDER = re.compile(r"^<!--[ \t]*benchmark:[ \t]*(?P<name>[\w.-]+)[ \t]*-->[ \t]*$", re.MULTILINE)
VALUE = re.compile(r"\{\{\s*(?P<name>[\w.-]+)\s*\}\}")
_root = Path(".")


# -- reading and formatting ----------------------------------------------------------------------------------
@cache
def load(name: str) -> dict:
    path = _root / RESULTS / name
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PluginError(f"benchmarks hook: cannot read {path}: {exc}") from exc


def ci(interval) -> str:
    return f"[{interval[0]:.2f}, {interval[1]:.2f}]"


def share(d: dict, counts: bool = False) -> str:
    """0.06 [0.01, 0.28], optionally with (k/n): an accuracy dict {accuracy, n, ci95}."""
    text = f"{d['accuracy']:.2f} {ci(d['ci95'])}"
    return text + f" ({kn(d)})" if counts else text


def kn(d: dict) -> str:
    if "successes" in d:
        return f"{d['successes']}/{d['n']}"
    return f"{round(d['accuracy'] * d['n'])}/{d['n']}"


def rate(d: dict, counts: bool = True) -> str:
    """A probe rate {rate, n, successes, ci95}: 0.81 [0.57, 0.93] (13/16)."""
    text = f"{d['rate']:.2f} {ci(d['ci95'])}"
    return text + f" ({d['successes']}/{d['n']})" if counts else text


def size(n_bytes: int) -> str:
    if n_bytes >= 1024**2:
        return f"{n_bytes / 1024**2:.1f} MB"
    return f"{n_bytes / 1024:.0f} KB"


def gb(n_bytes: int) -> str:
    return f"{n_bytes / 1e9:.2f} GB"


def table(header: list[str], rows: list[list]) -> str:
    def cell(value) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def source(command: str | list[str], *files: str) -> str:
    """The command(s) that wrote the results, and links to the files."""
    commands = [command] if isinstance(command, str) else command
    block = "```bash\n" + "\n".join(commands) + "\n```"
    links = ", ".join(f"[`{f}`](../{SITE_DIR}/{f})" for f in files)
    return f"{block}\n\nResults: {links}."


# -- the tables ----------------------------------------------------------------------------------------------
ERASURE_METHODS = ("uce", "esd-x", "esd-u", "cad", "amnesia", "eigen", "rece", "advunlearn", "advunlearn-x",
                   "advunlearn-x-reg", "advunlearn-x-null", "advunlearn-x-null-6e-4", "advunlearn-te-held",
                   "advunlearn-kv")
PROBED = ("paraphrase", "soft-prompt", "ring-a-bell")  # the probe runs of benchmarks/results/probe_*.json
ATTACKS = ("paraphrase", "soft-prompt", "soft-prompt-16", "unlearndiff", "random-prefix", "ring-a-bell",
           "concept-inversion")


def erasure_rows() -> list[dict]:
    rows = load("erasure_table.json")["rows"]
    concepts = list(dict.fromkeys(r["concept"] for r in rows))
    order = {m: i for i, m in enumerate(ERASURE_METHODS)}
    return sorted(rows, key=lambda r: (concepts.index(r["concept"]), order.get(r["method"], 99), r["method"]))


def _attack_cell(row: dict, attack: str) -> str:
    result = row.get("attacks", {}).get(attack)
    if result is None:
        return "–"
    if "refused" in result:
        return "refused"
    plain = result["edited_no_attack"]
    return f"{result['successes']}/{result['n']} ({plain['successes']}/{plain['n']})"


def erasure_table() -> str:
    rows = []
    for r in erasure_rows():
        rows.append(
            [
                r["concept"],
                r["method"],
                f"{kn(r['target_before'])} → **{kn(r['target'])} {ci(r['target']['ci95'])}**",
                f"{kn(r['others'])} {ci(r['others']['ci95'])}",
                f"{kn(r['paraphrase'])} {ci(r['paraphrase']['ci95'])}" if "paraphrase" in r else "–",
                f"{r['frechet_to_renders']:.1f}",
                f"{r['image_change']['mean']:.3f}",
                *(_attack_cell(r, a) for a in ATTACKS),
                f"{r['fit_s']:.0f}",
                size(r["edit_bytes"]),
            ]
        )
    header = [
        "concept",
        "method",
        "target before → after",
        "others after",
        "synonyms",
        "Frechet to renders",
        "image change",
        *ATTACKS,
        "fit s",
        "edit",
    ]
    return source("python benchmarks/erasure_table.py --json", "erasure_table.json", "erasure_table.log") + (
        "\n\n" + table(header, rows)
    )


def erasure_summary() -> str:
    """The compact form the README repeats: concept drawn after each method's edit, k of n."""
    rows = erasure_rows()
    concepts = list(dict.fromkeys(r["concept"] for r in rows))
    cells = {(r["concept"], r["method"]): r for r in rows}
    out = []
    for method in ERASURE_METHODS:
        line = [method]
        for concept in concepts:
            r = cells.get((concept, method))
            line.append(f"{kn(r['target'])}" if r else "–")
        out.append(line)
    header = ["method", *(f"{c} (before: {kn(cells[(c, 'uce')]['target_before'])})" for c in concepts)]
    return source("python benchmarks/erasure_table.py --json", "erasure_table.json") + "\n\n" + table(header, out)


PROBE_EDITS = {"uce": "UCE", "esd": "ESD-x"}


def probe_table() -> str:
    rows = []
    for edit, label in PROBE_EDITS.items():
        for attack in PROBED:
            d = load(f"probe_{edit}_circle_{attack}.json")
            p = d["protocol"]
            headline = rate(
                {"rate": d["attack_success_rate"], "n": d["n"], "successes": d["successes"], "ci95": d["ci95"]}
            )
            level = d["prompt_level"]
            rows.append(
                [
                    label,
                    f"{attack} ({p['budget']} {p['budget_unit']})",
                    f"**{headline}**" + (" at fresh seeds" if attack == "soft-prompt" else ""),
                    f"{level['prompts']} prompts, {ci(level['ci95_prompt_level'])}",
                    rate(d["given_unedited"]),
                    rate(d["edited_no_attack"]),
                    rate(d["unedited"]),
                    f"{d['seconds']:.0f} s",
                ]
            )
    header = [
        "edit",
        "attack (budget)",
        "attack success [95% CI] (k/n)",
        "distinct prompts, prompt-level CI",
        "where the unedited model draws it",
        "same edit, no attack",
        "unedited, plain prompt",
        "time",
    ]
    files = [f"probe_{e}_circle_{a}.json" for e in PROBE_EDITS for a in PROBED]
    commands = [
        "concept-edit edit uce --model shapes --concept circle --out edits/uce-circle",
        "concept-edit edit esd --model shapes --concept circle --schedule pool --batch-size 4 --lr 1e-3 "
        "--iterations 300 --out edits/esd-circle",
        "concept-edit probe --model shapes --edit edits/uce-circle --concept circle --attack ATTACK --out probe.json",
        "concept-edit probe --model shapes --edit edits/esd-circle --concept circle --attack ATTACK --out probe.json",
    ]
    soft = []
    for edit, label in PROBE_EDITS.items():
        d = load(f"probe_{edit}_circle_soft-prompt.json")
        soft.append(
            [
                label,
                f"{d['attack_success_rate']:.2f} ({d['successes']}/{d['n']})",
                f"{d['best_of_k_success_rate']:.2f} (k = {d['best_of_k']})",
                f"{d['discrete_success_rate']:.2f} ({round(d['discrete_success_rate'] * d['n'])}/{d['n']})",
                f"{d['fresh_plain_success_rate']:.2f}",
            ]
        )
    soft_header = [
        "edit",
        "found prefix, fresh seeds (headline)",
        "search's own best-of-k read",
        "nearest-token text prompt, fresh seeds",
        "plain prompt, fresh seeds",
    ]
    return (
        source(commands, *files)
        + "\n\n"
        + table(header, rows)
        + "\n\nThe soft-prompt runs in more detail:\n\n"
        + table(soft_header, soft)
    )


def probe_budget() -> str:
    rows = []
    for budget in (5, 10, 20, 200):
        suffix = "" if budget == 200 else f"_budget{budget}"
        d = load(f"probe_esd_circle_soft-prompt{suffix}.json")
        rows.append(
            [
                f"{d['protocol']['budget']} steps",
                f"**{d['attack_success_rate']:.2f}** {ci(d['ci95'])} ({d['successes']}/{d['n']})",
                f"{d['best_of_k_success_rate']:.2f} (k = {d['best_of_k']})",
                f"{d['seconds']:.0f} s",
            ]
        )
    files = [f"probe_esd_circle_soft-prompt_budget{b}.json" for b in (5, 10, 20)]
    command = (
        "concept-edit probe --model shapes --edit edits/esd-circle --concept circle --attack soft-prompt "
        "--budget B --out probe.json"
    )
    header = ["budget", "attack success at fresh seeds", "search's best-of-k read", "time"]
    return source(command, *files) + "\n\n" + table(header, rows)


def edit_apply() -> str:
    d = load("edit_apply.json")
    rows = []
    for r in d["rows"]:
        path = "concept-edit (lazy, in place)" if r["path"] == "concept-edit" else f"{r['path']}"
        rows.append(
            [
                path,
                r["dtype"],
                gb(r["model_bytes"]),
                gb(r["file_bytes"]),
                gb(r["peak_extra_bytes"]),
                f"**{r['ratio']:.2f}**" if r["path"] == "concept-edit" else f"{r['ratio']:.2f}",
                f"{r['apply_s']:.1f}",
                f"{r['revert_s']:.1f}",
                "yes" if r["revert_exact"] else "**no**",
            ]
        )
    header = ["path", "UNet dtype", "model", "edit file", "peak extra", "extra / model", "apply (s)", "revert (s)"]
    header.append("revert exact")
    return source("python benchmarks/edit_apply.py --baseline --json", "edit_apply.json") + "\n\n" + table(header, rows)


def _uce_speed_rows(d: dict) -> list[list]:
    rows = []
    for r in d["rows"]:
        rows.append(
            [
                r["concepts"],
                r["preserved"],
                f"{r['solve_s']:.3f}",
                f"{r['solve_float32_s']:.3f}",
                f"{r['encode_padded_s']:.1f}",
                f"{r['encode_s']:.1f}",
                f"{r['total_padded_s']:.1f}",
                f"{r['total_s']:.1f}",
                f"{r['speedup']:.1f}",
            ]
        )
    base = d["baseline"]
    rows.append(
        [f"official-style loop, {base['concepts']} + {base['preserved']}", "", f"{base['official_loop_s']:.1f}"]
        + [""] * 6
    )
    return rows


UCE_SPEED_HEADER = [
    "concepts",
    "preserved",
    "solve, float64 (s)",
    "solve, float32 (s)",
    "encoding, 77-padded (s)",
    "encoding, ours (s)",
    "total, 77-padded (s)",
    "total, ours (s)",
    "speedup",
]


def uce_speed() -> str:
    command = "OMP_NUM_THREADS=1 python benchmarks/uce_speed.py --baseline --tokenizer <CLIP-L tokenizer> --json"
    return source(command, "uce_speed.json") + "\n\n" + table(UCE_SPEED_HEADER, _uce_speed_rows(load("uce_speed.json")))


def uce_speed_wholewords() -> str:
    command = "OMP_NUM_THREADS=1 python benchmarks/uce_speed.py --baseline --json"
    d = load("uce_speed_wholewords.json")
    return source(command, "uce_speed_wholewords.json") + "\n\n" + table(UCE_SPEED_HEADER, _uce_speed_rows(d))


def shapes_quality() -> str:
    d = load("shapes_quality.json")
    m, bars = d["measured"], d["bars"]
    rows = [
        ["held-out object/colour/style combinations: object", f"{m['held-out object']:.3f}"],
        ["held-out combinations: colour", f"{m['held-out colour']:.3f}"],
        ["held-out combinations: style", f"{m['held-out style']:.3f}"],
        ["seen combinations: object / colour / style", " / ".join(f"{d['seen'][k]:.3f}" for k in d["seen"])],
        ['"a heart" (no colour) comes out red', f"{m['heart is red']:.3f}"],
        ['"a star" (no colour) comes out yellow', f"{d['star_is_yellow']:.3f}"],
        ['"the acme logo" detected', f"{m['logo detected']:.3f}"],
        ["diamond, drawn as asked", f"{d['diamond']['accuracy']:.2f} {ci(d['diamond']['ci95'])}"],
        ["the other seven objects", f"{d['other_objects']['accuracy']:.2f} {ci(d['other_objects']['ci95'])}"],
    ]
    bar_of = {
        0: "held-out object",
        1: "held-out colour",
        2: "held-out style",
        4: "heart is red",
        6: "logo detected",
    }
    for i, row in enumerate(rows):
        key = bar_of.get(i)
        row.append(f">= {bars[key]} ({'met' if d['passed'][key] else '**not met**'})" if key else "")
    return (
        source("python benchmarks/shapes_quality.py --json", "shapes_quality.json")
        + f"\n\n{d['n']} seeds per prompt from seed {d['seed']}.\n\n"
        + table(["check", "oracle reads", "bar"], rows)
    )


def uce_logo() -> str:
    d = load("uce_shapes_logo.json")["logo"]
    rows = [
        [
            "unedited",
            share(d["detected_before"]),
            f"{d['controls_before']:.2f}",
            f"{d['the_controls_before']:.2f}",
        ]
    ]
    names = {"last": "`--tokens last` (the paper's)", "trailing": "`--tokens trailing`", "all": "`--tokens all`"}
    for key, label in names.items():
        r = d[key]
        rows.append([label, share(r["detected_after"]), f"{r['controls_after']:.2f}", f"{r['the_controls_after']:.2f}"])
    header = [
        f"token alignment (logo n = {d['n_logo']})",
        "logo detected",
        f"control objects (n = {d['n_controls']})",
        f'"the &lt;object&gt;" controls (n = {d["n_the_controls"]})',
    ]
    return (
        source("python benchmarks/uce_shapes.py --parts logo --json", "uce_shapes_logo.json")
        + "\n\n"
        + table(header, rows)
    )


def _deviation(d: dict) -> str:
    return f"{d['mean']:.2f} {ci(d['ci95'])}"


def uce_debias() -> str:
    d = load("uce_shapes_debias.json")["debias"]
    best = d["best_on_tuning_seeds"]
    un = d["unedited"]
    rows = [
        [
            "unedited",
            "",
            "",
            f"{un['tune']['deviation']['mean']:.2f}",
            f"{un['report']['deviation']['mean']:.2f}",
            share(un["report"]["shares"]["red"]),
            share(un["report"]["heart_drawn"]),
        ]
    ]
    for r in d["rows"]:
        step = "first step" if r["controller"] == "secant" else "η"
        label = f"`{r['variant']}`, {r['tokens']}, {r['controller']} ({step} {r['step']:g})"
        cells = [
            label,
            "yes" if r["reached"] else "no",
            r["generations"],
            _deviation(r["tune"]["deviation"]),
            _deviation(r["report"]["deviation"]),
            share(r["report"]["shares"]["red"]),
            share(r["report"]["heart_drawn"]),
        ]
        if r["name"] == best:
            cells = [f"**{c}**" if i in (0, 1, 2) else c for i, c in enumerate(cells)]
            cells[0] += " **(the default)**"
        rows.append(cells)
    header = [
        "configuration (`--debias-variant`, `--tokens`, controller)",
        "reached",
        "images generated",
        "Δ tuning seeds",
        "Δ report seeds",
        "red hearts, report",
        "heart drawn, report",
    ]
    chosen = next(r for r in d["rows"] if r["name"] == best)
    free = ", ".join(f"{c} {n}" for c, n in sorted(chosen["report"]["free_colour"].items(), key=lambda x: -x[1]))
    return (
        source(
            "python benchmarks/uce_shapes.py --parts debias --json", "uce_shapes_debias.json", "uce_shapes_debias.log"
        )
        + "\n\n"
        + f"Concept {d['concept']!r}, attributes {', '.join(d['attributes'])}; {d['images_per_measurement']} images "
        f"per loop measurement on loop seeds {d['loop_seeds'][0]}–{d['loop_seeds'][1]}, at most "
        f"{d['max_iterations']} iterations, tolerance {d['tolerance']}; tuning seeds {d['tune_seeds'][0]}–"
        f"{d['tune_seeds'][1]}, report seeds {d['report_seeds'][0]}–{d['report_seeds'][1]} "
        f"(n = {un['report']['n']} per cell).\n\n"
        + table(header, rows)
        + f"\n\nThe oracle's free reading (all colours) of the default's report images: {free} "
        f"(of {chosen['report']['n']})."
    )


def uce_square_where() -> str:
    d = load("uce_square.json")["where"]
    columns = list(next(iter(d.values())))
    rows = [
        [obj, *(share(cells[c]) if c == "both" else f"{cells[c]['accuracy']:.2f}" for c in columns)]
        for obj, cells in d.items()
    ]
    header = ["object", *(f"{c} replaced" if c != "none" else "nothing replaced" for c in columns)]
    return (
        source("python benchmarks/uce_square.py --json", "uce_square.json", "uce_square.log")
        + "\n\n"
        + table(header, rows)
    )


def uce_square_prefix() -> str:
    d = load("uce_square_prefix.json")["prefix"]
    objects = sorted({k for v in d.values() for k in v if k != "n"})
    rows = [[f'"{prompt}"', *(v.get(o, 0) for o in objects), v["n"]] for prompt, v in d.items()]
    return (
        source("python benchmarks/uce_square.py --parts prefix --json", "uce_square_prefix.json")
        + "\n\n"
        + table(["prompt", *objects, "n"], rows)
    )


def uce_square_tuning() -> str:
    d = load("uce_square.json")
    objects = list(next(iter(d["tuning"].values()))["rows"])
    rows = []
    for setting, v in d["tuning"].items():
        mark = " (chosen)" if setting == d["chosen"] else ""
        rows.append(
            [
                f"`{setting}`{mark}",
                *(f"{v['rows'][o]['target']['accuracy']:.2f}" for o in objects),
                f"{v['target_mean']:.2f}",
                f"{v['others_drop_max']:.2f}",
            ]
        )
    header = ["`--tokens`/erase scale", *objects, "mean", "worst drop of the others"]
    return (
        source("python benchmarks/uce_square.py --json", "uce_square.json")
        + f"\n\nTuning seeds {d['tune_seed']}+, n = {d['tune_n']} per object; each object erased alone.\n\n"
        + table(header, rows)
    )


def uce_square_report() -> str:
    d = load("uce_square.json")
    report = d["report"][d["chosen"]]["rows"]
    objects = list(report)
    row1 = ["erased share", *(share(report[o]["target"]) for o in objects)]
    row2 = [
        "others, before → after",
        *(f"{report[o]['others_before']:.2f} → {report[o]['others']:.2f}" for o in objects),
    ]
    row3 = ['read as "none"', *(f"{report[o]['none_share']:.2f}" for o in objects)]
    return f"Report seeds 0+, n = {d['n']} per object, setting `{d['chosen']}`:\n\n" + table(
        ["object", *objects], [row1, row2, row3]
    )


def esd_speed() -> str:
    loops = {
        "official-trained": "official-trained (CompVis)",
        "ours": "**ours (defaults: stream)**",
        "ours-frozen": "ours, `--sampler frozen`",
        "ours-pool": "ours, `--schedule pool`",
    }
    k25, k50 = load("esd_speed.json"), load("esd_speed_k50.json")

    def per_seed(loop: dict) -> str:
        return ", ".join(f"{r['time_to_quality_s']:.1f}" for r in loop["runs"])

    rows = []
    for key, label in loops.items():
        a, b = k25["loops"][key], k50["loops"][key]
        base_a, base_b = k25["loops"]["official-trained"], k50["loops"]["official-trained"]
        rows.append(
            [
                label,
                f"{a['samples_to_quality']:.0f}",
                f"{a['time_to_quality_s']:.1f} ({per_seed(a)})",
                f"{base_a['time_to_quality_s'] / a['time_to_quality_s']:.1f}x",
                f"{a['samples_per_s']:.1f}",
                f"{a['others_accuracy']:.2f}",
                f"{b['samples_to_quality']:.0f}",
                f"{b['time_to_quality_s']:.1f} ({per_seed(b)})",
                f"{base_b['time_to_quality_s'] / b['time_to_quality_s']:.1f}x",
            ]
        )
    header = [
        "loop",
        f"K = {k25['sampling_steps']}: samples to quality",
        "time to quality, s (per seed)",
        "against CompVis",
        "samples/s",
        f"others at the stop (n = {k25['loops']['ours']['others_n']})",
        f"K = {k50['sampling_steps']}: samples",
        "time, s (per seed)",
        "against CompVis",
    ]
    command = (
        "python benchmarks/esd_speed.py --loops official-trained,ours,ours-frozen,ours-pool --rung 25 "
        "--max-samples 800 --json"
    )
    return (
        source([command, command + " --sampling-steps 50"], "esd_speed.json", "esd_speed_k50.json")
        + f"\n\nQuality: circle read in <= {k25['quality']:.0%} of {k25['n']} circle prompts (seeds "
        f"{k25['eval_seed']}+); medians over training seeds {', '.join(map(str, k25['training_seeds']))}.\n\n"
        + table(header, rows)
    )


def esd_quality() -> str:
    d = load("esd_quality.json")
    labels = {
        "esd-x": "ESD-x",
        "uce-object": "UCE",
        "esd-u": "ESD-u",
        "esd-x-style": "ESD-x",
        "uce-style": "UCE",
    }
    rows = []
    for key, label in labels.items():
        r = d["rows"][key]
        main = r.get("objects") if "styles" not in r else r["styles"]
        concept = r["concept"]
        if "styles" in r:
            wording = f'"on stripes" {share(r["stripes"]["after"]["target"])}'
            before, after = r["objects"]["before"]["others"], r["objects"]["after"]["others"]
            objects = f"{before['accuracy']:.2f} → {after['accuracy']:.2f}"
        else:
            wording = f"synonyms {share(r['paraphrase']['after']['per_concept'][concept])}"
            objects = "(this suite)"
        rows.append(
            [
                f'{label} "{concept}"',
                f"{r['fit_s']:.1f}",
                share(main["before"]["target"]),
                f"**{share(main['after']['target'], counts=True)}**",
                f"{main['before']['others']['accuracy']:.2f} (n = {main['before']['others']['n']})",
                share(main["after"]["others"]),
                wording,
                objects,
            ]
        )
    header = [
        "edit",
        "fit (s)",
        "concept drawn before",
        "after",
        "others before",
        "others after",
        "other wordings of the concept, after",
        "objects before → after",
    ]
    return (
        source("python benchmarks/esd_quality.py --json", "esd_quality.json", "esd_quality.log")
        + f"\n\nn = {d['n']} images per concept on suite seeds {d['seed']}+, training seed {d['train_seed']}.\n\n"
        + table(header, rows)
    )


def cad_speed() -> str:
    d = load("cad_speed.json")
    rows = []
    for steps, r in d["by_steps"].items():
        rows.append(
            [
                steps,
                f"{r['official']['median_s']:.1f}",
                f"{r['ours']['median_s']:.2f}",
                f"**{r['speedup']:.1f}x**",
                f"{r['relative_difference']:.1e}",
                f"{r['official']['peak_rss_mb'] - r['official']['rss_after_load_mb']:.0f} / "
                f"{r['ours']['peak_rss_mb'] - r['ours']['rss_after_load_mb']:.0f}",
            ]
        )
    header = [
        "DDIM steps K",
        "official (s)",
        "ours (s)",
        "speedup",
        "max |score difference| / max |score|",
        "RSS above the loaded model: official / ours (MB)",
    ]
    return (
        source("python benchmarks/cad_speed.py --json", "cad_speed.json")
        + f"\n\nConcept {d['concept']!r}, modules {', '.join(d['modules'])}, medians of {d['repeats']} runs.\n\n"
        + table(header, rows)
    )


def cad_check() -> str:
    d = load("cad_quality.json")
    rows = [
        [
            mode,
            f"{d[f'{mode}_check']['subsets']} subsets of {d[f'{mode}_check']['subset_size']} weights",
            f"**{d[f'{mode}_pearson_r']:.3f}**",
        ]
        for mode in ("erase", "amplify")
    ]
    header = ["objective", "random ablations", "Pearson r, predicted vs actual change of J"]
    return source("python benchmarks/cad_quality.py --json", "cad_quality.json") + "\n\n" + table(header, rows)


def amnesia_speed() -> str:
    d = load("amnesia_speed.json")
    s = d["seconds_per_sample"]
    official = s["official"]
    rows = [
        ["official loop: a batch-1 forward per timestep (`ddpm_fim.py`)", f"{official:.1f}", "1x"],
        [
            f"ours, all T = {d['timesteps_total']}, timesteps batched (the same estimator)",
            f"{s['ours_all']:.1f}",
            f"{official / s['ours_all']:.1f}x",
        ],
        [
            f"ours, S = {d['timesteps_subsampled']} stratified timesteps scaled by T/S (ShapesSD's default)",
            f"{s['ours_subsampled']:.2f}",
            f"**{official / s['ours_subsampled']:.1f}x**",
        ],
    ]
    sub = d["subsampled_vs_all"]
    return (
        source("python benchmarks/amnesia_speed.py --samples 3 --json", "amnesia_speed.json")
        + f"\n\nModel {d['model']!r}, {d['samples']} samples, parameter group {d['parameter_group']!r}, "
        f"{d['threads']} thread.\n\n"
        + table(["estimator", f"seconds per sample (median of {d['samples']})", "vs official"], rows)
        + "\n\n"
        + table(
            ["S-subsampled F against all-T F", "value"],
            [
                ["relative L1 difference", f"{sub['relative_l1_error']:.1%}"],
                ["total, ratio", f"{sub['mean_ratio']:.3f}"],
                ["Pearson r of log F", f"{sub['log_pearson_r']:.3f}"],
                ["top 1% of weights in common", f"{sub['top1pct_overlap']:.0%}"],
                [
                    "same estimator, max relative difference to the official loop",
                    f"{d['same_estimator_max_relative_difference']:.0e}",
                ],
            ],
        )
    )


def _digits_row(r: dict) -> list:
    b, a = r["before"], r["after"]
    return [
        r["model"],
        f"{r['lam']:g}",
        f"{r['steps']}",
        "yes" if r.get("gamma", 1.0) else "no",
        f"{b['p_forgotten']['mean']:.3f} → **{a['p_forgotten']['mean']:.3f}** "
        f"[{a['p_forgotten']['ci95'][0]:.3f}, {a['p_forgotten']['ci95'][1]:.3f}]",
        f"{a['entropy']['mean']:.2f}",
        share(a["read_as_forgotten"]),
        f"{b['remembered_accuracy']['accuracy']:.2f} → {share(a['remembered_accuracy'])}",
        f"{b['frechet_remembered']:.1f} → {a['frechet_remembered']:.1f}",
        f"{r['fit_s']:.0f} s",
    ]


DIGITS_HEADER = [
    "model",
    "λ",
    "steps",
    "replay",
    "P(y=0 | x) before → after",
    "entropy after (max 2.30)",
    'read as "0" after',
    "remembered read right, before → after",
    "Frechet remembered, before → after",
    "fit",
]


def amnesia_digits() -> str:
    vae = [r for r in load("amnesia_quality.json")["rows"] if r["model"] != "shapes"]
    ddpm = load("amnesia_quality_ddpm.json")["rows"]
    commands = "python benchmarks/amnesia_quality.py --json"
    n = load("amnesia_quality.json")["n"]
    return (
        source(commands, "amnesia_quality.json", "amnesia_quality_ddpm.json")
        + f'\n\nn = {n} samples drawn for "0", training seed {load("amnesia_quality.json")["train_seed"]}.\n\n'
        + table(DIGITS_HEADER, [_digits_row(r) for r in vae + ddpm])
    )


def amnesia_digits_official() -> str:
    rows = load("amnesia_quality_ddpm_official.json")["rows"]
    command = (
        "python benchmarks/amnesia_quality.py --rows digits-ddpm,digits-ddpm-nogr --set lam=10 --set steps=2000 "
        "--set lr=1e-4 --json"
    )
    return (
        source(command, "amnesia_quality_ddpm_official.json")
        + "\n\n"
        + table(DIGITS_HEADER, [_digits_row(r) for r in rows])
    )


def amnesia_surrogates() -> str:
    d = load("amnesia_surrogate_tuning.json")
    rows = [
        [
            r["surrogate"],
            r["train_seed"],
            r["suite_seed"],
            f"{kn(r['circle_after'])} {ci(r['circle_after']['ci95'])}",
            f"{r['others_before']['accuracy']:.2f} → {share(r['others_after'])}",
        ]
        for r in d["rows"]
    ]
    header = ["surrogate", "training seed", "suite seeds from", "circle drawn after", "other objects before → after"]
    return source(d["command"], "amnesia_surrogate_tuning.json") + "\n\n" + table(header, rows)


def _matrix(block: dict) -> str:
    classes = block["classes"]
    rows = []
    for i, (name, changes) in enumerate(zip(classes, block["change"], strict=True)):
        rows.append([name, *(f"**{v:+.1f}**" if j == i else f"{v:+.1f}" for j, v in enumerate(changes))])
    return table(["erased \\ class", *classes], rows)


def eigen_iris() -> str:
    d = load("eigen_experiments.json")
    iris = d["iris"]
    return (
        source("python benchmarks/eigen_experiments.py --parts iris,digits --json", "eigen_experiments.json")
        + f"\n\nSeeds {', '.join(map(str, d['seeds']))}; test n per class {iris['test_n_per_class'][0]}. "
        f"Top-1 direction:\n\n" + _matrix(iris) + "\n\nLEACE:\n\n" + _matrix(iris["leace"])
    )


DIGITS_BLOCKS = {
    "conv output (C x H x W as one vector)": ("digits_conv", "digits_conv_top3", "digits_conv_top5", None),
    "first FC output": ("digits_fc", "digits_fc_top3", "digits_fc_top5", "digits_fc_leace"),
}


def eigen_digits() -> str:
    d = load("eigen_experiments.json")
    rows = []
    for where, keys in DIGITS_BLOCKS.items():
        cells = []
        for key in keys:
            if key is None:
                cells.append("")
                continue
            b = d[key]
            cells.append(f"{b['mean_change_erased_class']:+.1f} / {b['mean_change_other_classes']:+.1f}")
        rows.append([where, *cells])
    return table(["where", "top-1", "top-3", "top-5", "LEACE"], rows)


def eigen_digits_matrices() -> str:
    d = load("eigen_experiments.json")
    parts = []
    for key, title in (
        ("digits_conv", "conv output, top-1"),
        ("digits_fc", "first FC output, top-1"),
        ("digits_fc_leace", "first FC output, LEACE"),
    ):
        parts.append(f"{title}:\n\n{_matrix(d[key])}")
    return "\n\n".join(parts)


def eigen_figures() -> str:
    figures = [
        ("eigen_iris.png", "iris, top-1"),
        ("eigen_iris_leace.png", "iris, LEACE"),
        ("eigen_digits_conv.png", "digits conv output, top-1"),
        ("eigen_digits_fc.png", "digits first FC output, top-1"),
        ("eigen_digits_fc_leace.png", "digits first FC output, LEACE"),
    ]
    return "\n\n".join(f"![{alt}](../{SITE_DIR}/{name}){{ loading=lazy width=420 }}" for name, alt in figures)


def rece_tuning() -> str:
    """RECE's rounds on the tuning seeds: the target, the others and each attack per round count."""
    d = load("rece_tuning.json")
    attacks = list(d["rows"][0]["attacks"]) if d["rows"] else []
    unedited = ["unedited", rate(d["unedited"]["target"]), rate(d["unedited"]["others"]), *["" for _ in attacks]]
    rows = [unedited] + [
        [f"{r['rounds']} rounds", rate(r["target"]), rate(r["others"]), *(rate(r["attacks"][a]) for a in attacks)]
        for r in d["rows"]
    ]
    header = ["RECE", "circle drawn", "other objects drawn", *(f"{a} success" for a in attacks)]
    note = f"ShapesSD, n {d['n']} per object and per attack, tuning seeds from {d['seed']}."
    return (source("python benchmarks/rece_tuning.py --json", "rece_tuning.json", "rece_tuning.log") + "\n\n"
            + note + "\n\n" + table(header, rows))  # fmt: skip


def defence_tuning(method: str, name: str, target: str = "circle") -> str:
    """A defence's candidate options on the tuning seeds (`benchmarks/defence_tuning.py`): the target, the others,
    each attack, fit time. Later runs at another n carry their own unedited figures (`unedited` in the row): a
    line for it precedes them."""
    d = load(f"{name}.json")
    attacks = list(dict.fromkeys(a for r in d["rows"] for a in r["attacks"]))
    retain = {"others": "the other objects' names", "none": "the world's captions"}

    def unedited(figures: dict, n: int) -> list[str]:
        return ["", f"unedited (n {n})", "", rate(figures["target"]), rate(figures["others"]),
                *("" for _ in attacks), ""]  # fmt: skip

    rows, shown = [unedited(d["unedited"], d["n"])], d["unedited"]
    for r in d["rows"]:
        if r.get("unedited", shown) != shown:
            shown = r["unedited"]
            rows.append(unedited(shown, r["n"]))
        rows.append(
            [r.get("run", ""), (", ".join(f"{k} {v}" for k, v in r["options"].items()) or "defaults")
             + (f"; then {r['then']} fitted on top" if "then" in r else "")
             + (f" (training seed {r['train_seed']})" if r.get("train_seed") is not None else ""),
             retain[r["preserve"]],
             rate(r["target"]), rate(r["others"]), *(rate(r["attacks"][a]) if a in r["attacks"] else "–"
                                                     for a in attacks),
             "–" if r["fit_s"] is None else f"{r['fit_s']:.0f}"]
        )  # fmt: skip
    header = ["run", "options", "retain set", f"{target} drawn", "other objects drawn",
              *(f"{a} success" for a in attacks), "fit s"]  # fmt: skip
    note = (f"ShapesSD, n {d['n']} per object and per attack unless a row says otherwise, suite and attack seeds "
            f"from {d['seed']}, training seed {d['train_seed']}; fit times on one thread beside other runs. "
            f"{d['note']}.")
    return (source(f"python benchmarks/defence_tuning.py --method {method} --configs '...' --json",
                   f"{name}.json", f"{name}.log") + "\n\n" + note + "\n\n" + table(header, rows))  # fmt: skip


def advunlearn_tuning() -> str:
    return defence_tuning("advunlearn", "advunlearn_tuning")


def amnesia_adversarial_tuning() -> str:
    return defence_tuning("amnesia", "amnesia_adversarial_tuning")


def attack_budgets() -> str:
    """Each attack's success at each budget on the tuning seeds (the evidence for the table's budgets)."""
    d = load("attack_budgets.json")
    rows = [[r["attack"], str(r["budget"]), rate(r), rate(r["without_attack"]), f"{r['seconds']:.0f}"]
            for r in d["rows"]]  # fmt: skip
    header = ["attack", "budget (steps)", "success", "same prompts, no attack", "seconds"]
    note = (f"{d['method'].upper()} erasing {d['concept']} on ShapesSD (its default, training seed {d['seed']}), n "
            f"{d['n']} attacked prompts, tuning seeds from {d['seed']}.")
    return (source("python benchmarks/attack_budgets.py --json", "attack_budgets.json", "attack_budgets.log")
            + "\n\n" + note + "\n\n" + table(header, rows))  # fmt: skip


# sd_memory: what fits on a GPU, from the measured CPU peaks (see docs/benchmarks/memory.md for the arithmetic)
GPUS_GIB = (16, 24, 40, 80)
CUDA_CONTEXT_GIB = 1.0  # CUDA context + allocator slack, reserved on every card
DENSE_TRAINING = ("esd-x", "esd-u", "amnesia", "advunlearn")  # trainable(): originals kept in host RAM


def _sd_memory_command(d: dict) -> str:
    p = d["protocol"]
    low = f" --low-resolution {p['low_resolution']}" if p.get("low_resolution") else ""
    return f"python benchmarks/sd_memory.py --resolution {p['resolution']} --iterations {p['iterations']}{low} --json"


def _sd_peak(r: dict, key: str, loop: str, resolution: int | None = None) -> str:
    """A measured peak, or "> X GB" when the run was stopped at the script's memory limit; a row measured apart at
    another resolution than the run's says its own."""
    own = f" at {r['resolution']} px" if r.get("resolution", resolution) != resolution else ""
    if r[key] is not None:
        return gb(r[key]) + own
    return f"> {gb(r['stopped_above'][loop])}{own} (stopped)" if loop in r.get("stopped_above", {}) else "–"


def eval_memory() -> str:
    """evaluate's peak memory against the suite's size: streaming vs the whole suite in one chunk."""
    d = load("eval_memory.json")
    mib = 2**20
    rows = [
        [mode.replace("_", " "), f"{r['small']['peak_bytes'] / mib:.0f} MiB ({r['small']['growth_bytes'] / mib:.0f})",
         f"{r['large']['peak_bytes'] / mib:.0f} MiB ({r['large']['growth_bytes'] / mib:.0f})", f"{r['ratio']:.3f}"]
        for mode, r in d["rows"].items()
    ]  # fmt: skip
    header = ["evaluate", f"peak, {d['n_small']} images (held by evaluate)",
              f"peak, {d['n_large']} images (held by evaluate)", "ratio (target <= 1.1 streaming)"]  # fmt: skip
    sizes = f"--small {d['n_small']} --large {d['n_large']} --steps {d['steps']}"
    command = f"python benchmarks/eval_memory.py {sizes} --json"
    return source(command, "eval_memory.json", "eval_memory.log") + "\n\n" + table(header, rows)


def sd_memory() -> str:
    d = load("sd_memory.json")
    p = d["protocol"]
    rows = []
    for r in d["rows"]:
        if r["ratio"] is not None:
            ratio = f"**{r['ratio']:.2f}**"
        else:
            ratio = f"**< {r['ratio_below']:.2f}**" if "ratio_below" in r else "–"
        ours, official = r["runs"]["ours"], r["runs"]["official"]
        rows.append(
            [
                r["method"],
                gb(r["weights_bytes"]),
                gb(r["trained_bytes"]),
                _sd_peak(r, "peak_bytes", "ours", p["resolution"]),
                _sd_peak(r, "official_peak_bytes", "official", p["resolution"]),
                ratio,
                gb(r["low_resolution_peak_bytes"]) if "low_resolution_peak_bytes" in r else "–",
                f"{ours.get('seconds', '–')} / {official.get('seconds', '–')}",
            ]
        )
    header = [
        "method",
        "weights",
        "trained tensors",
        f"ours: peak at {p['resolution']} px",
        f"official-style: peak at {p['resolution']} px",
        "ours / official",
        f"ours: peak at {p['low_resolution']} px" if p.get("low_resolution") else "–",
        "run s (ours / official)",
    ]
    return source(_sd_memory_command(d), "sd_memory.json", "sd_memory.log") + "\n\n" + table(header, rows)


def sd_memory_gpus() -> str:
    """Each method's estimated GPU peak at 512 px as the code runs it, and the cards it fits on.

    Closed-form and statistics methods take a half-precision pipeline: the weights halve (W / 2 less). The
    training methods refuse one (float32 master weights, bf16 autocast is an option): their weights stay
    float32, and the copy of the trained tensors that `trainable()` keeps in host RAM (T) is not on the GPU.
    Everything else is kept at its measured float32 size (an upper bound: autocast halves activations).
    """
    d = load("sd_memory.json")
    rows = []
    for r in d["rows"]:
        if "peak_bytes_512_estimate" not in r:  # stopped at the memory limit, or run without --low-resolution
            at = r.get("resolution", d["protocol"]["resolution"])
            peak = _sd_peak(r, "peak_bytes", "ours", at)
            rows.append([r["method"], f"{peak} at {at} px", "", "not estimated", "",
                         *("–" for _ in GPUS_GIB)])  # fmt: skip
            continue
        w, t, p512 = r["weights_bytes"], r["trained_bytes"], r["peak_bytes_512_estimate"]
        if r["method"] in DENSE_TRAINING:
            estimate, arithmetic, weights = p512 - t, f"{gb(p512)} − {gb(t)}", "float32"
        else:
            estimate, arithmetic, weights = p512 - w / 2, f"{gb(p512)} − {gb(w)} / 2", "float16"
        fits = ["yes" if estimate / 1024**3 + CUDA_CONTEXT_GIB <= g else "no" for g in GPUS_GIB]
        rows.append([r["method"], gb(p512), weights, arithmetic, f"**{gb(estimate)}**", *fits])
    header = ["method", "float32 CPU peak at 512 px", "weights on the GPU", "arithmetic", "GPU estimate"]
    header += [f"{g} GB" for g in GPUS_GIB]
    return table(header, rows)


TABLES: dict[str, Callable[[], str]] = {
    "attack_budgets": attack_budgets,
    "rece_tuning": rece_tuning,
    "advunlearn_tuning": advunlearn_tuning,
    "amnesia_adversarial_tuning": amnesia_adversarial_tuning,
    "erasure_table": erasure_table,
    "erasure_summary": erasure_summary,
    "probe": probe_table,
    "probe_budget": probe_budget,
    "edit_apply": edit_apply,
    "sd_memory": sd_memory,
    "eval_memory": eval_memory,
    "sd_memory_gpus": sd_memory_gpus,
    "uce_speed": uce_speed,
    "uce_speed_wholewords": uce_speed_wholewords,
    "shapes_quality": shapes_quality,
    "uce_logo": uce_logo,
    "uce_debias": uce_debias,
    "uce_square_where": uce_square_where,
    "uce_square_prefix": uce_square_prefix,
    "uce_square_tuning": uce_square_tuning,
    "uce_square_report": uce_square_report,
    "esd_speed": esd_speed,
    "esd_quality": esd_quality,
    "cad_speed": cad_speed,
    "cad_check": cad_check,
    "amnesia_speed": amnesia_speed,
    "amnesia_digits": amnesia_digits,
    "amnesia_digits_official": amnesia_digits_official,
    "amnesia_surrogates": amnesia_surrogates,
    "eigen_iris": eigen_iris,
    "eigen_digits": eigen_digits,
    "eigen_digits_matrices": eigen_digits_matrices,
    "eigen_figures": eigen_figures,
}


# -- single values for the readings --------------------------------------------------------------------------
def _erasure(concept: str, method: str) -> dict:
    for r in load("erasure_table.json")["rows"]:
        if r["concept"] == concept and r["method"] == method:
            return r
    raise PluginError(f"benchmarks hook: erasure_table.json has no row {concept!r} / {method!r}")


def _soft(concept: str, method: str) -> str:
    r = _erasure(concept, method)["attacks"]["soft-prompt"]
    return f"{r['edited_no_attack']['successes']} → {r['successes']}/{r['n']}"


VALUES: dict[str, Callable[[], str]] = {
    "uce_speed.speedup": lambda: f"{load('uce_speed.json')['speedup']:.1f}x",
    "uce_speed.total_1000": lambda: f"{load('uce_speed.json')['rows'][-1]['total_s']:.1f} s",
    "uce_speed.total_padded_1000": lambda: f"{load('uce_speed.json')['rows'][-1]['total_padded_s']:.1f} s",
    "uce_speed.solve_1000": lambda: f"{load('uce_speed.json')['rows'][-1]['solve_s']:.1f} s",
    "uce_speed.max_rel_diff": lambda: f"{load('uce_speed.json')['max_rel_diff']:.1e}",
    "uce_speed.loop_speedup": lambda: f"{load('uce_speed.json')['baseline']['speedup']:.0f}x",
    "uce_speed.sorted": lambda: (
        f"{load('uce_speed.json')['embed_sorted_s']:.1f} s instead of "
        f"{load('uce_speed.json')['embed_unsorted_s']:.1f} s"
    ),
    "edit_apply.target": lambda: f"{load('edit_apply.json')['target']}",
    "esd_speed.speedup_k25": lambda: f"{load('esd_speed.json')['speedup']:.1f}x",
    "esd_speed.speedup_k50": lambda: f"{load('esd_speed_k50.json')['speedup']:.1f}x",
    "cad_speed.speedup": lambda: f"{load('cad_speed.json')['speedup']:.1f}x",
    "amnesia_speed.speedup": lambda: f"{load('amnesia_speed.json')['speedup']:.1f}x",
    "amnesia_speed.same_estimator": lambda: f"{load('amnesia_speed.json')['speedup_same_estimator']:.1f}x",
    "erasure.soft.circle.uce": lambda: _soft("circle", "uce"),
    "erasure.soft.circle.esd-x": lambda: _soft("circle", "esd-x"),
    "erasure.soft.circle.eigen": lambda: _soft("circle", "eigen"),
    "erasure.soft.circle.amnesia": lambda: _soft("circle", "amnesia"),
    "erasure.soft.logo.eigen": lambda: _soft("the acme logo", "eigen"),
    "erasure.soft.logo.amnesia": lambda: _soft("the acme logo", "amnesia"),
    "erasure.synonyms.circle.uce": lambda: kn(_erasure("circle", "uce")["paraphrase"]),
    "erasure.synonyms.circle.esd-x": lambda: kn(_erasure("circle", "esd-x")["paraphrase"]),
    "erasure.synonyms.circle.eigen": lambda: kn(_erasure("circle", "eigen")["paraphrase"]),
}


# -- mkdocs events -------------------------------------------------------------------------------------------
def on_config(config):
    global _root
    _root = Path(config.config_file_path).resolve().parent
    load.cache_clear()
    return config


def on_files(files, config):
    """Copy benchmarks/results/ (JSON, logs, figures) into the site, for pages to link and show."""
    folder = _root / RESULTS
    for path in sorted(folder.iterdir()):
        if path.suffix in (".json", ".log", ".png") and path.is_file():
            files.append(File.generated(config, f"{SITE_DIR}/{path.name}", abs_src_path=str(path)))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    def render_table(match: re.Match) -> str:
        name = match.group("name")
        if name not in TABLES:
            raise PluginError(f"benchmarks hook: {page.file.src_uri} asks for unknown table {name!r}")
        return "\n" + TABLES[name]() + "\n"

    def render_value(match: re.Match) -> str:
        name = match.group("name")
        if name not in VALUES:
            raise PluginError(f"benchmarks hook: {page.file.src_uri} asks for unknown value {name!r}")
        return VALUES[name]()

    markdown = PLACEHOLDER.sub(render_table, markdown)
    return VALUE.sub(render_value, markdown)
