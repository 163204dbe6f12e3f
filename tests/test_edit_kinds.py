"""The four kinds of change: each round-trips save/load/apply/revert exactly in fp32, fp16 and bf16; compose
equals applying in order; hooks never outlive their edit; a file the library cannot use is refused whole."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from concept_edit import (
    ActivationProjection,
    DenseDelta,
    Edit,
    EditError,
    LowRankDelta,
    SparseSet,
    applied,
    apply,
    compose,
    revert,
)
from concept_edit.edit import applied_edits, get_module
from concept_edit.edit import state as edit_state
from concept_edit.models.targets import get_parameter

ATTN = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2"
KINDS = ("dense", "low_rank", "sparse", "activation")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def make_change(pipe, kind: str, seed: int = 0, target: str | None = None):
    """A random change of `kind` on the tiny pipeline, large enough to move the UNet's output."""
    g = torch.Generator().manual_seed(seed)
    if kind == "activation":
        dim = get_module(pipe, ATTN).to_out[0].out_features
        return ActivationProjection.of(target or ATTN, torch.randn(2, dim, generator=g))
    key = (
        target
        or {
            "dense": "unet.conv_in.weight",
            "low_rank": f"{ATTN}.to_v.weight",
            "sparse": "unet.conv_out.weight",
        }[kind]
    )
    shape = tuple(get_parameter(pipe, key).shape)
    if kind == "dense":
        return DenseDelta(key, torch.randn(shape, generator=g) * 0.2)
    if kind == "low_rank":
        up, down = torch.randn(shape[0], 2, generator=g), torch.randn(2, shape[1], generator=g) * 0.2
        return LowRankDelta(key, up, down, shape)
    numel = get_parameter(pipe, key).numel()
    indices = torch.randperm(numel, generator=g)[: numel // 4]
    return SparseSet.of(key, shape, indices, torch.randn(len(indices), generator=g))


def make_edit(pipe, *changes, dtype=None) -> Edit:
    return Edit.create(pipe, changes, method="test", config={}, request={"concepts": ["x"]}, seed=0, dtype=dtype)


def unet_output(pipe) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    dtype = pipe.unet.dtype
    latents = torch.randn(2, 4, 8, 8, generator=g).to(dtype)
    text = torch.randn(2, 5, pipe.unet.config.cross_attention_dim, generator=g).to(dtype)
    with torch.no_grad():
        return pipe.unet(latents, 10, encoder_hidden_states=text).sample


def state(pipe) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in pipe.unet.state_dict().items()}


def assert_same_bytes(pipe, reference) -> None:
    for key, value in pipe.unet.state_dict().items():
        assert value.dtype == reference[key].dtype and torch.equal(value, reference[key]), key


def hooks(pipe) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in pipe.unet.modules())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_round_trips_exactly(sd, kind, dtype, tmp_path):
    pipe = sd.to(dtype)
    original, before = state(pipe), unet_output(pipe)
    edit = make_edit(pipe, make_change(pipe, kind))
    with applied(pipe, edit):
        in_memory = unet_output(pipe)
    assert_same_bytes(pipe, original)
    loaded = Edit.load(edit.save(tmp_path / "e"))
    assert loaded.kinds == [kind] and loaded.manifest["kinds"] == [kind]
    apply(pipe, loaded)
    assert not torch.equal(unet_output(pipe), before)
    assert torch.equal(unet_output(pipe), in_memory)  # the file gives exactly the in-memory edit
    revert(pipe)
    assert_same_bytes(pipe, original)
    assert torch.equal(unet_output(pipe), before)
    assert hooks(pipe) == 0 and applied_edits(pipe) == []


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dense_and_sparse_are_stored_in_the_models_dtype_unless_asked(sd, dtype, tmp_path):
    pipe = sd.to(dtype)
    edit = make_edit(pipe, make_change(pipe, "dense"), make_change(pipe, "sparse"), make_change(pipe, "low_rank"))
    infos = [json.loads(safe_open(str(edit.save(tmp_path / "e")), "pt").metadata()["concept_edit"])["changes"]]
    assert [c["dtype"] for c in infos[0]] == [str(dtype)[6:], str(dtype)[6:], "float32"]
    wide = make_edit(pipe, make_change(pipe, "dense"), dtype=torch.float32)
    assert next(wide.changes()).delta.dtype == torch.float32


