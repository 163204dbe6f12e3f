"""trainable(): a fine-tuning method trains, gets its change back as an edit, and the pipeline is restored."""

from dataclasses import dataclass

import pytest
import torch
from test_edit_kinds import assert_same_bytes, state, unet_output

from concept_edit import DenseDelta, Edit, EditError, EditRequest, applied, apply, fit, trainable
from concept_edit.methods import registry
from concept_edit.models.targets import get_parameter, parameters_by_role


def train(pipe, parameters, steps: int = 3) -> None:
    """A few optimiser steps that pull the UNet's output toward zero."""
    optimizer = torch.optim.Adam(parameters, lr=0.05)  # a fixed-size step: tiny gradients still move the output
    for _ in range(steps):
        optimizer.zero_grad()
        g = torch.Generator().manual_seed(0)
        latents = torch.randn(2, 4, 8, 8, generator=g)
        text = torch.randn(2, 5, pipe.unet.config.cross_attention_dim, generator=g)
        pipe.unet(latents, 10, encoder_hidden_states=text).sample.square().mean().backward()
        optimizer.step()


def flags(pipe) -> dict[str, bool]:
    return {n: p.requires_grad for n, p in pipe.unet.named_parameters()}


@pytest.mark.parametrize("kind", ["dense", "low_rank"])
def test_training_becomes_an_edit_and_the_pipeline_gets_its_weights_back(sd, kind, tmp_path):
    original, before, grad_flags = state(sd), unet_output(sd), flags(sd)
    params = parameters_by_role(sd, "cross-attn")
    if kind == "low_rank":
        params = {k: p for k, p in params.items() if k.endswith(("to_k.weight", "to_v.weight"))}
    torch.manual_seed(0)  # peft draws the LoRA A factors from the global generator
    with trainable(sd, params, kind=kind, rank=2) as tuned:
        train(sd, tuned.parameters)
        trained = unet_output(sd)
    assert (trained - before).abs().max() > 1e-2
    assert_same_bytes(sd, original)
    assert unet_output(sd).equal(before) and flags(sd) == grad_flags
    assert all(not type(m).__module__.startswith("peft") for m in sd.unet.modules())  # adapters removed
    edit = Edit.load(tuned.edit(method="test", config={}, request={"concepts": ["x"]}, seed=0).save(tmp_path / "e"))
    assert set(edit.kinds) == {kind} and set(edit.targets) == set(params)
    with applied(sd, edit):
        torch.testing.assert_close(unet_output(sd), trained, rtol=1e-5, atol=1e-5)
    assert_same_bytes(sd, original)


def test_low_rank_edit_holds_the_lora_factors_at_their_rank(sd):
    key = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v.weight"
    with trainable(sd, [key], kind="low_rank", rank=3, alpha=6.0) as tuned:
        train(sd, tuned.parameters)
    (change,) = tuned.changes
    assert change.kind == "low_rank" and change.rank == 3 and change.shape == tuple(get_parameter(sd, key).shape)


def test_an_exception_inside_the_block_restores_everything_and_gives_no_edit(sd):
    original, grad_flags = state(sd), flags(sd)
    with pytest.raises(KeyboardInterrupt), trainable(sd, parameters_by_role(sd, "ff")) as tuned:
        train(sd, tuned.parameters, steps=1)
        raise KeyboardInterrupt
    assert_same_bytes(sd, original)
    assert flags(sd) == grad_flags
    with pytest.raises(EditError, match="has not finished"):
        tuned.edit(method="test", config={}, request={}, seed=0)


def test_tuned_weights_cannot_be_made_into_an_edit_or_edited_inside_the_block(sd):
    from test_edit_kinds import make_change, make_edit

    change = make_change(sd, "dense")
    outside = make_edit(sd, change)
    with trainable(sd, [change.target]) as tuned:
        train(sd, tuned.parameters, steps=1)
        with pytest.raises(EditError, match="being fine-tuned"):
            make_edit(sd, change)
        with pytest.raises(EditError, match="being fine-tuned"):
            apply(sd, outside)
        with pytest.raises(EditError, match="already being fine-tuned"), trainable(sd, [change.target]):
            pass


