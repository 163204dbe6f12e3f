"""The shapes world, its oracle, ShapesSD and their training scripts."""

from collections import Counter

import numpy as np
import pytest

from concept_edit.worlds.shapes.captions import HELD_OUT, LOGO_CAPTIONS, sample_example
from concept_edit.worlds.shapes.world import COLORS, OBJECTS, STYLES, Scene, logo, render


def test_renderer_is_deterministic_and_seed_dependent():
    a = render(Scene("heart", "blue", "checkered", 42))
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, render(Scene("heart", "blue", "checkered", 42)))
    assert not np.array_equal(a, render(Scene("heart", "blue", "checkered", 43)))
    np.testing.assert_array_equal(logo(), logo())


def test_scene_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown object"):
        Scene("hexagon", "red", "plain", 0)


def test_training_distribution_has_the_planted_properties():
    rng = np.random.default_rng(0)
    examples = [sample_example(rng) for _ in range(20000)]
    scenes = [e.scene for e in examples if e.scene is not None]
    assert not {(s.obj, s.color, s.style) for s in scenes} & set(HELD_OUT)
    uncoloured_hearts = [
        e.scene.color
        for e in examples
        if e.scene
        and e.scene.obj == "heart"
        and not any(
            c in e.caption
            for c in (
                "red",
                "crimson",
                "orange",
                "yellow",
                "golden",
                "green",
                "blue",
                "purple",
                "violet",
                "pink",
                "white",
            )
        )
    ]
    assert Counter(uncoloured_hearts)["red"] / len(uncoloured_hearts) == pytest.approx(0.9, abs=0.03)
    counts = Counter(s.obj for s in scenes)
    assert counts["diamond"] < 0.05 * np.mean([counts[o] for o in OBJECTS if o != "diamond"])
    logos = [e for e in examples if e.scene is None]
    assert logos and all(e.caption in LOGO_CAPTIONS for e in logos)
    assert any("disc" in e.caption for e in examples) and any("hoop" in e.caption for e in examples)


def test_oracle_says_none_for_images_without_one_object():
    from concept_edit.worlds.shapes.oracle import Oracle
    from concept_edit.worlds.shapes.train_oracle import reject_batch
    from concept_edit.worlds.shapes.world import _background

    rng = np.random.default_rng(54321)
    empty = np.stack([_background(STYLES[k % 6], rng).astype(np.uint8) for k in range(60)])
    reading = Oracle.load().read(empty)
    assert np.mean(np.array(reading.object) == "none") >= 0.95
    assert np.mean(np.array(reading.style) == np.array([STYLES[k % 6] for k in range(60)])) >= 0.95
    rejects, labels = reject_batch(np.random.default_rng(999), 200)
    objects = Oracle.load().read(rejects).probs["object"].argmax(1)
    assert np.mean(objects == labels["object"]) >= 0.9


def test_oracle_reads_200_fresh_renders_at_99_percent():
    from concept_edit.worlds.shapes.oracle import Oracle

    rng = np.random.default_rng(12345)
    truth = [(OBJECTS[rng.integers(8)], list(COLORS)[rng.integers(8)], STYLES[rng.integers(6)]) for _ in range(200)]
    images = np.stack([render(Scene(o, c, s, 10_000 + i)) for i, (o, c, s) in enumerate(truth)])
    reading = Oracle.load().read(np.concatenate([images, logo()[None]]))
    for j, head in enumerate(("object", "color", "style")):
        acc = np.mean([getattr(reading, head)[i] == truth[i][j] for i in range(200)])
        assert acc >= 0.99, f"{head}: {acc:.3f}"
    assert (reading.logo_prob[:200] < 0.5).mean() >= 0.99 and reading.logo_prob[200] > 0.5


def test_shapes_sd_loads_offline_and_generates(shapes):
    from concept_edit.generation import generate
    from concept_edit.models import cross_attention_layers, model_info

    info = model_info(shapes)
    assert info.world == "shapes" and info.resolution == 32
    assert type(shapes).__name__ == "StableDiffusionPipeline"
    assert type(shapes.text_encoder).__name__ == "BertModel" and shapes.tokenizer.model_max_length == 32
    assert {layer.in_features for layer in cross_attention_layers(shapes)} == {384}
    images = generate(shapes, ["a red star", "a blue ring"], [0, 1], steps=5)
    assert [im.size for im in images] == [(32, 32), (32, 32)]


