"""UCE's encoding padded to each batch's longest prompt gives the rows max-length padding gives, on every
encoder family (SD 1.x and 2.x CLIP, SDXL's two CLIPs, ShapesSD's MiniLM), and the same edit; a bidirectional
encoder that sees the padding keeps max-length padding."""

import copy

import pytest
import torch

from concept_edit import EditRequest
from concept_edit.methods.uce.fit import UCEConfig, _erase, encode, target_weights
from concept_edit.models.prompts import (
    _encode_short,
    _padding_to,
    encode_prompt_tokens,
    encode_prompts,
    padding_is_invisible,
    token_counts,
)

# Lengths 2 ("") to 11 tokens in one call; the fixture tokenizer spells unknown words byte by byte.
CLIP_PROMPTS = ["a photo of a cat", "", "art by van gogh", "dog", "a red car by a tree", "cat", "painting by zq"]
SHAPES_PROMPTS = ["a red circle", "", "a heart", "a big blue five-pointed star on a striped background", "a square"]
# Float32 rounding only: the two paddings run matrix products of different sizes. Measured max |diff| over the
# values' max |value|: embeddings 1.6e-7 (SDXL) to 3.5e-7 (MiniLM), edits 2e-7 to 1.4e-6; padding that leaks
# into the rows (a bidirectional encoder) changes them by ~10%.
RTOL = 1e-5


@pytest.fixture
def sd2(sd):
    """SD 2.x's text side: CLIP with GELU (OpenCLIP's activation) and a tokenizer that pads with "!", not EOS."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel, CLIPTokenizer

    config = copy.deepcopy(sd.text_encoder.config)
    config.hidden_act = "gelu"
    torch.manual_seed(2)
    tokenizer = CLIPTokenizer.from_pretrained(sd.tokenizer.name_or_path, pad_token="!")
    parts = {**sd.components, "tokenizer": tokenizer, "text_encoder": CLIPTextModel(config).eval()}
    return StableDiffusionPipeline(**parts)


@pytest.fixture
def minilm_bidirectional(shapes):
    """ShapesSD with MiniLM as pretrained (bidirectional) and no attention mask: every token sees the padding."""
    shapes.text_encoder.config.is_decoder = False
    shapes.text_encoder.config.use_attention_mask = False
    for module in shapes.text_encoder.modules():
        if hasattr(module, "is_causal"):
            module.is_causal = False
    return shapes


def _prompts(name):
    return SHAPES_PROMPTS if name in ("shapes", "minilm_bidirectional") else CLIP_PROMPTS


def _lengths_run(pipe):
    """Record the sequence length of every call to the pipeline's text encoders."""
    seen = []
    for encoder in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
        if encoder is not None:
            encoder.register_forward_pre_hook(lambda _m, args, kwargs: seen.append(args[0].shape[1]), with_kwargs=True)
    return seen


def _assert_rows_equal(rows, full, counts):
    scale = full.abs().max().item()
    for r, f, n in zip(rows, full, counts, strict=True):
        assert r.shape == (n, full.shape[-1])
        torch.testing.assert_close(r, f[:n], rtol=0, atol=RTOL * scale)


@pytest.mark.parametrize("pipe_name", ["sd", "sd2", "sdxl", "shapes"])
@pytest.mark.parametrize("sort", [True, False])
def test_rows_equal_max_length_padding(pipe_name, sort, request):
    pipe = request.getfixturevalue(pipe_name)
    prompts = _prompts(pipe_name)
    full = encode_prompts(pipe, prompts)
    seen = _lengths_run(pipe)
    rows = encode_prompt_tokens(pipe, prompts, batch_size=3, sort=sort)
    assert padding_is_invisible(pipe)
    assert max(seen) < pipe.tokenizer.model_max_length  # the short path ran
    _assert_rows_equal(rows, full, token_counts(pipe, prompts))


def test_sorting_by_length_shortens_the_batches(sd):
    seen = _lengths_run(sd)
    encode_prompt_tokens(sd, CLIP_PROMPTS, batch_size=3, sort=False)
    unsorted, seen[:] = sum(seen), []
    encode_prompt_tokens(sd, CLIP_PROMPTS, batch_size=3, sort=True)
    assert sum(seen) < unsorted


def test_minilm_batch_without_padding_stays_causal(shapes):
    # equal lengths: padded to exactly their length nothing would be padded, transformers would drop the mask
    # and MiniLM (causal through its mask only) would attend both ways; the batch keeps one pad position
    prompts = ["a circle", "a heart", "a square"]
    counts = token_counts(shapes, prompts)
    assert len(set(counts)) == 1
    _assert_rows_equal(encode_prompt_tokens(shapes, prompts), encode_prompts(shapes, prompts), counts)


def test_float64_encoders_agree_to_rounding(sdxl):
    # in float64 the only difference left is the final cast to float32: at most one rounding step
    sdxl.text_encoder.double()
    sdxl.text_encoder_2.double()
    full = encode_prompts(sdxl, CLIP_PROMPTS)
    rows = encode_prompt_tokens(sdxl, CLIP_PROMPTS)
    for r, f in zip(rows, full, strict=True):
        torch.testing.assert_close(r, f[: len(r)], rtol=2**-23, atol=1e-30)


