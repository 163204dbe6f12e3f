"""The attacks of `concept_edit.attacks` on a tiny random SD pipeline (no download), and `probe`'s refusals.

The judge on the tiny pipeline is a function of the pixels: what matters here is the attack loop (it runs,
stops at its budget, repeats itself for a seed) and the white-box objective (it decreases), not whether a
random model draws a cat.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from concept_edit.attacks import FunctionJudge, RingABellOptions, SoftPromptOptions, probe
from concept_edit.attacks.drawing import Item
from concept_edit.attacks.encoder import encode_ids, prompt_ids, token_embeddings, vocabulary
from concept_edit.attacks.judging import judged_rows, world_judge
from concept_edit.attacks.ring_a_bell import concept_vector, genetic_search, run_ring_a_bell
from concept_edit.attacks.soft_prompt import run_soft_prompt
from concept_edit.attacks.wording import concept_token_ids, contains_concept, contains_synonym, drawn_text
from concept_edit.cli.app import main
from concept_edit.methods import EditRequest, fit
from concept_edit.models.prompts import encode_prompts
from concept_edit.worlds import get_world
from concept_edit.worlds.shapes.judge import ShapesOracleJudge
from concept_edit.worlds.shapes.vocabulary import concept_pairs, oracle_head, paraphrases, synonyms

STEPS = 2  # denoising steps of every tiny image


def always(value: bool) -> FunctionJudge:
    return FunctionJudge(lambda images: [value] * len(images), f"always {value}")


@pytest.fixture
def cat_edit(sd):
    return fit(sd, "uce", EditRequest(concepts=("cat",)))


def test_encoding_matches_the_pipeline_and_free_slots_act_as_tokens(sd):
    prompts = ["a photo of a cat", "a red car"]
    ids, mask = prompt_ids(sd, prompts, 0)
    assert torch.allclose(encode_ids(sd, ids, mask).float(), encode_prompts(sd, prompts), atol=1e-6)
    # two free slots holding the embeddings of "a photo" encode "a photo of a cat" exactly
    ids, mask = prompt_ids(sd, ["of a cat"], 2)
    words = sd.tokenizer("a photo", add_special_tokens=False).input_ids
    free = token_embeddings(sd)[words][None]
    assert torch.allclose(encode_ids(sd, ids, mask, free).float(), encode_prompts(sd, prompts[:1]), atol=1e-6)
    # a different free embedding changes the encoding
    assert not torch.allclose(encode_ids(sd, ids, mask, free + 1).float(), encode_prompts(sd, prompts[:1]))


def pixel_coin(share: float = 0.2) -> FunctionJudge:
    """A judge unrelated to any concept: 'concept' for about `share` of images, by a hash of their pixels."""
    cut = round(256 * share)
    return FunctionJudge(lambda ims: [hashlib.sha256(im.tobytes()).digest()[0] < cut for im in ims], "pixel coin")


def test_paraphrase_drops_wordings_with_the_concept_and_repeats_for_a_seed(sd, cat_edit):
    def run(seed):
        wordings = ["a dog", "a photo of a cat", "a red car", "two cats"]
        return probe(sd, "cat", "paraphrase", edits=[cat_edit], judge=pixel_coin(0.5), prompts=wordings, budget=3,
                     n=2, seed=seed, steps=STEPS)  # fmt: skip

    first = run(5)
    assert [(r["prompt"], r["seed"]) for r in first["prompts"]] == [("a dog", 5), ("a red car", 6), ("a dog", 7)]
    assert first["n"] == 3 and first["protocol"]["budget"] == 3
    assert first["protocol"]["dropped_wordings"] == ["a photo of a cat", "two cats"]
    assert first["prompt_level"]["prompts"] == 2  # two wordings: the prompt-level interval is at n = 2
    again = run(5)
    assert [(r["read"], r["unedited_success"]) for r in again["prompts"]] == [
        (r["read"], r["unedited_success"]) for r in first["prompts"]
    ]
    other = run(6)  # other seeds draw other images: the pixel judge reads them differently somewhere
    assert [r["seed"] for r in other["prompts"]] == [6, 7, 8]


def test_paraphrase_refuses_before_drawing_when_every_wording_names_the_concept(sd, cat_edit):
    def never_called(images):
        raise AssertionError("an image was drawn and judged before the refusal")

    with pytest.raises(ValueError, match="every wording contains the concept"):
        probe(sd, "cat", "paraphrase", edits=[cat_edit], judge=FunctionJudge(never_called),
              prompts=["a cat", "the cats", "a photo of a cat"], budget=2, n=2, steps=STEPS)  # fmt: skip


def test_shapes_logo_and_star_paraphrases_are_flagged_as_naming_the_concept():
    from types import SimpleNamespace

    pipe = SimpleNamespace(tokenizer=_wordpiece())
    assert all(contains_concept(pipe, w, "the acme logo") for w in paraphrases("the acme logo"))
    assert contains_concept(pipe, "a five-pointed star", "star")
    assert not contains_concept(pipe, "a picture of a disc", "circle")
    circle = synonyms("circle")
    assert contains_synonym("a picture of a disc", circle) and contains_synonym("round shape", circle)
    generic = get_world("shapes").generic_words  # "shape" alone is not a synonym of circle
    assert not contains_synonym("a blue shape", circle, generic) and contains_synonym("a blue shape", circle)


def test_soft_prompt_objective_decreases_within_its_budget_and_repeats_for_a_seed(sd, cat_edit):
    items = [Item("a photo of a cat", 0), Item("a cat", 1)]
    options = SoftPromptOptions(tokens=4, eval_every=10, timesteps=8)  # the default lr, 0.01

    def run(seed):
        return run_soft_prompt(sd, always(False), items, edits=[cat_edit], budget=30, seed=seed, steps=STEPS,
                               guidance=3.0, options=options)  # fmt: skip

    first = run(0)
    assert first.extra["steps_run"] == 30
    assert [c["step"] for c in first.extra["checkpoints"]] == [0, 10, 20, 30]
    assert first.extra["objective_end"] < 0.7 * first.extra["objective_start"]
    assert all(not r["success"] and len(r["nearest_tokens"]) == 4 for r in first.rows)
    again = run(0)
    assert again.rows == first.rows and again.extra["objective_end"] == first.extra["objective_end"]
    other = run(1)
    assert other.extra["objective_start"] != first.extra["objective_start"]  # the seed draws other noise, tokens


def test_soft_prompt_variants_unlearndiff_objective_p4d_n_and_the_random_control(sd, cat_edit):
    """UnlearnDiff's objective matches the true noise (another objective than P4D's, and optimised too); P4D-N's
    free tokens are the whole prompt; the control draws its random start unoptimised."""
    items = [Item("a photo of a cat", 0), Item("a cat", 1)]

    def run(**options):
        opts = SoftPromptOptions(eval_every=10, timesteps=8, **options)
        return run_soft_prompt(sd, always(False), items, edits=[cat_edit], budget=20, seed=0, steps=STEPS,
                               guidance=3.0, options=opts, concept="cat")  # fmt: skip

    p4d, unlearndiff = run(), run(objective="unlearndiff")
    assert unlearndiff.extra["objective_start"] != p4d.extra["objective_start"]  # another target
    assert unlearndiff.extra["objective_end"] < unlearndiff.extra["objective_start"]
    alone = run(tokens=5, placement="alone")
    assert all(len(r["nearest_tokens"]) == 5 and "cat" not in r["discrete_prompt"] for r in alone.rows)
    assert alone.protocol["placement"] == "the whole prompt (P4D-N)"
    control = run(optimise=False)
    assert control.extra["steps_run"] == 0 and control.protocol["optimised"] is False
    assert [c["step"] for c in control.extra["checkpoints"]] == [0]
    assert control.extra["objective_end"] == control.extra["objective_start"]  # nothing was optimised
    with pytest.raises(ValueError, match="objective must be one of p4d, unlearndiff"):
        SoftPromptOptions(objective="p5d")


def test_soft_prompt_headline_is_not_selected_on_the_judge(sd, cat_edit):
    """A judge that answers at random: k checkpoint reads per image inflate the best-of-k figure far above the
    judge's base rate; the headline (found embeddings drawn once at fresh seeds) stays near it."""
    items = [Item("a photo of a cat", s) for s in range(24)]
    out = run_soft_prompt(sd, pixel_coin(0.2), items, edits=[cat_edit], budget=40, seed=0, steps=STEPS, guidance=3.0,
                          options=SoftPromptOptions(eval_every=5, timesteps=8), concept="cat")  # fmt: skip
    headline = np.mean([r["success"] for r in out.rows])
    assert out.extra["best_of_k"] == len(out.extra["checkpoints"]) > 1
    assert out.extra["best_of_k_success_rate"] > 0.6  # the selection effect the old headline had
    assert headline < 0.45  # Binomial(24, 0.2): P(>= 11) < 0.01
    fresh = [r["fresh_seed"] for r in out.rows]
    assert len(set(fresh)) == 24 and not set(fresh) & {i.seed for i in items}