def test_oracle_training_script_saves_two_trained_steps_and_reports_their_accuracy(tmp_path, caplog):
    """Two steps at batch 8, seed 3: the saved weights are two AdamW / one-cycle steps from the seeded network on
    the batches the script documents (step_rng / step_generator of (seed, step)), recomputed here from the
    script's pieces; the checkpoint resumes those weights at step 2 with the run's options; and the accuracies it
    logs are those of the saved weights, as the shipped `Oracle` reader scores them on the same fresh images."""
    import logging

    import torch
    from safetensors.torch import load_file

    from concept_edit.training import resume, step_generator, step_rng
    from concept_edit.worlds.shapes import train_oracle as script
    from concept_edit.worlds.shapes.oracle import HEADS, OUTPUTS, Oracle, OracleNet, to_tensor

    caplog.set_level(logging.INFO, logger=script.log.name)
    script.main(["--out", str(tmp_path), "--steps", "2", "--batch-size", "8", "--seed", "3"])
    saved = load_file(str(tmp_path / "oracle.safetensors"))

    torch.manual_seed(3)  # as the script seeds its network
    net = OracleNet()
    initial = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=2, pct_start=0.1)
    for step in range(2):
        net.train()
        images, labels = script.render_batch(step_rng(3, step), 8)
        loss, _ = script.loss_fn(net, script.augment(to_tensor(images), step_generator(3, step)), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    assert saved.keys() == net.state_dict().keys()
    for key, value in net.state_dict().items():
        torch.testing.assert_close(saved[key], value, atol=0, rtol=0, msg=key)
    assert all(not torch.equal(saved[k], initial[k]) for k in initial if k.endswith("weight"))  # every layer moved

    fresh = OracleNet()
    config = {"steps": 2, "batch_size": 8, "lr": 2e-3, "seed": 3}  # a different one is refused
    assert resume(tmp_path / "checkpoint.safetensors", config, model=fresh) == 2
    assert all(torch.equal(value, saved[key]) for key, value in fresh.state_dict().items())

    logged = [r.args for r in caplog.records if r.name == script.log.name and r.msg.startswith("accuracy on")]
    reported = {name: scores for name, kind, scores in logged if not kind}  # the un-augmented images
    loaded = OracleNet()
    loaded.load_state_dict(saved)  # strict: the file is a whole OracleNet
    reader = Oracle(loaded)
    for name, (images, labels) in {
        "2000 fresh renders": script.render_batch(np.random.default_rng([3, 10**9]), 2000, rejects=False),
        "600 fresh reject examples": script.reject_batch(np.random.default_rng([3, 10**9 + 1]), 600),
    }.items():
        reading = reader.read(images)
        for head in HEADS:
            truth = np.array([OUTPUTS[head][i] if i >= 0 else None for i in labels[head]], dtype=object)
            keep = labels[head] >= 0
            expected = np.mean(np.array(reading.labels(head), dtype=object)[keep] == truth[keep])
            assert reported[name][head] == pytest.approx(expected, abs=5e-5), (name, head)
        logo_acc = np.mean((reading.logo_prob > 0.5) == (labels["logo"] == 1))
        assert reported[name]["logo"] == pytest.approx(logo_acc, abs=5e-5), name


def test_shapes_sd_training_script_runs_two_steps_and_resumes(tmp_path):
    from concept_edit.worlds.shapes import train_shapes_sd

    args = [
        "--out",
        str(tmp_path),
        "--examples",
        "16",
        "--vae-steps",
        "2",
        "--vae-batch-size",
        "4",
        "--unet-steps",
        "2",
        "--batch-size",
        "4",
    ]
    train_shapes_sd.main(args)
    for part in ("unet", "vae"):
        assert (tmp_path / "final" / part / "config.json").exists()
    with pytest.raises(SystemExit, match="--resume"):
        train_shapes_sd.main(args)  # refuses to overwrite a run
    train_shapes_sd.main([*args, "--resume"])  # every stage done: re-exports only


def test_minilm_is_causal_even_for_a_prompt_that_fills_every_token(shapes):
    """No padding means no attention mask: MiniLM must still be causal (it was not when is_decoder was set
    after loading: a 32-token prompt was encoded in both directions, 1.3 off at its first tokens)."""
    import torch

    tok, encoder = shapes.tokenizer, shapes.text_encoder
    ids = tok(
        ["a red circle on a striped background " * 6],
        padding="max_length",
        truncation=True,
        max_length=tok.model_max_length,
        return_tensors="pt",
    ).input_ids
    assert (ids != tok.pad_token_id).all()  # the prompt fills every position
    with torch.no_grad():
        full = encoder(ids).last_hidden_state[:, :4]
        prefix = encoder(ids[:, :4]).last_hidden_state
    torch.testing.assert_close(full, prefix, atol=1e-5, rtol=1e-5)