def test_a_dense_delta_is_added_with_one_rounding_to_the_models_dtype(sd):
    pipe = sd.to(torch.float16)
    change = make_change(pipe, "dense")
    key = change.target
    expected = (get_parameter(pipe, key).detach().float() + change.delta.half().float()).half()
    with applied(pipe, make_edit(pipe, change)):
        assert torch.equal(get_parameter(pipe, key).detach(), expected)


def test_sparse_sets_exactly_the_listed_entries(sd):
    change = make_change(sd, "sparse")
    param = get_parameter(sd, change.target)
    before = param.detach().clone().view(-1)
    with applied(sd, make_edit(sd, change)):
        after = param.detach().view(-1)
        index = change.indices.long()
        assert torch.equal(after[index], change.values)
        untouched = torch.ones(len(after), dtype=torch.bool)
        untouched[index] = False
        assert torch.equal(after[untouched], before[untouched])


def test_activation_projection_is_eq6_for_one_direction(sd):
    """One direction u: the module's output becomes eta - <u, eta> u / |u| with u of unit length (eq. 6)."""
    module = get_module(sd, ATTN)
    captured = {}
    handle = module.register_forward_hook(lambda _m, _a, out: captured.setdefault("out", out.detach().clone()))
    unet_output(sd)
    handle.remove()
    u = torch.randn(module.to_out[0].out_features, generator=torch.Generator().manual_seed(3))
    edit = make_edit(sd, ActivationProjection.of(ATTN, u))
    projected = {}
    with applied(sd, edit):
        handle = module.register_forward_hook(lambda _m, _a, out: projected.setdefault("out", out.detach().clone()))
        unet_output(sd)
        handle.remove()
    eta, unit = captured["out"].double(), (u / u.norm()).double()
    expected = eta - (eta @ unit)[..., None] * unit
    torch.testing.assert_close(projected["out"].double(), expected, rtol=0, atol=1e-5)


def test_input_site_projects_what_the_module_reads(sd):
    module = get_module(sd, f"{ATTN}.to_out.0")
    u = torch.randn(module.in_features, generator=torch.Generator().manual_seed(4))
    edit = make_edit(sd, ActivationProjection.of(f"{ATTN}.to_out.0", u, site="input"))
    seen = {}
    with applied(sd, edit):
        handle = module.register_forward_pre_hook(lambda _m, args: seen.setdefault("x", args[0].detach().clone()))
        unet_output(sd)
        handle.remove()
    assert (seen["x"] @ (u / u.norm())).abs().max() < 1e-4  # registered after ours: sees the projected input


def test_compose_of_mixed_kinds_equals_applying_them_in_order(sd, tmp_path):
    a = make_edit(sd, make_change(sd, "dense", 1), make_change(sd, "sparse", 1), make_change(sd, "activation", 1))
    with applied(sd, a):
        b = make_edit(sd, make_change(sd, "low_rank", 2), make_change(sd, "dense", 2), make_change(sd, "sparse", 2))
        with applied(sd, b):
            c = make_edit(sd, make_change(sd, "activation", 3), make_change(sd, "low_rank", 3))
    original = state(sd)
    with applied(sd, a, b, c):
        in_order, weights = unet_output(sd), state(sd)
    merged = Edit.load(compose(sd, a, b, c).save(tmp_path / "merged"))
    # dense + dense summed, sparse united, low-rank concatenated, the two projections kept in order
    assert sorted(merged.kinds) == ["activation", "activation", "dense", "low_rank", "sparse"]
    low_rank = next(ch for ch in merged.changes() if ch.kind == "low_rank")
    assert low_rank.rank == 4
    with applied(sd, merged):
        torch.testing.assert_close(unet_output(sd), in_order, rtol=1e-5, atol=1e-5)
        for key, value in sd.unet.state_dict().items():
            torch.testing.assert_close(value, weights[key], rtol=1e-6, atol=1e-6)
    assert_same_bytes(sd, original)
    assert hooks(sd) == 0


def test_hooks_are_removed_after_revert_and_when_the_block_raises(sd):
    edit = make_edit(sd, make_change(sd, "activation"))
    apply(sd, edit)
    assert hooks(sd) == 1
    revert(sd)
    assert hooks(sd) == 0
    with pytest.raises(RuntimeError, match="boom"), applied(sd, edit):
        unet_output(sd)
        raise RuntimeError("boom")
    assert hooks(sd) == 0


