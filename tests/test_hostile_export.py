"""`export` and `export-lora` under hostile input and interrupts: one clear line (exit 2), or the CLI's
"interrupted" line (exit 130), and nothing half-written; LoRA metadata that tells the truth."""

import json
import signal
import subprocess
import sys
import textwrap
import time
import types

import pytest
from safetensors import safe_open
from test_hostile_input import refused, rewrite_manifest, run, snapshot, work  # noqa: F401 - `work` is a fixture

from concept_edit import EditRequest, fit, make_config
from concept_edit.models import load_pipeline


def lora(sd_folder, edit, out, *extra):
    return ["export-lora", "--model", sd_folder, "--edit", edit, "--out", out, *extra]


@pytest.mark.parametrize("concepts", [[1, 2], [None], [["cat"]]])
@pytest.mark.parametrize("verb", ["export-lora", "export"])
def test_concepts_that_are_not_strings_are_one_line(verb, concepts, sd_folder, work, capsys):  # noqa: F811
    bad = rewrite_manifest(work / "cat" / "edit.safetensors", work / "bad.safetensors",
                           lambda m: {**m, "concepts": concepts})  # fmt: skip
    args = lora(sd_folder, bad, work / "l.safetensors")
    if verb == "export":
        args = ["export", "--model", sd_folder, "--edit", bad, "--out", work / "x"]
    err = refused(args, capsys, work, "'concepts' must be a list of strings")
    assert "bad.safetensors" in err


def test_lora_metadata_names_the_loaded_model_not_the_edits_claim(sd_folder, work, capsys):  # noqa: F811
    claimed = rewrite_manifest(work / "cat" / "edit.safetensors", work / "claim.safetensors",
                               lambda m: {**m, "base_model": "CompVis/stable-diffusion-v1-4"})  # fmt: skip
    code, _, err = run(lora(sd_folder, claimed, work / "l.safetensors"), capsys)
    assert code == 0, err
    with safe_open(str(work / "l.safetensors"), "pt") as f:
        header = f.metadata()
    text = json.dumps(header)
    assert "CompVis" not in text  # the claim is nowhere in the file
    assert json.loads(header["concept_edit"])["base_model"] == header["ss_sd_model_name"] == str(sd_folder)
    assert header["ss_base_model_version"] == "sd_v1" and header["ss_v2"] == "False"


@pytest.fixture
def eigen_edit(sd_folder, work):  # noqa: F811
    pipe = load_pipeline(str(sd_folder), device="cpu")
    edit = fit(pipe, "eigen", EditRequest(concepts=("cat",)), make_config("eigen", samples=2, steps=3, k=1))
    edit.save(work / "eigen")
    return work / "eigen"


def test_skip_biases_states_what_is_dropped_and_refuses_past_max_error(sd_folder, work, eigen_edit, capsys):  # noqa: F811
    out = work / "e.safetensors"
    refused(lora(sd_folder, eigen_edit, out), capsys, work, "--skip-biases")
    err = refused(lora(sd_folder, eigen_edit, out, "--skip-biases"), capsys, work, "--allow-dropped-biases")
    assert "leaves out" in err and "||dropped|| / ||edit||" in err
    code, printed, err = run(lora(sd_folder, eigen_edit, out, "--allow-dropped-biases"), capsys)
    assert code == 0, err
    with safe_open(str(out), "pt") as f:
        share = json.loads(f.metadata()["concept_edit"])["dropped_share"]
    assert 0.01 < share < 1 and f"{share:.3g} of the edit's change" in printed


def test_a_model_without_a_unet_is_one_line(work, capsys):  # noqa: F811
    refused(lora("digits-vae", work / "cat", work / "l.safetensors"), capsys, work, "text-to-image pipeline")


def test_a_unet_outside_the_ldm_layout_is_refused_in_kohya_sdxl_naming():
    from concept_edit.lora_export import ldm_blocks

    config = types.SimpleNamespace(down_block_types=("SimpleCrossAttnDownBlock2D",), up_block_types=("UpBlock2D",),
                                   mid_block_type="UNetMidBlock2DCrossAttn", block_out_channels=(32,),
                                   layers_per_block=1)  # fmt: skip
    with pytest.raises(ValueError, match="no LDM"):
        ldm_blocks(config)


