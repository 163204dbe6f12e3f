"""Every benchmark script runs on a tiny setting and ends with its JSON line (slow: `pytest -m slow`)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"
CASES = {
    "uce_speed.py": (["--concepts", "1", "5", "--preserved", "10", "--repeats", "1", "--baseline"], "speedup"),
    "shapes_quality.py": (["--n", "1"], None),
    "uce_shapes.py": (
        ["--parts", "erase,logo,debias", "--n", "1", "--debias-images", "2", "--debias-iterations", "1"],
        "erase",
    ),
    "eigen_experiments.py": (["--parts", "iris"], "iris"),
    "uce_square.py": (["--objects", "circle,square", "--n", "1", "--tune-n", "1", "--parts", "where,tune"], "report"),
    "erasure_table.py": (["--quick"], "rows"),
    "cad_speed.py": (["--steps", "3", "--repeats", "1"], "speedup"),
    "cad_quality.py": (["--n", "1", "--ratios", "0.1", "--subsets", "3"], "erase_pearson_r"),
    "cad_amplify.py": (["--n", "2", "--ratios", "0.1"], "after"),
    "amnesia_speed.py": (["--samples", "1", "--timesteps", "10"], "speedup"),
    "amnesia_quality.py": (
        [
            "--rows",
            "digits-vae",
            "--n",
            "20",
            "--set",
            "steps=5",
            "--set",
            "fisher_samples=50",
            "--set",
            "replay_samples=100",
        ],
        "rows",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(CASES))
def test_benchmark_prints_a_json_last_line(script):
    args, key = CASES[script]
    run = subprocess.run([sys.executable, str(BENCHMARKS / script), *args, "--json"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    last = json.loads(run.stdout.strip().splitlines()[-1])
    assert isinstance(last, dict) and (key is None or key in last)