def test_sdxl_pooled_output_is_unchanged(sdxl):
    # not read by UCE, but what SDXL's added conditioning reads: CLIP pools at the end-of-text token
    prompts = ["a photo of a cat", "dog"]
    kwargs = {"prompt": prompts, "device": "cpu", "num_images_per_prompt": 1, "do_classifier_free_guidance": False}
    full = sdxl.encode_prompt(**kwargs)[2]
    with _padding_to(sdxl, max(token_counts(sdxl, prompts)) + 1):
        short = sdxl.encode_prompt(**kwargs)[2]
    torch.testing.assert_close(short, full, rtol=0, atol=RTOL * full.abs().max().item())


def test_bidirectional_encoder_without_mask_keeps_max_length_padding(minilm_bidirectional):
    pipe, prompts = minilm_bidirectional, SHAPES_PROMPTS
    counts = token_counts(pipe, prompts)
    full = encode_prompts(pipe, prompts)
    naive = _encode_short(pipe, prompts, counts, batch_size=64, sort=True)
    leaked = max((n - f[: len(n)]).abs().max().item() for n, f in zip(naive, full, strict=True))
    assert leaked > 100 * RTOL * full.abs().max().item()  # padding to the longest would change the rows
    assert not padding_is_invisible(pipe)
    seen = _lengths_run(pipe)
    _assert_rows_equal(encode_prompt_tokens(pipe, prompts), full, counts)
    assert set(seen) == {pipe.tokenizer.model_max_length}


def test_bidirectional_encoder_given_the_mask_pads_to_the_longest(minilm_bidirectional):
    pipe = minilm_bidirectional
    pipe.text_encoder.config.use_attention_mask = True  # the mask hides the padding from every real token
    assert padding_is_invisible(pipe)
    full = encode_prompts(pipe, SHAPES_PROMPTS)
    _assert_rows_equal(encode_prompt_tokens(pipe, SHAPES_PROMPTS), full, token_counts(pipe, SHAPES_PROMPTS))


def test_uce_reads_only_computed_rows(sd):
    prompts = ["a photo of a cat", "dog"]
    short, spans = encode(sd, prompts, "last")
    counts = token_counts(sd, prompts)
    assert short.shape[1] == max(counts) and short[1, counts[1] :].isnan().all()
    assert all(last < n - 1 for (_, last), n in zip(spans, counts, strict=True))  # before end-of-text
    trailing, _ = encode(sd, prompts, "trailing")  # reads the padding: max length, every row computed
    assert trailing.shape[1] == sd.tokenizer.model_max_length and not trailing.isnan().any()


def _edit(pipe, request, config, padded):
    deltas, _ = _erase(pipe, request, config, target_weights(pipe, config.edit_keys), padded=padded)
    return {d.target: d.materialize().double() for d in deltas}


@pytest.mark.parametrize(
    ("pipe_name", "tokens", "mode"),
    [("sd", "last", "erase"), ("sd", "all", "erase"), ("sdxl", "last", "moderate"), ("shapes", "all", "erase")],
)
def test_edit_equals_the_max_length_padded_edit(pipe_name, tokens, mode, request):
    pipe = request.getfixturevalue(pipe_name)
    prompts = _prompts(pipe_name)
    concepts = tuple(p for p in prompts if p)[:2]
    preserve = tuple(p for p in prompts if p and p not in concepts)
    guide = {} if mode == "moderate" else {"guide": "art" if pipe_name != "shapes" else ""}
    req = EditRequest(concepts=concepts, preserve=preserve, mode=mode, **guide)
    config = UCEConfig(tokens=tokens)
    fast, padded = _edit(pipe, req, config, False), _edit(pipe, req, config, True)
    assert fast.keys() == padded.keys()
    for key in fast:
        # the deltas are stored in float32; embeddings that differ by float32 rounding move them about as much
        torch.testing.assert_close(fast[key], padded[key], rtol=0, atol=RTOL * padded[key].abs().max().item())


@pytest.mark.parametrize("tokens", ["last", "all"])
def test_debias_edit_equals_the_max_length_padded_edit(sd, monkeypatch, tokens):
    """Debias encodes by its token mode too: the same scripted judge gives the same edit either way."""
    import concept_edit.methods.uce.fit as uce
    from concept_edit import fit
    from concept_edit.methods.uce.fit import UCEInputs

    def judge(images, attributes):  # every doctor read as male: the loop steps every iteration
        return [0] * len(images)

    config = UCEConfig(tokens=tokens, debias_images=2, debias_steps=1, debias_max_iterations=2)
    req = EditRequest(concepts=("doctor",), mode="debias", attributes=("male", "female"))
    fast = fit(sd, "uce", req, config, UCEInputs(classifier=judge), seed=0, progress=False)
    real_encode = uce.encode
    monkeypatch.setattr(
        uce, "encode", lambda pipe, prompts, tokens=None, **kw: real_encode(pipe, prompts, tokens, padded=True)
    )
    padded = fit(sd, "uce", req, config, UCEInputs(classifier=judge), seed=0, progress=False)
    for key in fast.targets:
        expected = padded.weight_delta(key).double()
        assert expected.abs().max() > 0
        torch.testing.assert_close(
            fast.weight_delta(key).double(), expected, rtol=0, atol=RTOL * expected.abs().max().item()
        )
