"""LoRA export: diffusers' own loader gives the applied edit's images; kohya keys go through its converter."""

import copy
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from concept_edit import EditRequest, applied, fit, make_config
from concept_edit.cli import main
from concept_edit.generation import generate, to_array
from concept_edit.lora_export import export_lora, truncated


def images(pipe, prompt):
    return to_array(generate(pipe, [prompt, prompt], [0, 1], steps=3)).astype(np.float32) / 255


def loaded(pipe, path):
    fresh = copy.deepcopy(pipe)
    fresh.load_lora_weights(str(path))
    return fresh


LEVEL = 1 / 255  # one uint8 step: float rounding in merged vs applied weights can flip a pixel by one level


def assert_lora_equals_edit(pipe, edit, path, prompt, atol=LEVEL + 1e-6):
    with applied(pipe, edit):
        expected = images(pipe, prompt)
    unedited = images(pipe, prompt)
    got = images(loaded(pipe, path), prompt)
    assert np.abs(expected - unedited).max() > 5 * LEVEL  # the edit shows, so equality below means something
    np.testing.assert_allclose(got, expected, atol=atol)
    assert np.mean(got != expected) < 0.01  # and almost every pixel is exactly the same


@pytest.mark.parametrize("fmt", ["diffusers", "kohya"])
def test_uce_edit_loads_in_diffusers_with_the_same_images(sd, tmp_path, fmt):
    edit = fit(sd, "uce", EditRequest(concepts=("cat",), guide="art"), seed=0, progress=False)
    path = tmp_path / "uce.safetensors"
    report = export_lora(sd, [edit], path, fmt=fmt)
    assert report.relative_error == 0 and {m["rank"] for m in report.modules.values()} == {1}
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
        meta = json.loads(f.metadata()["concept_edit"])
    if fmt == "diffusers":
        assert all(k.startswith("unet.") and k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys)
    else:
        assert all(k.startswith("lora_unet_") and k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha"))
                   for k in keys)  # fmt: skip
    assert meta["edits"][0]["method"] == "uce" and meta["edits"][0]["concepts"] == ["cat"]
    assert meta["edits"][0]["base_hash"] == edit.manifest["base_hash"]
    assert_lora_equals_edit(sd, edit, path, "a photo of a cat")


def test_esd_lora_factors_and_dense_kv_changes_export(sd, tmp_path):
    fast = {"iterations": 3, "pool_trajectories": 2, "sampling_steps": 3, "lr": 3e-2}
    lora = fit(sd, "esd", EditRequest(concepts=("cat",)), make_config("esd", variant="kv", lora_rank=2, **fast),
               seed=0, progress=False)  # fmt: skip
    report = export_lora(sd, [lora], tmp_path / "lora.safetensors")
    assert {m["rank"] for m in report.modules.values()} == {2} and report.relative_error == 0
    assert_lora_equals_edit(sd, lora, tmp_path / "lora.safetensors", "a photo of a cat")

    dense = fit(sd, "esd", EditRequest(concepts=("cat",)), make_config("esd", variant="kv", **fast), seed=0,
                progress=False)  # fmt: skip
    report = export_lora(sd, [dense], tmp_path / "dense.safetensors", max_error=1e-3)
    assert all(m["relative_error"] <= 1e-3 for m in report.modules.values())
    assert_lora_equals_edit(sd, dense, tmp_path / "dense.safetensors", "a photo of a cat", atol=5e-3)
    with pytest.raises(ValueError, match="relative error"):
        export_lora(sd, [dense], tmp_path / "r1.safetensors", rank=1, max_error=1e-6)
    assert not (tmp_path / "r1.safetensors").exists()


def test_bias_changes_are_refused_unless_skipped(sd, tmp_path):
    edit = fit(sd, "eigen", EditRequest(concepts=("cat",)), make_config("eigen", samples=2, steps=3, k=1),
               seed=0, progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="bias"):
        export_lora(sd, [edit], tmp_path / "e.safetensors")
    report = export_lora(sd, [edit], tmp_path / "e.safetensors", skip_biases=True)
    assert report.dropped_biases and all(m["rank"] == 1 for m in report.modules.values())  # the fold is rank k


def test_sparse_edits_are_refused(sd, tmp_path):
    edit = fit(sd, "cad", EditRequest(concepts=("cat",)), make_config("cad", samples=1, steps=3), seed=0,
               progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="no LoRA form"):
        export_lora(sd, [edit], tmp_path / "c.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_truncated_svd_error_on_a_known_spectrum():
    u, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))
    s = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.5], dtype=torch.float64)
    delta = u[:, :5] @ torch.diag(s) @ v.T
    up, down, error = truncated(delta, 2, 0.01)
    assert up.shape == (6, 2) and down.shape == (2, 5)
    assert error == pytest.approx(float((2**2 + 1 + 0.25) ** 0.5 / (16 + 9 + 4 + 1 + 0.25) ** 0.5), rel=1e-9)
    assert truncated(delta, None, 0.1)[2] <= 0.1 and truncated(delta, None, 0.1)[0].shape[1] == 4  # smallest rank
    with pytest.raises(ValueError, match="larger than"):
        truncated(delta, 6, 0.01)


def test_shapes_uce_lora_loads_in_diffusers(shapes, tmp_path):
    edit = fit(shapes, "uce", EditRequest(concepts=("circle",)), seed=0, progress=False)
    export_lora(shapes, [edit], tmp_path / "circle.safetensors")
    assert_lora_equals_edit(shapes, edit, tmp_path / "circle.safetensors", "a red circle on a striped background")


def test_cli_export_lora_and_bad_input(sd, sd_folder, tmp_path, capsys):
    edit_dir = tmp_path / "no-cat"
    assert main(["edit", "uce", "--model", str(sd_folder), "--concept", "cat", "--out", str(edit_dir)]) == 0
    out = tmp_path / "no-cat.safetensors"
    args = ["export-lora", "--model", str(sd_folder), "--edit", str(edit_dir), "--out", str(out)]
    assert main([*args, "--format", "kohya"]) == 0
    assert "LoRA pairs (kohya keys), rank 1" in capsys.readouterr().out
    assert main(args) == 2  # exists, no --force
    assert "exists" in capsys.readouterr().err
    assert main([*args[:-1], str(tmp_path / "big.safetensors"), "--rank", "100000"]) == 2
    assert "larger than" in capsys.readouterr().err
    assert main([*args[:-1], str(tmp_path / "zero.safetensors"), "--rank", "0"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["no-cat", "no-cat.safetensors"]


def test_sdxl_diffusers_lora_and_kohya_refusal(sdxl, tmp_path):
    edit = fit(sdxl, "uce", EditRequest(concepts=("cat",)), seed=0, progress=False)
    path = tmp_path / "xl.safetensors"
    export_lora(sdxl, [edit], path)
    fresh = loaded(sdxl, path)
    from concept_edit.models.conditioning import encode_conditions, predict_noise

    x, t = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(0)), torch.tensor(400)
    cond = encode_conditions(sdxl, ["a cat"])
    with torch.no_grad():
        with applied(sdxl, edit):
            expected = predict_noise(sdxl.unet, x, t, cond)
        plain = predict_noise(sdxl.unet, x, t, cond)
        got = predict_noise(fresh.unet, x, t, cond)
    assert (expected - plain).abs().max() > 1e-3
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="sgm"):
        export_lora(sdxl, [edit], tmp_path / "k.safetensors", fmt="kohya")