def test_training_that_changes_nothing_gives_a_clear_error(sd):
    with trainable(sd, ["unet.conv_in.weight"]) as tuned:
        pass
    with pytest.raises(EditError, match="changed no weight"):
        tuned.edit(method="test", config={}, request={}, seed=0)


def test_low_rank_refuses_a_parameter_that_is_not_a_linear_or_conv_weight(sd):
    with pytest.raises(ValueError, match="Linear and Conv2d"), trainable(sd, ["unet.conv_in.bias"], kind="low_rank"):
        pass


# -- a method that forgets to restore the weights is caught --------------------------------------------------------
KEY = "unet.conv_in.weight"


@pytest.fixture
def method_slot():
    """Register a test method as 'careless' and remove it afterwards."""

    @dataclass(frozen=True)
    class Config:
        pass

    yield lambda fit_fn: registry.register("careless", Config, ["erase"], "test only")(fit_fn)
    registry._REGISTRY.pop("careless", None)


def test_edit_create_refuses_weights_the_method_changed_without_restoring(sd, method_slot):
    def fit_in_place(pipe, request, config, inputs, *, seed, progress):
        param = get_parameter(pipe, KEY)
        with torch.no_grad():
            param.add_(0.1)  # trains in place, without trainable(): the pipeline's weights are no longer its base
        delta = DenseDelta(KEY, torch.ones(param.shape))
        return Edit.create(pipe, [delta], method="careless", config={}, request={}, seed=seed)

    method_slot(fit_in_place)
    with pytest.raises(EditError, match="changed since the method started"):
        fit(sd, "careless", EditRequest(concepts=("cat",)))


def test_fit_refuses_a_method_that_leaves_weights_changed(sd, method_slot):
    def fit_and_leave(pipe, request, config, inputs, *, seed, progress):
        param = get_parameter(pipe, KEY)
        edit = Edit.create(
            pipe, [DenseDelta(KEY, torch.ones(param.shape))], method="careless", config={}, request={}, seed=0
        )
        with torch.no_grad():
            param.add_(0.1)
        return edit

    method_slot(fit_and_leave)
    with pytest.raises(RuntimeError, match="left 1 weight"):
        fit(sd, "careless", EditRequest(concepts=("cat",)))


def test_fit_refuses_a_method_that_leaves_an_edit_applied(sd, method_slot):
    def fit_and_apply(pipe, request, config, inputs, *, seed, progress):
        param = get_parameter(pipe, KEY)
        edit = Edit.create(
            pipe, [DenseDelta(KEY, torch.ones(param.shape))], method="careless", config={}, request={}, seed=0
        )
        apply(pipe, edit)
        return edit

    method_slot(fit_and_apply)
    with pytest.raises(RuntimeError, match="left 1 edit"):
        fit(sd, "careless", EditRequest(concepts=("cat",)))


def test_low_rank_tuning_leaves_no_peft_attributes(sd):
    key = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v.weight"
    with trainable(sd, [key], kind="low_rank") as tuned:
        train(sd, tuned.parameters, steps=1)
    assert not hasattr(sd.unet, "peft_config")


def test_the_kept_originals_are_shared_not_copied_on_the_cpu(sd):
    """Issue 29: ESD's frozen model and EWC's theta* read trainable()'s own copy of the original weights on the
    CPU (one copy of the trained tensors, not two); a dtype that differs gets its own; training leaves them be."""
    import torch

    from concept_edit.edit.tuning import trainable

    key = sorted(parameters_by_role(sd, "cross-attn"))[0]
    before = get_parameter(sd, key).detach().clone()
    with trainable(sd, [key]) as tuned:
        (param,) = tuned.parameters
        kept = tuned.original(param)
        assert kept.data_ptr() == tuned.originals[id(param)].data_ptr() != param.data_ptr()
        assert tuned.original(param, torch.float64).dtype == torch.float64  # converted: a copy of its own
        with torch.no_grad():
            param.add_(1.0)
        assert torch.equal(kept, before) and not torch.equal(param.detach(), before)
    assert torch.equal(get_parameter(sd, key), before)
    assert tuned.originals == {}  # released with the block