def test_an_embedding_table_change_is_refused_not_written_for_clients_to_ignore(sd, tmp_path):
    import torch

    from concept_edit.edit import DenseDelta, Edit
    from concept_edit.lora_export import export_lora

    name = next(n for n, m in sd.text_encoder.named_modules() if isinstance(m, torch.nn.Embedding))
    table = f"text_encoder.{name}.weight"
    shape = tuple(sd.text_encoder.get_submodule(name).weight.shape)
    edit = Edit.create(sd, [DenseDelta(table, torch.ones(shape) * 1e-2)], method="test", config={},
                       request={"concepts": ["x"]}, seed=0)  # fmt: skip
    with pytest.raises(ValueError, match="only Linear and Conv2d"):
        export_lora(sd, [edit], tmp_path / "t.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_format_help_says_the_diffusers_format_is_for_diffusers_only(capsys):
    assert run(["export-lora", "--help"], capsys)[0] == 0
    help_text = " ".join(capsys.readouterr().out.split()) or " ".join(run(["export-lora", "--help"], capsys)[1].split())
    assert "diffusers only (ComfyUI and AUTOMATIC1111 ignore it)" in help_text and "kohya (default)" in help_text


# -- Ctrl-C around `export` and `export-lora` ----------------------------------------------------------------------
OUTPUTS = {"export": ("x", "model_index.json"), "export-lora": ("x.safetensors", None)}


def _child(verb, sd_folder, folder, patch: str) -> subprocess.Popen:
    script = textwrap.dedent(
        f"""
        import sys
        import diffusers, safetensors.torch
        from concept_edit.cli.app import main
        {patch}
        sys.exit(main([{verb!r}, "--model", {str(sd_folder)!r}, "--edit", {str(folder / "cat")!r},
                       "--out", {str(folder / OUTPUTS[verb][0])!r}]))
        """
    )
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("verb", ["export", "export-lora"])
def test_ctrl_c_while_writing_is_interrupted_and_leaves_nothing(verb, sd_folder, work):  # noqa: F811
    # A Ctrl-C that lands inside a C writer comes back as an unrelated error (the hostile run saw "could not
    # determine the shape of object type 'UntypedStorage'"): simulate such a writer, the signal arriving in it.
    owner, name = ("diffusers.DiffusionPipeline", "save_pretrained") if verb == "export" else ("safetensors.torch",
                                                                                               "save_file")  # fmt: skip
    patch = textwrap.dedent(
        f"""
        import os, signal
        real = {owner}.{name}
        def writer(*args, **kw):
            try:
                os.kill(os.getpid(), signal.SIGINT)
                return real(*args, **kw)
            except KeyboardInterrupt:
                raise ValueError("could not determine the shape of object type 'UntypedStorage'") from None
        {owner}.{name} = writer
        """
    ).replace("\n", "\n        ")
    before = snapshot(work)
    child = _child(verb, sd_folder, work, patch)
    out, err = child.communicate(timeout=300)
    assert child.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith(f"concept-edit: interrupted: {verb} stopped before it finished")
    assert "Traceback" not in err and "UntypedStorage" not in err and "wrote" not in out
    assert snapshot(work) == before  # no output, no hidden temporary file or folder


@pytest.mark.parametrize("verb", ["export", "export-lora"])
def test_ctrl_c_as_the_verb_exits_keeps_the_complete_output_without_a_traceback(verb, sd_folder, work):  # noqa: F811
    child = _child(verb, sd_folder, work, "")
    line = child.stdout.readline()
    assert line.startswith("wrote"), child.stderr.read()
    while child.poll() is None:  # Ctrl-C again and again while the program finishes and exits
        child.send_signal(signal.SIGINT)
        time.sleep(0.002)
    err = child.stderr.read()
    assert child.returncode == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err and "nothing was written" not in err
    out, inner = OUTPUTS[verb]
    assert (work / out / inner).is_file() if inner else (work / out).is_file()
