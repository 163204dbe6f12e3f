"""LoRA export: diffusers' own loader gives the applied edit's images; kohya keys go through its converter
(for SDXL, diffusers' kohya-SGM converter), and the LDM names match diffusers' own LDM checkpoint converter."""

import copy
import json
import types

import numpy as np
import pytest
import torch
from safetensors import safe_open

from concept_edit import EditRequest, applied, fit, make_config
from concept_edit.cli.app import main
from concept_edit.edit import Edit, LowRankDelta
from concept_edit.generation import generate, to_array
from concept_edit.lora_export import export_lora, ldm_blocks, ldm_name, model_kind, truncated
from concept_edit.models.loading import model_info


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


@pytest.mark.parametrize("fmt", [None, "diffusers"])
def test_uce_edit_loads_in_diffusers_with_the_same_images(sd, tmp_path, fmt):
    edit = fit(sd, "uce", EditRequest(concepts=("cat",), guide="art"), seed=0, progress=False)
    path = tmp_path / "uce.safetensors"
    report = export_lora(sd, [edit], path, **({"fmt": fmt} if fmt else {}))  # None: the default format
    assert report.relative_error == 0 and {m["rank"] for m in report.modules.values()} == {1}
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
        header = f.metadata()
        meta = json.loads(header["concept_edit"])
    assert header["ss_base_model_version"] == "sd_v1" and header["ss_v2"] == "False"
    assert meta["base_model"] == model_info(sd).spec and "base_model" not in meta["edits"][0]
    if fmt == "diffusers":
        assert all(k.startswith("unet.") and k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys)
    else:
        assert all(k.startswith("lora_unet_") and k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha"))
                   for k in keys)  # fmt: skip
    assert meta["edits"][0]["method"] == "uce" and meta["edits"][0]["concepts"] == ["cat"]
    assert meta["edits"][0]["base_hash"] == edit.manifest["base_hash"]
    assert_lora_equals_edit(sd, edit, path, "a photo of a cat")


def test_esd_lora_factors_and_dense_kv_changes_export(sd, tmp_path):
    fast = {"iterations": 3, "sampling_steps": 3, "lr": 3e-2}
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