def test_soft_prompt_found_as_the_plain_prompt_is_drawn_again_as_the_plain_prompt(sd, cat_edit):
    """When every plain prompt already reads as the concept, the attack stops at checkpoint 0 having found the
    plain prompt; its headline must not redraw the untrained random prefix instead (it scored below no attack)."""
    from concept_edit.attacks.drawing import images_from_prompts
    from concept_edit.attacks.soft_prompt import fresh_seeds
    from concept_edit.edit import applied

    items = [Item("a photo of a cat", s) for s in range(4)]
    seeds = [i.seed for i in items] + fresh_seeds([i.seed for i in items])
    with applied(sd, cat_edit):
        plain = images_from_prompts(sd, [Item("a photo of a cat", s) for s in seeds], STEPS, 3.0)
    known = {hashlib.sha256(im.tobytes()).hexdigest() for im in plain}
    judge = FunctionJudge(lambda ims: [hashlib.sha256(im.tobytes()).hexdigest() in known for im in ims], "plain")
    out = run_soft_prompt(sd, judge, items, edits=[cat_edit], budget=10, seed=0, steps=STEPS, guidance=3.0,
                          options=SoftPromptOptions(eval_every=5, timesteps=4), concept="cat")  # fmt: skip
    assert all(r["success_step"] == 0 and r["found"] == "plain prompt" for r in out.rows)
    assert all(r["success"] for r in out.rows)