def test_a_forward_that_raises_inside_the_hook_leaves_no_hook(sd):
    wrong = make_edit(sd, ActivationProjection.of(f"{ATTN}.to_q", torch.randn(1, 64)), dtype=torch.float32)
    # to_q's output is 64-d, so that edit is fine; a 7-d projection of the same output is not
    bad = ActivationProjection(f"{ATTN}.to_q", torch.eye(7)[:1])
    bad_edit = make_edit(sd, bad)
    with pytest.raises(EditError, match="7-d features"), applied(sd, wrong, bad_edit):
        unet_output(sd)
    assert hooks(sd) == 0 and applied_edits(sd) == []


def test_base_digests_are_computed_once_per_tensor(sd, monkeypatch):
    edit = make_edit(sd, make_change(sd, "dense"), make_change(sd, "low_rank"))
    calls = []
    real = edit_state.value_digest
    monkeypatch.setattr(edit_state, "value_digest", lambda key, t: calls.append(key) or real(key, t))
    for _ in range(3):
        with applied(sd, edit):
            pass
    assert calls == []  # Edit.create hashed both tensors; every later apply and revert reuses the digests


def test_an_edit_of_an_edited_model_is_checked_against_the_pristine_or_current_state(sd):
    first = make_edit(sd, make_change(sd, "dense", 1))
    with applied(sd, first):
        second = make_edit(sd, make_change(sd, "dense", 2))
    with pytest.raises(EditError, match="on top of another edit that is not applied"):
        apply(sd, second)  # its base is the edited model
    with applied(sd, first, second):
        pass
    unrelated = make_edit(sd, make_change(sd, "sparse", 3))
    with applied(sd, first, unrelated):  # made on the unedited model, applies over an edit of other tensors
        pass


# -- bad input -------------------------------------------------------------------------------------------------
def rewrite(path, out, change_manifest=None, change_tensors=None):
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = json.loads(f.metadata()["concept_edit"]), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    if change_manifest:
        change_manifest(meta)
    if change_tensors:
        change_tensors(tensors, meta)
    save_file(tensors, str(out), metadata={"concept_edit": json.dumps(meta)})
    return out


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda m: m["changes"][0].update(kind="rotation"), "unknown change kind 'rotation'"),
        (lambda m: m["changes"][0].update(dtype="float8"), "unknown dtype 'float8'"),
        (lambda m: m["changes"][0].update(site="middle"), "site must be one of"),
        (lambda m: m["changes"][0].update(rank=0), "'rank' must be a positive integer"),
        (lambda m: m.pop("base_hash"), "'base_hash' is missing"),
        (lambda m: m.update(changes=[]), "lists no change"),
        (lambda m: m.update(format="concept-edit/9"), "unsupported edit format"),
    ],
)
def test_a_manifest_the_library_cannot_use_is_refused_at_load(sd, tmp_path, mutate, message):
    path = make_edit(sd, make_change(sd, "activation")).save(tmp_path / "good.safetensors")
    with pytest.raises(EditError, match=message):
        Edit.load(rewrite(path, tmp_path / "bad.safetensors", change_manifest=mutate))


def test_a_module_the_model_does_not_have_is_refused_and_nothing_is_applied(sd, tmp_path):
    good = make_edit(sd, make_change(sd, "dense"))
    path = make_edit(sd, make_change(sd, "activation")).save(tmp_path / "a.safetensors")
    bad = Edit.load(
        rewrite(path, tmp_path / "b.safetensors", lambda m: m["changes"][0].update(target="unet.no.such.module"))
    )
    original = state(sd)
    with pytest.raises(EditError, match="no module unet.no.such.module"):
        apply(sd, good, bad)
    assert_same_bytes(sd, original)
    assert hooks(sd) == 0 and applied_edits(sd) == []
    with pytest.raises(EditError, match="no parameter unet.nope.weight"):
        make_edit(sd, DenseDelta("unet.nope.weight", torch.zeros(2)))


def test_a_sparse_index_out_of_range_is_refused_and_nothing_is_applied(sd, tmp_path):
    change = make_change(sd, "sparse")
    with pytest.raises(EditError, match="out of range"):
        make_edit(sd, SparseSet(change.target, change.indices + 10**6, change.values, change.shape))

    def push_out_of_range(tensors, meta):
        info = meta["changes"][1]
        name = info["tensors"]["indices"]["name"]
        tensors[name] = tensors[name] + get_parameter(sd, info["target"]).numel()
        info["tensors"]["indices"]["sha256"] = edit_state.sha256(tensors[name])  # a well-formed, wrong file

    path = make_edit(sd, make_change(sd, "dense"), change).save(tmp_path / "a.safetensors")
    bad = Edit.load(rewrite(path, tmp_path / "b.safetensors", change_tensors=push_out_of_range))
    original = state(sd)
    with pytest.raises(EditError, match="out of range"):
        apply(sd, bad)  # the dense change before it was applied, then taken back
    assert_same_bytes(sd, original)
    assert applied_edits(sd) == []