def test_bias_changes_are_refused_unless_skipped_and_the_dropped_share_is_stated(sd, tmp_path):
    config = make_config("eigen", samples=2, steps=3, k=1)
    edit = fit(sd, "eigen", EditRequest(concepts=("cat",)), config, seed=0, progress=False)
    with pytest.raises(ValueError, match="bias"):
        export_lora(sd, [edit], tmp_path / "e.safetensors")
    # the same edit folded into weights, to measure what dropping its bias changes leaves out
    folded = fit(sd, "eigen", EditRequest(concepts=("cat",)), make_config("eigen", samples=2, steps=3, k=1, fold=True),
                 seed=0, progress=False)  # fmt: skip
    norms = {c.target: float(c.materialize().double().norm()) for c in folded.changes()}
    dropped = sum(v**2 for k, v in norms.items() if k.endswith(".bias")) ** 0.5
    share = dropped / sum(v**2 for v in norms.values()) ** 0.5
    assert 0.01 < share < 1  # the bias changes are a visible part of the edit: dropping them is not the same edit
    with pytest.raises(ValueError, match=r"leaves out .* --allow-dropped-biases"):
        export_lora(sd, [edit], tmp_path / "e.safetensors", skip_biases=True)
    assert not (tmp_path / "e.safetensors").exists()
    report = export_lora(sd, [edit], tmp_path / "e.safetensors", skip_biases=True, max_error=min(0.99, 2 * share))
    assert report.dropped_share == pytest.approx(share, rel=1e-6)
    assert report.relative_error >= report.dropped_share and all(m["rank"] == 1 for m in report.modules.values())
    report = export_lora(sd, [edit], tmp_path / "f.safetensors", allow_dropped_biases=True)
    assert report.dropped_share == pytest.approx(share, rel=1e-6)
    with safe_open(str(tmp_path / "f.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["concept_edit"])["dropped_share"] == pytest.approx(share, rel=1e-6)


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
    assert main(args) == 0
    assert "LoRA pairs (kohya keys), rank 1" in capsys.readouterr().out
    assert main(args) == 2  # exists, no --force
    assert "exists" in capsys.readouterr().err
    assert main([*args[:-1], str(tmp_path / "big.safetensors"), "--rank", "100000"]) == 2
    assert "larger than" in capsys.readouterr().err
    assert main([*args[:-1], str(tmp_path / "zero.safetensors"), "--rank", "0"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["no-cat", "no-cat.safetensors"]


def _noise(pipe, unet, prompt="a cat"):
    from concept_edit.models.conditioning import encode_conditions, predict_noise

    x, t = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(0)), torch.tensor(400)
    with torch.no_grad():
        return predict_noise(unet, x, t, encode_conditions(pipe, [prompt]))


def assert_fused_lora_equals_edit(pipe, edit, path) -> None:
    """Load `path` with diffusers' own loader, fuse it, and compare every weight with the applied edit."""
    fresh = copy.deepcopy(pipe)
    fresh.load_lora_weights(str(path))
    fresh.fuse_lora()
    fresh.unload_lora_weights()  # keeps the fused weights, drops the peft wrappers: plain state dicts to compare
    components = [c for c in ("unet", "text_encoder", "text_encoder_2") if getattr(pipe, c, None) is not None]
    with applied(pipe, edit):
        for component in components:
            expected, got = getattr(pipe, component).state_dict(), getattr(fresh, component).state_dict()
            assert set(got) == set(expected)
            for key, value in expected.items():
                # both are W + up @ down in float32: allow a few roundings of the sum (a change not loaded,
                # or loaded at the wrong scale, is off by ~1e-2 and more)
                torch.testing.assert_close(got[key], value, rtol=0, atol=4 * torch.finfo(torch.float32).eps * (
                    1 + float(value.abs().max())), msg=lambda m, k=f"{component}.{key}": f"{k}: {m}")  # fmt: skip


@pytest.mark.parametrize("fmt", [None, "diffusers"])
def test_sdxl_uce_lora_loads_in_diffusers(sdxl, tmp_path, fmt):
    edit = fit(sdxl, "uce", EditRequest(concepts=("cat",)), seed=0, progress=False)
    path = tmp_path / "xl.safetensors"
    export_lora(sdxl, [edit], path, **({"fmt": fmt} if fmt else {}))
    with safe_open(str(path), "pt") as f:
        keys, header = set(f.keys()), f.metadata()
    assert header["ss_base_model_version"] == "sdxl_base_v1-0" and header["ss_v2"] == "False"
    if fmt is None:  # kohya's SDXL layout: the LDM block names, not diffusers'
        assert "lora_unet_input_blocks_3_1_transformer_blocks_0_attn2_to_k.lora_down.weight" in keys
        assert "lora_unet_middle_block_1_transformer_blocks_0_attn2_to_v.alpha" in keys
        assert "lora_unet_output_blocks_1_1_transformer_blocks_1_attn2_to_k.lora_up.weight" in keys
        assert not any("down_blocks" in k or "up_blocks" in k or "mid_block" in k for k in keys)
    # diffusers' kohya->diffusers SDXL converter (_maybe_map_sgm_blocks_to_diffusers) maps the names back
    assert_fused_lora_equals_edit(sdxl, edit, path)
    with applied(sdxl, edit):
        expected = _noise(sdxl, sdxl.unet)
    plain, got = _noise(sdxl, sdxl.unet), _noise(sdxl, loaded(sdxl, path).unet)
    assert (expected - plain).abs().max() > 1e-3  # the edit shows in the output, and the unfused LoRA gives it
    # x W + (x A) B rounds differently from x (W + A B): float32 rounding (eps of the output's size) piled up
    # over the UNet's ~100 layers, 1000 eps with margin (~1e-4; measured 1e-6); a module missed is off by 1e-2
    torch.testing.assert_close(got, expected, rtol=0, atol=1000 * torch.finfo(torch.float32).eps * float(
        expected.abs().max()))  # fmt: skip


def _every_layer_edit(pipe) -> Edit:
    """A rank 1-3 change on every Linear and Conv2d weight of the UNet and the text encoders (mixed ranks)."""
    g, changes = torch.Generator().manual_seed(0), []
    for component in ("unet", "text_encoder", "text_encoder_2"):
        for name, module in getattr(pipe, component, torch.nn.Identity()).named_modules():
            if isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
                shape, rank = tuple(module.weight.shape), 1 + len(changes) % 3
                up = torch.randn(shape[0], rank, generator=g)
                down = torch.randn(rank, module.weight[0].numel(), generator=g)
                changes.append(LowRankDelta(f"{component}.{name}.weight", 0.1 * up, 0.1 * down, shape))
    return Edit.create(pipe, changes, method="test", config={}, request={"concepts": ["x"]}, seed=0)


@pytest.mark.parametrize("model", ["sd", "sdxl"])
@pytest.mark.parametrize("fmt", [None, "diffusers"])
def test_every_layer_loads_in_diffusers_with_the_edits_weights(request, tmp_path, model, fmt):
    pipe = request.getfixturevalue(model)
    edit = _every_layer_edit(pipe)
    path = tmp_path / "all.safetensors"
    report = export_lora(pipe, [edit], path, **({"fmt": fmt} if fmt else {}))
    assert len(report.modules) == len(edit.entries) and report.relative_error == 0
    with safe_open(str(path), "pt") as f:
        prefixes = {k.split(".")[0] for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    if fmt is None:
        te = ("lora_te1_", "lora_te2_") if model == "sdxl" else ("lora_te_",)
        assert {p.startswith(("lora_unet_", *te)) for p in prefixes} == {True}
        assert {p[: len(t)] for p in prefixes for t in te if p.startswith(t)} == set(te)
    assert_fused_lora_equals_edit(pipe, edit, path)


@pytest.mark.parametrize("model", ["sd", "sdxl"])
def test_ldm_names_agree_with_diffusers_ldm_checkpoint_converter(request, model):
    """Every UNet parameter renamed to the LDM layout converts back to itself with diffusers' single-file loader."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    unet = request.getfixturevalue(model).unet
    blocks = ldm_blocks(unet.config)
    state = unet.state_dict()
    ldm = {}
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        ldm[f"model.diffusion_model.{ldm_name(module, blocks)}.{param}"] = value
    assert len(ldm) == len(state)  # no two modules share a name
    back = convert_ldm_unet_checkpoint(ldm, dict(unet.config))
    assert set(back) == set(state) and all(back[k] is state[k] for k in state)


def test_model_kind_comes_from_the_loaded_model(sd, sdxl):
    assert model_kind(sd).version == "sd_v1" and not model_kind(sd).v2
    assert model_kind(sdxl).version == "sdxl_base_v1-0"
    unet = types.SimpleNamespace(config=types.SimpleNamespace(cross_attention_dim=1024))
    for prediction, version in (("v_prediction", "sd_v2_v"), ("epsilon", "sd_v2")):
        scheduler = types.SimpleNamespace(config={"prediction_type": prediction})
        sd2 = types.SimpleNamespace(unet=unet, text_encoder=object(), scheduler=scheduler)
        assert model_kind(sd2).version == version and model_kind(sd2).v2