def test_soft_prompt_nearest_tokens_leave_out_the_concept(sd, cat_edit):
    # the free embeddings start at the concept's own token: unexcluded, the projection would return it
    items = [Item("a photo of a cat", 0)]
    excluded = set(concept_token_ids(sd.tokenizer, "cat"))
    assert sd.tokenizer.convert_tokens_to_ids("cat</w>") in excluded
    options = SoftPromptOptions(tokens=2, eval_every=1, timesteps=4, lr=1e-6)
    out = run_soft_prompt(sd, always(False), items, edits=[cat_edit], budget=1, seed=0, steps=STEPS, guidance=3.0,
                          options=options, concept="cat")  # fmt: skip
    ids = sd.tokenizer.convert_tokens_to_ids(out.rows[0]["nearest_tokens"])
    assert not set(ids) & excluded and not out.rows[0]["contains_concept"]


def test_soft_prompt_leaves_the_weights_trainable_as_they_were(sd, cat_edit):
    flags = [p.requires_grad for p in sd.unet.parameters()]
    before = {k: v.clone() for k, v in sd.unet.state_dict().items()}
    run_soft_prompt(sd, always(True), [Item("a cat", 0)], edits=[cat_edit], budget=2, seed=0, steps=STEPS,
                    guidance=3.0, options=SoftPromptOptions(eval_every=1, timesteps=4))  # fmt: skip
    assert [p.requires_grad for p in sd.unet.parameters()] == flags
    assert all(torch.equal(before[k], v) for k, v in sd.unet.state_dict().items())  # the edit was reverted


def test_soft_prompt_counts_the_plain_prompt_first_as_p4d_does(sd, cat_edit):
    outcome = run_soft_prompt(sd, always(True), [Item("a cat", 0)], edits=[cat_edit], budget=3, seed=0, steps=STEPS,
                              guidance=3.0, options=SoftPromptOptions(eval_every=1, timesteps=4))  # fmt: skip
    assert outcome.rows[0]["best_of_k_success"] and outcome.rows[0]["success_step"] == 0
    assert [c["step"] for c in outcome.extra["checkpoints"]] == [0] and outcome.extra["steps_run"] == 0
    assert outcome.extra["best_of_k"] == 1 and outcome.rows[0]["fresh_seed"] == 1


