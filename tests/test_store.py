"""The image store: generate once, read back, resume, catch damaged files, shard across processes."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from concept_edit.edit import DenseDelta, Edit, applied, applied_edits
from concept_edit.evaluation.store import ImageStore, edit_identity, generate_stored
from concept_edit.generation import generate, to_array

PROMPTS = ["a photo of a cat", "a red car", "a blue house", "a dog", "a tree", "a bird painting"]
SEEDS = [0, 1, 2, 3, 4, 5]
RUN = {"steps": 2, "guidance": 5.0, "batch_size": 4, "progress": False}
TARGET = "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"


@pytest.fixture
def calls(monkeypatch):
    """The batch size of every pipeline call; set `calls.fail_at` to raise KeyboardInterrupt on that call."""

    class Calls(list):
        fail_at: int | None = None

    record = Calls()
    original = StableDiffusionPipeline.__call__

    def counted(self, *args, **kwargs):
        if record.fail_at is not None and len(record) == record.fail_at:
            raise KeyboardInterrupt
        record.append(len(kwargs["prompt"]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionPipeline, "__call__", counted)
    return record


def _edit(pipe) -> Edit:
    delta = torch.randn(
        pipe.unet.get_parameter(TARGET.removeprefix("unet.")).shape, generator=torch.Generator().manual_seed(0)
    )
    return Edit.create(
        pipe, [DenseDelta(TARGET, delta)], method="test", config={}, request={"concepts": ["cat"]}, seed=0
    )


def test_second_call_reads_back_without_generating(sd, tmp_path, calls):
    sd_name = "StableDiffusionPipeline"  # a pipeline built by hand is named after its class
    first = generate_stored(sd, PROMPTS, SEEDS, store=tmp_path, **RUN)
    assert calls == [4, 2] and first.shape == (6, 16, 16, 3) and first.dtype == np.uint8
    plain = to_array(generate(sd, PROMPTS, SEEDS, steps=2, guidance=5.0, batch_size=4))
    assert np.array_equal(first, plain)  # what generate draws, in the order asked
    again = generate_stored(sd, PROMPTS, SEEDS, store=tmp_path, **RUN)
    assert calls == [4, 2, 4, 2]  # only the plain generate above drew
    assert np.array_equal(again, first)
    reordered = generate_stored(sd, PROMPTS[::-1] + PROMPTS[:1], SEEDS[::-1] + SEEDS[:1], store=tmp_path, **RUN)
    assert len(calls) == 4 and np.array_equal(reordered, np.concatenate([first[::-1], first[:1]]))
    assert generate_stored(sd, [], [], store=tmp_path, **RUN).shape == (0, 16, 16, 3)
    entry = next(e for es in ImageStore(tmp_path).index().values() for e in es if e["seed"] == 2)
    assert (entry["prompt"], entry["guidance"], entry["model"], entry["edits"]) == ("a blue house", 5.0, sd_name, [])
    assert entry["protocol"] | {"scheduler_config": "?"} == {
        "steps": 2,
        "resolution": 16,
        "scheduler": "DDIMScheduler",
        "scheduler_config": "?",
        "dtype": "float32",
        "noise": "cpu",
    }
    assert entry["drawn_with"]["attention"] == ["AttnProcessor2_0"]  # PyTorch SDPA, diffusers' default


def test_other_steps_or_edits_are_generated_not_reused(sd, tmp_path, calls):
    base = generate_stored(sd, PROMPTS, SEEDS, store=tmp_path, **RUN)
    three = generate_stored(sd, PROMPTS, SEEDS, store=tmp_path, **{**RUN, "steps": 3})
    assert calls == [4, 2, 4, 2] and not np.array_equal(three, base)
    edit = _edit(sd)
    edited = generate_stored(sd, PROMPTS, SEEDS, store=tmp_path, edits=[edit], **RUN)
    assert calls[4:] == [4, 2] and not np.array_equal(edited, base)
    assert applied_edits(sd) == []  # applied inside, reverted after
    with applied(sd, edit):
        assert np.array_equal(edited, to_array(generate(sd, PROMPTS, SEEDS, steps=2, guidance=5.0, batch_size=4)))
    del calls[:]
    saved = Edit.load(edit.save(tmp_path / "edit.safetensors"))
    assert edit_identity(saved) == edit_identity(edit)  # the same edit, in memory or from its file
    assert np.array_equal(generate_stored(sd, PROMPTS, SEEDS, store=tmp_path, edits=[saved], **RUN), edited)
    assert np.array_equal(generate_stored(sd, PROMPTS, SEEDS, store=tmp_path, **RUN), base)
    assert calls == []


def test_an_interrupted_run_resumes_where_it_stopped(sd, tmp_path, calls, caplog):
    calls.fail_at = 1  # the second batch is interrupted
    with pytest.raises(KeyboardInterrupt), caplog.at_level(logging.WARNING):
        generate_stored(sd, PROMPTS, SEEDS, store=tmp_path / "a", **RUN)
    assert "run the same command again to resume" in caplog.text
    assert calls == [4] and len(list((tmp_path / "a" / "images").iterdir())) == 4
    calls.fail_at = None
    resumed = generate_stored(sd, PROMPTS, SEEDS, store=tmp_path / "a", **RUN)
    assert calls == [4, 2]  # only the two missing images
    assert np.array_equal(resumed, generate_stored(sd, PROMPTS, SEEDS, store=tmp_path / "b", **RUN))


def test_damaged_png_and_index_line_are_generated_again(sd, tmp_path, calls, caplog):
    first = generate_stored(sd, PROMPTS, SEEDS, store=tmp_path, **RUN)
    store = ImageStore(tmp_path)
    entries = [e for es in store.index().values() for e in es]
    png = {e["seed"]: store.image_path(e["key"]) for e in entries}
    png[1].write_bytes(png[1].read_bytes()[:40])  # a truncated PNG
    png[2].write_bytes(png[3].read_bytes())  # a whole PNG, but not the image the index names
    png[5].unlink()
    index = store.index_path(0)
    lines = index.read_text().splitlines(keepends=True)
    damaged = next(i for i, line in enumerate(lines) if '"seed": 4' in line)
    lines[damaged] = lines[damaged][:30] + "\n"  # an index line cut short
    index.write_text("".join(lines) + lines[0][:25])  # and an unfinished line at the end, as a crash leaves
    del calls[:]
    with caplog.at_level(logging.WARNING):
        again = generate_stored(sd, PROMPTS, SEEDS, store=tmp_path, **RUN)
    assert calls == [4]  # seeds 1, 2, 4 and 5, nothing else
    assert f"{png[1]} (prompt 'a red car', seed 1) is damaged" in caplog.text
    assert f"{png[5]} (prompt 'a bird painting', seed 5) cannot be read (FileNotFoundError)" in caplog.text
    assert f"{png[2]} (prompt 'a blue house', seed 2) is damaged" in caplog.text
    assert "index.0.jsonl: 2 damaged line(s) ignored" in caplog.text
    assert np.array_equal(again, first)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert np.array_equal(generate_stored(sd, PROMPTS, SEEDS, store=tmp_path, **RUN), first)
    assert calls == [4] and caplog.text == ""  # the index was repaired: no warning the second time


def test_two_processes_draw_what_one_process_draws(sd, tmp_path, calls):
    one = generate_stored(sd, PROMPTS, SEEDS, store=tmp_path / "one", **RUN)
    del calls[:]
    for rank in (0, 1):
        out = generate_stored(sd, PROMPTS, SEEDS, store=tmp_path / "two", process_index=rank, num_processes=2, **RUN)
        assert out is None
    assert calls == [3, 3]
    shards = [ImageStore(tmp_path / "two")._read_index(ImageStore(tmp_path / "two").index_path(r))[0] for r in (0, 1)]
    assert [[e["seed"] for e in shard] for shard in shards] == [[0, 2, 4], [1, 3, 5]]
    read = generate_stored(sd, PROMPTS, SEEDS, store=tmp_path / "two", **RUN)
    assert calls == [3, 3]  # the reader generated nothing
    # Other batch compositions: equal up to float noise (measured: identical bytes on this pipeline on CPU).
    assert np.abs(read.astype(int) - one.astype(int)).max() <= 1


def test_another_models_images_are_not_reused(sd, other_sd, tmp_path, calls):
    mine = generate_stored(sd, PROMPTS, SEEDS, store=tmp_path, **RUN)
    theirs = generate_stored(other_sd, PROMPTS, SEEDS, store=tmp_path, **RUN)  # same spec name, other weights
    assert calls == [4, 2, 4, 2] and not np.array_equal(mine, theirs)
    assert np.array_equal(theirs, to_array(generate(other_sd, PROMPTS, SEEDS, steps=2, guidance=5.0, batch_size=4)))


def test_per_entry_guidance_and_cost_message(sd, tmp_path, calls, caplog):
    guidances = [1.0, 5.0, None, 1.0, 5.0, 1.0]  # None: the default guidance
    with caplog.at_level(logging.INFO, logger="concept_edit"):
        out = generate_stored(sd, PROMPTS, SEEDS, store=tmp_path, guidances=guidances, **{**RUN, "batch_size": 2})
    assert "6 to generate: 6 images x 2 steps (x 2 for the 3 with guidance) = 18 UNet evaluations" in caplog.text
    assert "first batch: 2 images" in caplog.text
    assert calls == [2, 1, 2, 1]  # batches of equal guidance: 3 images at 1.0, then 3 at 5.0
    for i, g in enumerate([1.0, 5.0, 5.0, 1.0, 5.0, 1.0]):
        assert np.array_equal(
            out[i], to_array(generate(sd, PROMPTS[i : i + 1], SEEDS[i : i + 1], steps=2, guidance=g))[0]
        )


def test_refusals(sd, tmp_path):
    with applied(sd, _edit(sd)), pytest.raises(ValueError, match="already has edits applied"):
        generate_stored(sd, PROMPTS, SEEDS, store=tmp_path, **RUN)
    with pytest.raises(ValueError, match="6 prompts but 5 seeds"):
        generate_stored(sd, PROMPTS, SEEDS[:5], store=tmp_path, **RUN)
    with pytest.raises(ValueError, match="process_index"):
        generate_stored(sd, PROMPTS, SEEDS, store=tmp_path, process_index=2, num_processes=2, **RUN)


def test_another_python_process_finds_the_same_keys(sd, tmp_path, calls, clip_tokenizer_dir):
    """What one process stores, another reads: no key may depend on the process (hash seed, object ids)."""
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; from tiny_models import tiny_sd; "
        "from concept_edit.evaluation.store import generate_stored; "
        f"generate_stored(tiny_sd(Path(sys.argv[2])), {PROMPTS!r}, {SEEDS!r}, store=sys.argv[3], **{RUN!r})"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-c", script, str(Path(__file__).parent), str(clip_tokenizer_dir), str(tmp_path)]
    subprocess.run(args, env=env, check=True, capture_output=True)
    images = generate_stored(sd, PROMPTS, SEEDS, store=tmp_path, **RUN)
    assert calls == []
    assert np.array_equal(images, to_array(generate(sd, PROMPTS, SEEDS, steps=2, guidance=5.0, batch_size=4)))


def test_evaluate_in_chunks_with_a_store_announces_the_whole_once_and_reuses_it(shapes, tmp_path, caplog):
    """Issue 29: a chunked evaluation says once what the store holds of the whole suite (and of other protocols,
    kept apart), draws chunk by chunk, and a second run with another chunk size draws nothing."""
    from concept_edit.evaluation import evaluate, get_suite

    suite = get_suite("shapes-objects", n=1)  # 8 entries, one per object
    options = {"store": tmp_path / "store", "progress": False, "chunk_size": 1, "steps": 2}
    with caplog.at_level(logging.INFO, logger="concept_edit"):
        first, images = evaluate(shapes, suite, **options)
    assert caplog.text.count("image store") == 1 + len(suite.entries)  # the whole, then each chunk's (quiet) line
    assert "8 images asked for (8 distinct): 0 already stored, 8 to generate" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="concept_edit"):
        again, same = evaluate(shapes, suite, **{**options, "chunk_size": 3})
    np.testing.assert_array_equal(images, same)
    assert "8 already stored, 0 to generate" in caplog.text and again["per_concept"] == first["per_concept"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="concept_edit"):
        evaluate(shapes, suite, **{**options, "steps": 3})
    assert "0 already stored, 8 to generate" in caplog.text
    assert "it also holds 8 images of other models, edits or protocols: kept apart" in caplog.text
    caplog.clear()
    from concept_edit import EditRequest, fit

    edit = fit(shapes, "uce", EditRequest(concepts=("circle",)))
    with caplog.at_level(logging.INFO, logger="concept_edit"):
        evaluate(shapes, suite, edits=[edit], **{**options, "steps": 3})
    # the edited pass and its unedited baseline (stored above at 3 steps) are one request: only the 2-step
    # images are another protocol's
    assert "8 already stored, 0 to generate (it also holds 8 images of other models" in caplog.text
    assert "holds 16" not in caplog.text


def test_the_index_is_parsed_once_then_only_what_is_appended(sd, tmp_path, monkeypatch, caplog):
    generate_stored(sd, PROMPTS[:3], SEEDS[:3], store=tmp_path, **RUN)
    from concept_edit.evaluation import image_store

    parsed, real_parse = [], image_store._parse
    monkeypatch.setattr(image_store, "_parse", lambda line: parsed.append(line) or real_parse(line))
    store = ImageStore(tmp_path)
    first = store.index()
    assert len(parsed) == 3 and len(first) == 3
    assert store.index() == first and len(parsed) == 3  # nothing appended: nothing parsed again
    generate_stored(sd, PROMPTS, SEEDS, store=store, **RUN)  # appends the other three
    # 3, then the first append's check of its own file (once per store object), then the 3 appended lines
    assert len(store.index()) == 6 and len(parsed) == 9
    index = store.index_path(0)
    text = index.read_text()
    index.write_text(text + text.splitlines(keepends=True)[0][:20])  # a writer half-way through a line
    with caplog.at_level(logging.WARNING):
        assert len(store.index()) == 6
    assert "1 damaged line(s) ignored (first: line 7)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert len(store.index()) == 6
    assert caplog.text == ""  # said once while it sits there, not at every chunk
    index.write_text(text + text.splitlines(keepends=True)[0])  # ... which it finishes: read, once
    assert len(store.index()) == 6 and len(store.index()[next(iter(first))]) == 2
    parsed.clear()
    lines = text.splitlines(keepends=True)
    # rewritten in place at the same size: the last image's line replaced by junk of its length
    index.write_text("".join(lines[:5]) + lines[0] + "x" * (len(lines[5]) - 1) + "\n")
    assert index.stat().st_size == len(text) + len(lines[0])
    assert len(store.index()) == 5 and len(parsed) == 7  # parsed again whole, not mistaken for appended lines
    assert store.index() == ImageStore(tmp_path).index()
    replacement = tmp_path / "replacement"  # another file in its place, differing only inside: its inode tells
    parts = index.read_bytes().split(b"\n")
    parts[2] = b"y" * len(parts[2])  # same size, start and end
    replacement.write_bytes(b"\n".join(parts))
    os.replace(replacement, index)
    assert len(store.index()) == len(ImageStore(tmp_path).index()) == 4
    # another file put in its place (as a repair does), larger
    replacement.write_text("".join(lines[2:]) + lines[0] + lines[1] + lines[0])
    os.replace(replacement, index)
    parsed.clear()
    assert store.index() == ImageStore(tmp_path).index() and len(parsed) == 7 + 7
