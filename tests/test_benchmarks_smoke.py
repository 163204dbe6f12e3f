"""Every benchmark script (benchmarks/*.py) is covered here, and a new one fails until it is given a case.

* each is imported and its parser built and printed by `--help` (in this process: fast);
* each that prints a JSON line (`--json`) runs on a tiny setting to that line, in a subprocess, offline: the
  cheapest in the default run (about 40 s in all on one thread), the others marked slow (`pytest -m slow`);
* a script without `--json` names the test that runs it (`ELSEWHERE`).

The scripts run from a copy in a temporary folder, so the ones that write next to themselves (eigen_experiments:
`results/*.png`) write there and never over the committed results.
"""

import json
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"
TESTS = Path(__file__).parent
# script: (its tiny arguments, a key its JSON line must hold, slow)
CASES = {
    "amnesia_quality.py": (
        "--rows digits-vae --n 20 --set steps=5 --set fisher_samples=50 --set replay_samples=100",
        "rows",
        False,
    ),
    "advunlearn_parts.py": (
        "--n 1 --budget 1 --options iterations=2,warmup=1,attack_steps=1,sampling_steps=2", "rows", True
    ),
    "amnesia_speed.py": ("--smoke --samples 1 --timesteps 10", "speedup", False),
    "attack_budgets.py": ("--n 1 --budgets soft-prompt=1", "rows", True),
    "cad_amplify.py": ("--n 2 --ratios 0.1", "after", True),
    "cad_quality.py": ("--n 1 --ratios 0.1 --subsets 3", "erase_pearson_r", True),
    "cad_speed.py": ("--steps 3 --repeats 1", "speedup", True),
    "defence_tuning.py": (
        "--method advunlearn --configs iterations=2,warmup=1,attack_steps=1,sampling_steps=2 --n 1 "
        "--attacks soft-prompt --budget 1 --then uce",
        "rows",
        True,
    ),
    "edit_apply.py": ("--smoke --dtypes float32", "ratio", False),
    "eigen_experiments.py": ("--parts iris", "iris", False),
    "erasure_table.py": ("--quick", "rows", True),
    "esd_quality.py": ("--rows uce-object --n 1", "rows", True),
    "esd_speed.py": (
        "--loops official-trained,ours --seeds 0 --rung 1 --max-samples 1 --n 1 --sampling-steps 2",
        "loops",
        True,
    ),
    # reads recorded runs only (no fitting): the committed tuning file, and one named family of two of its runs
    "defence_seeds.py": (
        f"--file {shlex.quote(str(BENCHMARKS / 'results' / 'advunlearn_tuning.json'))} --family 'two runs=ab,ac'",
        "groups",
        False,
    ),
    "rece_tuning.py": ("--rounds 0,1 --n 1 --attacks soft-prompt --budget 1", "rows", True),
    "shapes_quality.py": ("--n 1", "held_out", True),
    "eval_memory.py": ("--small 8 --large 16 --chunk-size 8 --steps 1", "ratio", True),
    "sd_memory.py": ("--tiny --methods esd-x --iterations 1", "rows", False),
    "uce_shapes.py": (
        "--parts erase,logo,debias --n 1 --debias-images 2 --debias-iterations 1",
        "erase",
        True,
    ),
    "uce_speed.py": (
        "--concepts 1 2 --preserved 4 --repeats 1 --sample 4 --no-sort-check --baseline",
        "speedup",
        False,
    ),
    "uce_square.py": (
        "--objects circle,square --n 1 --tune-n 1 --parts where,tune",
        "report",
        True,
    ),
}
# scripts with no JSON line, run by another test: script -> (test file, test function)
ELSEWHERE = {"report_screenshot.py": ("test_report.py", "test_a_headless_browser_draws_the_report")}
SCRIPTS = sorted(path.name for path in BENCHMARKS.glob("*.py"))


def test_every_script_is_covered():
    """A new script fails here until it gets a tiny case in CASES (or names the test that runs it)."""
    missing = sorted(set(SCRIPTS) - set(CASES) - set(ELSEWHERE))
    assert not missing, f"benchmark scripts without a smoke case: {missing}; add them to CASES"
    assert set(CASES) | set(ELSEWHERE) <= set(SCRIPTS), "a case names a script that is gone"
    assert not set(CASES) & set(ELSEWHERE)
    for script in ELSEWHERE:  # a script that prints JSON is run here, to its JSON line
        assert '"--json"' not in (BENCHMARKS / script).read_text(), f"{script} prints JSON: give it a CASES entry"
    for script, (test_file, test) in ELSEWHERE.items():
        source = (TESTS / test_file).read_text()
        assert f"def {test}(" in source and script in source, f"{test_file}::{test} does not run {script}"


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_imports_and_prints_its_help(script, monkeypatch, capsys):
    """Its imports resolve, its parser builds, and every option a case gives it is one the parser knows."""
    monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / script), "--help"])
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(BENCHMARKS / script), run_name="__main__")
    assert exited.value.code in (0, None)
    text = capsys.readouterr().out
    assert text.startswith("usage:")
    if script in CASES:
        assert "--json" in text
        for option in (arg for arg in shlex.split(CASES[script][0]) if arg.startswith("--")):
            assert re.search(rf"(?<![\w-]){option}(?![\w-])", text), f"{script} has no {option}"


def _run(script: str, tmp_path: Path) -> dict:
    args, key, _ = CASES[script]
    args = shlex.split(args)
    copy = tmp_path / "benchmarks" / script
    copy.parent.mkdir(parents=True, exist_ok=True)
    for sibling in BENCHMARKS.glob("*.py"):  # scripts that import a sibling's helpers find it beside them
        shutil.copy(sibling, copy.parent / sibling.name)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, str(copy), *args, "--json"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=900
    )
    assert run.returncode == 0, run.stderr[-3000:]
    last = json.loads(run.stdout.strip().splitlines()[-1])
    assert isinstance(last, dict) and key in last, sorted(last)
    if "--smoke" in args:
        assert last.get("smoke") is True  # figures of a smoke run say so
    return last


@pytest.mark.parametrize("script", sorted(s for s, case in CASES.items() if not case[2]))
def test_script_runs_small_to_its_json_line(script, tmp_path):
    _run(script, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(s for s, case in CASES.items() if case[2]))
def test_slow_script_runs_small_to_its_json_line(script, tmp_path):
    _run(script, tmp_path)