def test_genetic_search_improves_keeps_its_budget_and_repeats_for_a_seed(sd):
    options = RingABellOptions(tokens=4, population=16)
    allowed = vocabulary(sd.tokenizer)
    vector = concept_vector(sd, [("a photo of a cat", "a photo of a"), ("a red cat", "a red")])
    target = encode_prompts(sd, ["a cat"])[0] + 3 * vector

    def run(seed):
        return genetic_search(sd, target, allowed, generations=8, rng=np.random.default_rng(seed), options=options)

    best, distance, history = run(0)
    assert len(history) == 8 and len(best) == 4
    assert history[-1] < history[0]  # not monotone: as in the notebook, mutation may also hit the best member
    assert run(0) == (best, distance, history)
    assert run(1)[0] != best


def test_ring_a_bell_excludes_the_concept_and_draws_one_image_per_item(sd, cat_edit):
    items = [Item("a photo of a cat", 3), Item("a photo of a cat", 4)]
    options = RingABellOptions(tokens=4, population=8)
    outcome = run_ring_a_bell(sd, always(False), items, [("a cat", "a")], concept="cat", edits=[cat_edit], budget=3,
                              seed=0, steps=STEPS, guidance=3.0, options=options)  # fmt: skip
    assert [r["seed"] for r in outcome.rows] == [3, 4] and len(outcome.extra["searches"]) == 1
    assert outcome.rows[0]["prompt"] == outcome.rows[1]["prompt"] == outcome.extra["searches"][0]["found"]
    assert "cat</w>" not in outcome.extra["searches"][0]["tokens"] and outcome.protocol["excluded_tokens"]
    assert not contains_concept(sd, outcome.rows[0]["prompt"], "cat") and "cat" not in outcome.rows[0]["prompt"]


def test_genetic_search_rejects_members_whose_drawn_text_spells_the_concept(sd):
    # byte tokens c + a + t</w> decode to "cat": leaving out the token cat</w> alone lets the search spell it
    tok = sd.tokenizer
    spelled = tok("cat", add_special_tokens=False).input_ids
    assert drawn_text(tok, tok.convert_tokens_to_ids(["c", "a", "t</w>"])) == "cat"
    options = RingABellOptions(tokens=3, population=4, mutation=0.0, crossover=0.0)
    target = encode_prompts(sd, ["cat"])[0]
    allowed = torch.tensor(sorted(set(vocabulary(tok, exclude=spelled).tolist()) & set(
        tok.convert_tokens_to_ids(["c", "a", "t</w>", "dog</w>", "red</w>"]))))  # fmt: skip
    best, distance, _ = genetic_search(sd, target, allowed, generations=3, rng=np.random.default_rng(0),
                                       options=options, concept="cat")  # fmt: skip
    assert np.isfinite(distance) and not contains_concept(sd, drawn_text(tok, best), "cat")


def _wordpiece():
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "the", "of", "strip", "stripe", "striped", "##ed",
             "##d", "##pon", "duck", "disc", "round", "shape", "star", "five", "-", "pointed", "acme", "logo",
             "company", "picture", "circle", "cir", "##cle", "##s"]  # fmt: skip
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.mkdtemp())
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return BertTokenizerFast(str(folder / "vocab.txt"), do_lower_case=True)


def test_wordpiece_spellings_of_the_concept_are_caught():
    from types import SimpleNamespace

    tok = _wordpiece()
    pipe = SimpleNamespace(tokenizer=tok)
    ids = tok.convert_tokens_to_ids
    assert drawn_text(tok, ids(["strip", "##ed"])) == "striped"
    assert contains_concept(pipe, drawn_text(tok, ids(["strip", "##ed"])), "striped")
    assert contains_concept(pipe, drawn_text(tok, ids(["stripe", "##d", "duck"])), "striped")
    assert contains_concept(pipe, drawn_text(tok, ids(["cir", "##cle", "##s"])), "circle")
    assert drawn_text(tok, ids(["##pon", "duck"])) == "duck"  # no leading continuation token
    assert set(ids(["strip", "stripe", "striped"])) <= set(concept_token_ids(tok, "striped"))
    assert ids("duck") not in concept_token_ids(tok, "striped")


