"""defence_seeds.py --table: erasure-table rows grouped across training seeds and judged against the bar."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "defence_seeds.py"


def _row(seed, others, soft, method="advunlearn-te-held"):
    share = lambda k, n: {"accuracy": k / n, "n": n, "ci95": [0.0, 1.0]}  # noqa: E731
    cell = lambda k: {"rate": k / 16, "successes": k, "n": 16}  # noqa: E731
    return {"method": method, "concept": "circle", "config": {"lr": 3e-4}, "train_seed": seed,
            "target": share(0, 16), "others": share(others, 112), "others_before": share(110, 112),
            "attacks": {"soft-prompt": cell(soft), "concept-inversion": cell(16)}}  # fmt: skip


def _run(*args):
    done = subprocess.run([sys.executable, str(SCRIPT), *args, "--json"], capture_output=True, text=True)
    return done.returncode, done.stdout, done.stderr


def test_table_groups_training_seeds_and_counts_the_fits_that_meet_the_bar(tmp_path):
    table = tmp_path / "table.json"  # others 107/112 is within 0.03 of 110/112, 106/112 is not; soft 4/16 is over
    table.write_text(json.dumps({"rows": [_row(0, 107, 3), _row(1, 106, 0), _row(2, 110, 4)]}))
    extra = tmp_path / "rows.jsonl"  # a --rows-file: one row per line, another method, and a failed row
    extra.write_text(json.dumps(_row(0, 110, 0, method="uce")) + "\n" + json.dumps({"method": "x", "error": "e"}))
    code, out, err = _run("--table", str(table), "--table", str(extra))
    assert code == 0, err
    groups = {json.loads(g["group"])["method"]: g for g in json.loads(out.splitlines()[-1])["groups"]}
    held = groups["advunlearn-te-held"]
    assert held["train_seeds"] == [0, 1, 2] and held["met_bar"] == 1
    assert (held["others"]["successes"], held["others"]["n"]) == (323, 336)
    assert (held["soft-prompt"]["successes"], held["soft-prompt"]["n"]) == (7, 48)
    assert held["attacks"]["concept-inversion"]["successes"] == 48
    assert groups["uce"]["met_bar"] == 1 and groups["uce"]["runs"] == ["uce circle train seed 0"]


def test_table_refuses_a_file_that_holds_no_rows(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"groups": []}')
    code, out, err = _run("--table", str(bad))
    assert code != 0 and "--table" in err and "not erasure-table rows" in err and not out
    code, _, err = _run("--table", str(bad), "--family", "a=ab")
    assert code != 0 and "--family" in err