def test_non_finite_values_and_dependent_directions_are_refused(sd):
    change = make_change(sd, "dense")
    with pytest.raises(EditError, match="NaN or infinite"):
        make_edit(sd, DenseDelta(change.target, change.delta * float("nan")))
    with pytest.raises(ValueError, match="linearly dependent"):
        ActivationProjection.of(ATTN, torch.ones(2, 64))


def test_an_edit_with_activation_changes_cannot_be_exported(sd, tmp_path):
    from concept_edit.export import export_pipeline

    with pytest.raises(ValueError, match="forward hooks"):
        export_pipeline(sd, [make_edit(sd, make_change(sd, "activation"))], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_same_edit_twice_is_refused_unless_asked_for(sd, tmp_path):
    edit = make_edit(sd, make_change(sd, "dense"))
    with pytest.raises(EditError, match="already applied"):
        apply(sd, edit, edit)
    assert applied_edits(sd) == []
    path = edit.save(tmp_path / "e")
    with pytest.raises(EditError, match="already applied"):
        apply(sd, Edit.load(path), Edit.load(path))  # two loads of one file are the same edit
    change = next(edit.changes())
    param = get_parameter(sd, change.target)
    original = param.detach().clone()
    with applied(sd, edit, edit, allow_repeat=True):
        torch.testing.assert_close(param.detach(), original + 2 * change.delta)
    assert torch.equal(param.detach(), original)


def test_sparse_revert_finds_the_parameter_after_the_model_moved(sd):
    change = make_change(sd, "sparse")
    original = get_parameter(sd, change.target).detach().clone()
    apply(sd, make_edit(sd, change))
    sd.unet.to(torch.float64)  # new storage for every parameter
    revert(sd)
    assert torch.equal(get_parameter(sd, change.target).detach(), original.double())


def test_distinct_in_memory_edits_are_never_taken_for_the_same_one(sd):
    """Thirty in-memory edits applied one after another and left applied, each freed once applied (only the
    pipeline's record of it remains). Python hands a new object the id of one just freed, so an identity by id()
    would refuse a new edit as "already applied"; the ids are recorded to show that the test ran into that case.
    Each must be taken as new: all thirty projections hold, and reverting leaves the model as it was."""
    before = unet_output(sd)
    manifest = make_edit(sd, make_change(sd, "activation")).manifest  # a projection changes no weight: one base
    entries = [[make_change(sd, "activation", seed)] for seed in range(30)]  # built first: few allocations below
    seen, reused = set(), 0
    for changes in entries:
        edit = Edit(entries=changes, manifest=manifest)  # as Edit.astype builds one
        reused += id(edit) in seen  # the id of an applied (and freed) edit, handed out again
        seen.add(id(edit))
        apply(sd, edit)
        del edit
    assert reused > 0  # the case this test is about happened
    stack = edit_state.state_of(sd).stack
    assert len(stack) == 30 and len({record.identity for record in stack}) == 30
    assert hooks(sd) == 30 and not torch.equal(unet_output(sd), before)
    revert(sd)
    assert hooks(sd) == 0 and applied_edits(sd) == [] and torch.equal(unet_output(sd), before)


def test_revert_inside_a_trainable_block_is_refused(sd):
    from concept_edit import trainable

    change = make_change(sd, "dense")
    apply(sd, make_edit(sd, change))
    with trainable(sd, [change.target]), pytest.raises(EditError, match="being fine-tuned"):
        revert(sd)
    revert(sd)
    assert applied_edits(sd) == []


def test_a_manifest_whose_dtype_differs_from_its_tensor_is_refused(sd, tmp_path):
    path = make_edit(sd, make_change(sd, "dense")).save(tmp_path / "e.safetensors")
    bad = rewrite(path, tmp_path / "b.safetensors", lambda m: m["changes"][0].update(dtype="bfloat16"))
    with pytest.raises(EditError, match="the manifest says bfloat16"):
        Edit.load(bad)


def test_a_hook_on_a_module_that_returns_an_object_is_one_clear_error(sd):
    edit = make_edit(sd, ActivationProjection.of("unet", torch.randn(1, 4)))
    with pytest.raises(EditError, match="not a tensor"), applied(sd, edit):
        unet_output(sd)
    assert hooks(sd) == 0