def test_oracle_none_and_other_labels_are_not_the_concept():
    class Readings:
        def __init__(self, labels):
            self._labels = labels

        def labels(self, head):
            assert head == "object"
            return self._labels

    class FakeOracle:
        def read(self, images):
            return Readings(["none", "circle", "square"][: len(images)])

    judge = world_judge(get_world("shapes"), "circle", judge=ShapesOracleJudge(FakeOracle()))
    rows = judged_rows(judge, [Item("a circle", s) for s in range(3)], np.zeros((3, 4, 4, 3), np.uint8))
    assert [r["success"] for r in rows] == [False, True, False]


def test_probe_reports_the_rate_given_the_unedited_model_and_per_prompt(sd, cat_edit):
    # a pixel judge: the unedited model reads some attack images as the concept and not others
    results = probe(sd, "cat", "paraphrase", edits=[cat_edit], judge=pixel_coin(0.5), prompts=["a dog", "a red car"],
                    budget=6, n=2, steps=STEPS, min_unedited=0.0)  # fmt: skip
    rows = results["prompts"]
    given = [r["success"] for r in rows if r["unedited_success"]]
    assert results["prompt_level"]["prompts"] == 2 and results["prompt_level"]["n"] == 6
    low, high = results["prompt_level"]["ci95_prompt_level"]
    assert high - low > results["ci95"][1] - results["ci95"][0]  # fewer independent units: a wider interval
    if given:
        assert results["given_unedited"]["n"] == len(given) and results["given_unedited"]["successes"] == sum(given)
    else:
        assert results["given_unedited"] is None


def test_probe_refuses_a_concept_the_unedited_model_does_not_draw(sd, cat_edit):
    with pytest.raises(ValueError, match="would measure nothing"):
        probe(sd, "cat", "soft-prompt", edits=[cat_edit], judge=always(False), budget=2, n=2, steps=STEPS)


def test_probe_refuses_a_zero_budget_an_unknown_attack_and_an_edit_of_another_model(sd, other_sd, cat_edit):
    with pytest.raises(ValueError, match="budget of 0 attacks nothing"):
        probe(sd, "cat", "paraphrase", edits=[cat_edit], judge=always(True), budget=0, prompts=["a cat"])
    with pytest.raises(ValueError, match="unknown attack"):
        probe(sd, "cat", "jailbreak", judge=always(True))
    with pytest.raises(ValueError, match="different base model|weights differ"):
        probe(other_sd, "cat", "paraphrase", edits=[cat_edit], judge=always(True), prompts=["a cat"], steps=STEPS)


def test_real_models_need_a_judge(sd):
    with pytest.raises(ValueError, match="needs a judge"):
        probe(sd, "cat", "paraphrase", prompts=["a cat"])


def test_shapes_concepts_resolve_to_oracle_heads():
    assert oracle_head("circle") == ("object", "circle")
    assert oracle_head("striped") == ("style", "striped")
    assert oracle_head("The acme logo") == ("logo", "logo")
    with pytest.raises(ValueError, match="cannot judge"):
        oracle_head("hexagon")
    assert all("circle" in w and "circle" not in wo.split() for w, wo in concept_pairs("circle"))


def _probe_cli(tmp_path, *extra, model="shapes", edit=None):
    out = tmp_path / "probe.json"
    argv = ["probe", "--model", str(model), "--concept", "circle", "--out", str(out), *extra]
    if edit is not None:
        argv += ["--edit", str(edit)]
    return main(argv), out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--attack", "soft-prompt", "--budget", "0"), "budget of 0 attacks nothing"),
        (("--attack", "paraphrase", "--strength", "2"), "--strength does not apply"),
        (("--attack", "ring-a-bell", "--budget", "-3"), "budget of -3"),
        (("--attack", "soft-prompt", "--images", "imgs"), "--images does not apply"),
        (("--attack", "concept-inversion", "--init-word", " "), "--init-word is empty"),
        (("--attack", "concept-inversion", "--images", "no-such-folder", "--edit", "e"), "no such folder"),
    ],
)
def test_cli_refuses_bad_budgets_and_options_before_any_work(tmp_path, capsys, extra, message):
    code, out = _probe_cli(tmp_path, *extra)
    assert code == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_cli_says_what_judge_a_real_model_needs(tmp_path, capsys, sd_folder):
    code, out = _probe_cli(tmp_path, "--attack", "paraphrase", model=sd_folder)
    err = capsys.readouterr().err
    assert code == 2 and "needs a judge" in err and "--judge nudenet" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_refuses_an_edit_made_for_another_model(tmp_path, capsys, sd, cat_edit):
    path = cat_edit.save(tmp_path / "cat-edit")
    code, out = _probe_cli(tmp_path, "--attack", "paraphrase", edit=path)
    err = capsys.readouterr().err
    assert code == 2 and "was made for" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["cat-edit"]


def test_cli_refuses_an_unknown_concept(tmp_path, capsys):
    out = tmp_path / "probe.json"
    code = main(["probe", "--model", "shapes", "--concept", "hexagon", "--attack", "paraphrase", "--out", str(out)])
    assert code == 2 and "cannot judge concept 'hexagon'" in capsys.readouterr().err and not out.exists()


def test_results_are_json(sd, cat_edit):
    results = probe(sd, "cat", "paraphrase", edits=[cat_edit], judge=always(True), prompts=["a dog"], budget=1, n=1,
                    steps=STEPS)  # fmt: skip
    assert json.loads(json.dumps(results))["ci95"] == results["ci95"]


def test_report_section_lists_every_run(sd, cat_edit):
    from concept_edit.attacks.report import check_probe, is_probe, probe_section

    results = probe(sd, "cat", "paraphrase", edits=[cat_edit], judge=always(True), prompts=["a <dog>"], budget=2,
                    n=1, steps=STEPS)  # fmt: skip
    check_probe(results)
    page = probe_section([results])
    assert is_probe(results) and "paraphrase" in page and "1.00 [0.34, 1.00] (2/2)" in page and "a &lt;dog&gt;" in page
    with pytest.raises(ValueError, match="missing 'prompts'"):
        check_probe({k: v for k, v in results.items() if k != "prompts"}, "x.json")


def test_erasure_table_section_has_a_column_per_attack():
    from concept_edit.attacks.report import erasure_table_section

    row = {"method": "uce", "concept": "circle", "target_accuracy": 0.0, "others_accuracy": 0.9,
           "target": {"ci95": [0.0, 0.2]}, "attack_success": {"paraphrase": 1.0, "soft-prompt": 0.5},
           "fit_s": 0.1, "edit_bytes": 4096}  # fmt: skip
    page = erasure_table_section([row])
    assert "paraphrase success" in page and "soft-prompt success" in page and "0.00 [0.00, 0.20]" in page
    assert erasure_table_section([]) == ""


def _erasure_table():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "erasure_table.py"
    spec = importlib.util.spec_from_file_location("erasure_table_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("flag", ["--seed", "--train-seed"])
def test_erasure_table_refuses_tuning_seeds(monkeypatch, capsys, flag):
    table = _erasure_table()
    monkeypatch.setattr(table, "load_pipeline", lambda *a, **k: pytest.fail("loaded a model before refusing"))
    monkeypatch.setattr("sys.argv", ["erasure_table.py", flag, "5003"])
    with pytest.raises(SystemExit) as exit_info:
        table.main()
    assert exit_info.value.code == 2 and "kept for tuning" in capsys.readouterr().err


def test_erasure_table_appends_rows_resumes_and_records_refusals(tmp_path, monkeypatch, capsys):
    table = _erasure_table()
    calls = []

    def fake_row(pipe, row, spec, concept, *rest):
        calls.append((row, concept))
        if row == "eigen":
            raise RuntimeError("eigen failed on purpose")
        cell = {"accuracy": 0.0, "n": 2, "ci95": [0.0, 0.66]}
        attacks = {"paraphrase": {"refused": "every wording contains the concept"}}
        return {"method": row, "concept": concept, "target_accuracy": 0.0, "others_accuracy": 1.0, "target": cell,
                "others": cell, "target_before": cell, "others_before": cell, "fit_s": 0.1, "edit_bytes": 1024,
                "attack_success": {}, "attacks": attacks}  # fmt: skip

    monkeypatch.setattr(table, "_row", fake_row)
    monkeypatch.setattr(table, "load_pipeline", lambda *a, **k: None)
    monkeypatch.setattr(table, "get_suite", lambda *a, **k: None)
    monkeypatch.setattr(table, "evaluate", lambda *a, **k: ({}, None))
    rows_file = tmp_path / "rows.jsonl"
    argv = ["erasure_table.py", "--methods", "uce,eigen", "--concepts", "circle", "--attacks", "paraphrase",
            "--rows-file", str(rows_file)]  # fmt: skip
    monkeypatch.setattr("sys.argv", argv)
    table.main()
    rows = table.read_rows(rows_file)
    assert [(r["method"], "refused" in r) for r in rows] == [("uce", False), ("eigen", True)]
    assert "eigen failed on purpose" in rows[1]["refused"] and "refused" in capsys.readouterr().out
    table.main()  # resumes: both rows are in the file, nothing is fitted again
    assert calls == [("uce", "circle"), ("eigen", "circle")] and len(table.read_rows(rows_file)) == 2
    assert not (tmp_path / "rows.jsonl.tmp").exists()
    assert all((r["n"], r["seed"], r["train_seed"]) == (16, 0, 0) for r in table.read_rows(rows_file))
    before = rows_file.read_text()
    for other in (["--train-seed", "1"], ["--seed", "3"], ["--n", "8"]):  # rows made at other settings: refused
        monkeypatch.setattr("sys.argv", [*argv, *other])
        with pytest.raises(SystemExit) as exit_info:
            table.main()
        assert exit_info.value.code == 2 and "its rows were made with" in capsys.readouterr().err
    assert rows_file.read_text() == before and len(calls) == 2


class _PixelNudeNet:
    """An evaluation judge on the 'nudity' head, as NudeNet answers: 'nude' for images brighter than a cut."""

    name = "nudenet"

    def __init__(self, cut: float) -> None:
        self.cut = cut

    def check(self, suite) -> None:
        from concept_edit.evaluation.judges.nudenet import NudeNetJudge

        NudeNetJudge(detector=object()).check(suite)  # the real judge's own check of the question asked

    def read(self, images, suite):
        from concept_edit.evaluation.judges import Reading

        return Reading(labels=["nude" if im.mean() > self.cut else "safe" for im in images])


def test_real_models_are_probed_with_a_suite_judge(sd, cat_edit):
    from concept_edit.attacks.judging import suite_judge

    judge = suite_judge("nudenet", "nudity", judge=_PixelNudeNet(-1))  # every image "nude"
    assert judge.read(np.zeros((3, 4, 4, 3), np.uint8)) == ["nude"] * 3 and judge.label == "nude"
    results = probe(sd, "nudity", "paraphrase", edits=[cat_edit], judge=judge, prompts=["a dog", "a red car"],
                    budget=4, n=2, steps=STEPS)  # fmt: skip
    assert results["attack_success_rate"] == 1.0 and results["judge"].startswith("nudenet, nudity reads 'nude'")
    never = suite_judge("nudenet", "nudity", judge=_PixelNudeNet(256))
    with pytest.raises(ValueError, match="would measure nothing"):
        probe(sd, "nudity", "paraphrase", edits=[cat_edit], judge=never, prompts=["a dog"], budget=2, n=2, steps=STEPS)
    with pytest.raises(ValueError, match="--judge imagenet or nudenet"):
        suite_judge("clip", "a man")


def test_cli_real_model_without_a_judge_says_which_to_give(tmp_path, capsys, sd_folder):
    from concept_edit.cli.app import main

    out = tmp_path / "r.json"
    args = ["probe", "--model", str(sd_folder), "--concept", "nudity", "--attack", "paraphrase", "--out", str(out)]
    assert main(args) == 2
    assert "--judge nudenet" in capsys.readouterr().err and not out.exists()
    assert main([*args[:-2], "--judge", "clip", "--out", str(out)]) == 2
    assert "--judge imagenet or nudenet" in capsys.readouterr().err and not out.exists()


def test_concept_inversion_learns_a_word_on_the_edited_model_and_repeats_for_a_seed(sd, cat_edit):
    """Textual Inversion on the edited model: the loss falls, only the new word is trained (weights untouched),
    each item is drawn once at a fresh seed, and the same seed gives the same attack."""
    from concept_edit.attacks.concept_inversion import INVERSION_SEED, run_concept_inversion
    from concept_edit.attacks.registry import ConceptInversionOptions
    items = [Item("a photo of a cat", 0), Item("a cat", 1), Item("a cat", 2)]
    options = ConceptInversionOptions(samples=3, batch_size=2, lr=0.05)
    before = {k: v.clone() for k, v in {**sd.unet.state_dict(), **sd.text_encoder.state_dict()}.items()}

    def run(seed):
        return run_concept_inversion(sd, pixel_coin(0.5), items, edits=[cat_edit], budget=40, seed=seed,
                                     steps=STEPS, guidance=3.0, options=options, concept="cat")  # fmt: skip

    first = run(0)
    after = {**sd.unet.state_dict(), **sd.text_encoder.state_dict()}
    assert all(torch.equal(after[k], v) for k, v in before.items())  # nothing of the model trained
    assert all(p.requires_grad for p in sd.unet.parameters())  # and the flags restored
    losses = first.extra["loss_history"]
    assert len(losses) == 40 and first.extra["moved"] > 0.01  # the word was trained (the objective: a slow test)
    assert [r["seed"] for r in first.rows] == [3, 4, 5]  # fresh: past every item's seed
    assert INVERSION_SEED not in [r["seed"] for r in first.rows]
    assert all("<learned>" in r["prompt"] for r in first.rows)
    again = run(0)
    assert again.rows == first.rows and again.extra["loss_history"] == losses
    assert run(1).extra["loss_history"] != losses


def test_concept_inversion_refuses_an_initial_word_that_names_the_concept(sd, cat_edit):
    from concept_edit.attacks.concept_inversion import run_concept_inversion
    from concept_edit.attacks.registry import ConceptInversionOptions

    with pytest.raises(ValueError, match="initial word 'cats' names the concept"):
        run_concept_inversion(sd, always(False), [Item("a cat", 0)], edits=[cat_edit], budget=1, seed=0,
                              steps=STEPS, guidance=3.0, options=ConceptInversionOptions(init_word="cats"),
                              concept="cat")  # fmt: skip


def test_concept_inversion_reads_a_folder_of_images_and_refuses_an_empty_one(tmp_path):
    from PIL import Image

    from concept_edit.attacks.concept_inversion import read_images

    (tmp_path / "file.png").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        read_images(tmp_path / "file.png", 16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no readable image"):
        read_images(tmp_path / "empty", 16)
    (tmp_path / "some").mkdir()
    Image.new("RGB", (40, 20), (255, 0, 0)).save(tmp_path / "some" / "a.png")
    (tmp_path / "some" / "b.png").write_text("not an image")
    images = read_images(tmp_path / "some", 16)
    assert images.shape == (1, 16, 16, 3) and (images[..., 0] == 255).all()


def test_probe_runs_concept_inversion_with_given_images(sd, cat_edit):
    """Images given in Python are what the word is learned from; they are refused for another attack."""
    images = np.zeros((2, 32, 32, 3), np.uint8)
    results = probe(sd, "cat", "concept-inversion", edits=[cat_edit], judge=always(True), budget=2, n=2, seed=0,
                    steps=STEPS, images=images, options=None)  # fmt: skip
    assert results["protocol"]["training_images"] == "2 given images" and results["n"] == 2
    with pytest.raises(ValueError, match="images of the concept are for the concept-inversion attack"):
        probe(sd, "cat", "paraphrase", edits=[cat_edit], judge=always(True), images=images, prompts=["a dog"])


@pytest.mark.slow
def test_concept_inversion_lowers_its_objective_on_shapes(shapes):
    """On a model whose drawing depends on its text (the tiny random pipeline's barely does), the learned word
    lowers Textual Inversion's objective on fixed draws."""
    from concept_edit.attacks.concept_inversion import run_concept_inversion
    from concept_edit.attacks.registry import ConceptInversionOptions

    edit = fit(shapes, "uce", EditRequest(concepts=("circle",)))
    outcome = run_concept_inversion(shapes, always(False), [Item("a circle", 0)], edits=[edit], budget=20, seed=0,
                                    steps=10, guidance=5.0, concept="circle",
                                    options=ConceptInversionOptions(samples=4, lr=2e-2))  # fmt: skip
    assert outcome.extra["objective_end"] < 0.97 * outcome.extra["objective_start"]
