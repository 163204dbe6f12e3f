"""UCE speed on Stable-Diffusion-1.4-shaped models: the solve, and the encoding of the prompts it needs.

    python benchmarks/uce_speed.py             # table
    python benchmarks/uce_speed.py --json      # last line: {"rows": [...], "speedup", ...}
    python benchmarks/uce_speed.py --baseline  # also time an official-style loop (rank-1 updates, per-layer inverse)

Solve: SD 1.4's 16 cross-attention layers, to_k and to_v each (out 320/640/1280, in 768), random weights;
embeddings random with CLIP-like norms. `solve_s` is the whole edit computation of this library (covariances
in float64, one `torch.linalg.solve`, every layer's delta), the median of --repeats runs.

Encoding: the N edit prompts, the guide "art" and the P preserved prompts through UCE's own encoding path
(`methods.uce.encode` with tokens "last": prompt checks, concept spans, embeddings) on a StableDiffusionPipeline
whose text encoder has CLIP-ViT-L/14's shape (SD 1.4's: 12 layers, 768-d, 77 positions; random weights: the
cost does not depend on them). `encode_padded_s` pads every prompt to 77 tokens, as UCE did before; it is
timed on --sample prompts spread over the largest row's prompts, right before and right after each row's
`encode_s` (the mean of the two: the machine may be shared), and scaled to N + 1 + P (its cost per prompt does
not depend on the prompt). `encode_s` (UCE's default now) pads each batch of 64 only to its longest prompt
(+1), prompts sorted by length, and is timed once on all N + 1 + P prompts.
`speedup` is (encode_padded_s + solve_s) / (encode_s + solve_s); `max_rel_diff` is the largest difference
between the two encodings' rows that UCE reads (each prompt's last token), relative to their largest value.
`embed_sorted_s` / `embed_unsorted_s`: the embeddings alone of every third prompt of the largest row, batched
sorted by length or in the given order (alternated, median of two each).

Prompts, UCE-style: edits are artist prompts in ten templates ("art by {artist}", "painting by {artist}", "in
the style of {artist}", ...) over 100 artists; preserved prompts are object prompts in ten templates ("a photo
of a {object}", "image of {object}", ...) over 100 objects. Tokens a prompt, start and end-of-text included,
for the 1000 + 1000 of the largest row: with CLIP-L's own BPE vocabulary (`--tokenizer`, a CLIP tokenizer
folder or hub id such as openai/clip-vit-large-patch14; the committed results) edits 5 to 13 (mean 7.9),
preserved 5 to 10 (mean 6.3); with the default tokenizer, which knows every word whole (no download), edits
5 to 10 (mean 6.6), preserved 5 to 10 (mean 6.3): CLIP splits rarer names ("Mckernan": "mck", "ernan").
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from concept_edit.methods.uce.fit import encode, layer_deltas, uce_operator
from concept_edit.models.prompts import encode_prompt_tokens, last_token_index, token_counts

SD14_OUT = [320, 320, 640, 640, 1280, 1280, 1280, 1280, 1280, 1280, 640, 640, 640, 320, 320, 320]  # down, mid, up
DIM = 768


def projections(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    weights = {}
    for i, out in enumerate(SD14_OUT):
        for proj in ("to_k", "to_v"):
            weights[f"layer{i}.{proj}.weight"] = torch.randn(out, DIM, generator=gen) / DIM**0.5
    return weights


def embeddings(n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(n, DIM, generator=gen)  # norm ~ sqrt(768) ~ 28, like CLIP's last hidden states


def _median_time(run, repeats: int) -> float:
    """Median wall time of `repeats` calls: ours and the baseline are timed the same way."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def time_solve(weights, n_edit: int, n_preserve: int, repeats: int, float64: bool = True) -> float:
    gen = torch.Generator().manual_seed(n_edit)
    c_e, guide, c_p = embeddings(n_edit, gen), embeddings(1, gen), embeddings(n_preserve, gen)
    dtype = torch.float64 if float64 else torch.float32

    def run():
        u, v = uce_operator(c_e, guide.expand_as(c_e), c_p, erase_scale=1.0, preserve_scale=1.0, lam=0.5, dtype=dtype)
        layer_deltas(weights, u, v, dtype)

    return _median_time(run, repeats)


def time_official_loop(weights, n_edit: int, n_preserve: int, repeats: int) -> float:
    """The official scripts' shape: per layer, add rank-1 outer products one concept at a time, then inverse."""
    gen = torch.Generator().manual_seed(n_edit)
    c_e, guide, c_p = embeddings(n_edit, gen), embeddings(1, gen), embeddings(n_preserve, gen)

    def run():
        for w in weights.values():
            mat1 = 0.5 * w.clone()
            mat2 = 0.5 * torch.eye(DIM)
            v_star = w @ guide[0]
            for c in c_e:
                mat1 += torch.outer(v_star, c)
                mat2 += torch.outer(c, c)
            for c in c_p:
                mat1 += torch.outer(w @ c, c)
                mat2 += torch.outer(c, c)
            _ = mat1 @ torch.inverse(mat2)

    return _median_time(run, repeats)


ARTISTS = (
    "Vincent van Gogh", "Claude Monet", "Pablo Picasso", "Rembrandt", "Salvador Dali", "Frida Kahlo", "Andy Warhol",
    "Johannes Vermeer", "Edvard Munch", "Gustav Klimt", "Henri Matisse", "Paul Cezanne", "Wassily Kandinsky",
    "Jackson Pollock", "Georgia OKeeffe", "Edward Hopper", "Caravaggio", "Michelangelo", "Leonardo da Vinci",
    "Raphael", "Sandro Botticelli", "Titian", "Diego Velazquez", "Francisco Goya", "Peter Paul Rubens",
    "Hieronymus Bosch", "Pieter Bruegel", "Albrecht Durer", "Jan van Eyck", "El Greco", "William Turner",
    "John Constable", "Caspar David Friedrich", "Eugene Delacroix", "Gustave Courbet", "Edgar Degas",
    "Pierre Auguste Renoir", "Camille Pissarro", "Alfred Sisley", "Berthe Morisot", "Mary Cassatt",
    "Georges Seurat", "Paul Gauguin", "Henri de Toulouse Lautrec", "Amedeo Modigliani", "Egon Schiele",
    "Marc Chagall", "Joan Miro", "Rene Magritte", "Max Ernst", "Piet Mondrian", "Kazimir Malevich", "Paul Klee",
    "Roy Lichtenstein", "Keith Haring", "Jean Michel Basquiat", "Mark Rothko", "Willem de Kooning",
    "David Hockney", "Francis Bacon", "Lucian Freud", "Gerhard Richter", "Yayoi Kusama", "Takashi Murakami",
    "Katsushika Hokusai", "Utagawa Hiroshige", "Alphonse Mucha", "Gustave Dore", "William Blake",
    "John Singer Sargent", "James Whistler", "Winslow Homer", "Norman Rockwell", "Thomas Kinkade",
    "Bob Ross", "Banksy", "Greg Rutkowski", "Kelly Mckernan", "Tyler Edlin", "Kilian Eng", "Kirbi Fagan",
    "Thomas Cole", "Albert Bierstadt", "Ivan Aivazovsky", "Ilya Repin", "Zdzislaw Beksinski", "HR Giger",
    "Moebius", "Hayao Miyazaki", "Makoto Shinkai", "Artgerm", "Alphonse Osbert", "Simon Stalenhag",
    "Beeple", "Wlop", "Ross Tran", "Jakub Rozalski", "Craig Mullins", "Syd Mead", "Ralph McQuarrie",
)  # fmt: skip
OBJECTS = (
    "cat", "dog", "horse", "bird", "fish", "car", "truck", "bus", "bicycle", "motorcycle", "airplane", "boat",
    "train", "house", "church", "castle", "bridge", "tower", "tree", "flower", "mountain", "river", "lake",
    "beach", "forest", "chair", "table", "sofa", "bed", "lamp", "clock", "vase", "cup", "bottle", "guitar",
    "piano", "violin", "trumpet", "book", "laptop", "phone", "camera", "television", "umbrella", "backpack",
    "suitcase", "hat", "shoe", "dress", "jacket", "apple", "banana", "orange", "pizza", "cake", "sandwich",
    "elephant", "giraffe", "zebra", "lion", "tiger", "bear", "wolf", "fox", "rabbit", "deer", "cow", "sheep",
    "pig", "chicken", "duck", "owl", "eagle", "parrot", "penguin", "dolphin", "whale", "shark", "turtle", "frog",
    "snake", "butterfly", "bee", "spider", "tench", "golf ball", "parachute", "gas pump", "garbage truck",
    "chain saw", "cassette player", "French horn", "English springer", "lighthouse", "windmill", "tractor",
    "fire truck", "sailboat", "teapot", "kite",
)  # fmt: skip
ART_TEMPLATES = (
    "art by {}", "painting by {}", "artwork by {}", "picture by {}", "style of {}", "a painting by {}",
    "in the style of {}", "a portrait by {}", "a landscape by {}", "an illustration by {}",
)  # fmt: skip
OBJECT_TEMPLATES = (
    "a photo of a {}", "image of {}", "photo of {}", "portrait of {}", "picture of {}", "painting of {}",
    "a picture of a {}", "a painting of a {}", "a close up photo of a {}", "a drawing of a {}",
)  # fmt: skip
GUIDE = "art"


def prompt_lists() -> tuple[list[str], list[str]]:
    """Edit prompts (artist templates) and preserved prompts (object templates), every name in every template."""
    edits = [t.format(a) for t in ART_TEMPLATES for a in ARTISTS]
    preserved = [t.format(o) for t in OBJECT_TEMPLATES for o in OBJECTS]
    return edits, preserved


def word_tokenizer(words):
    """A CLIP-like tokenizer (start and end-of-text tokens, padding with end-of-text, 77 positions, lowercase)
    that knows each of `words` as one token: CLIP's BPE keeps common words whole and splits rare names."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    start, end = "<|startoftext|>", "<|endoftext|>"
    vocab = {t: i for i, t in enumerate(dict.fromkeys([start, end, *sorted(words)]))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=end))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{start} $A {end}", special_tokens=[(start, vocab[start]), (end, vocab[end])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=start, eos_token=end, pad_token=end, unk_token=end, model_max_length=77
    )


def clip_l_pipeline(prompts: list[str], tokenizer: str | None):
    """A StableDiffusionPipeline with SD 1.4's text encoder shape (CLIP-ViT-L/14) and a tiny UNet and VAE."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    if tokenizer:
        tokenizer = CLIPTokenizer.from_pretrained(tokenizer, model_max_length=77)
    else:
        tokenizer = word_tokenizer({w for p in prompts for w in p.lower().split()})
    text = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=DIM,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    small = {"block_out_channels": (32,), "norm_num_groups": 32, "layers_per_block": 1}
    unet = UNet2DConditionModel(
        **small,
        sample_size=8,
        down_block_types=("CrossAttnDownBlock2D",),
        up_block_types=("CrossAttnUpBlock2D",),
        cross_attention_dim=DIM,
    )
    vae = AutoencoderKL(**small, down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",))
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(text).eval(),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(steps_offset=1, clip_sample=False),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _timed(run):
    started = time.perf_counter()
    out = run()
    return time.perf_counter() - started, out


def padded_sample(prompts: list[str], sample: int) -> list[str]:
    """`sample` prompts spread evenly over `prompts`."""
    return prompts[:: max(1, len(prompts) // sample)][:sample]


def time_padded_per_prompt(pipe, sample: list[str]) -> float:
    """Seconds per prompt of UCE's encoding padded to 77 tokens, on `sample`."""
    return _timed(lambda: encode(pipe, sample, "last", padded=True))[0] / len(sample)


def last_rows(pipe, prompts: list[str], embeds: torch.Tensor) -> torch.Tensor:
    """The rows UCE reads with tokens "last"."""
    lasts = last_token_index(pipe, prompts)
    return embeds[torch.arange(len(prompts)), lasts]


def _length_summary(pipe, edits: list[str], preserved: list[str]) -> dict:
    """Tokens per prompt, start and end-of-text included: min, mean and max of the edit and preserved prompts."""
    out = {}
    for name, prompts in (("edits", edits), ("preserved", preserved)):
        counts = token_counts(pipe, prompts) if prompts else [0]
        out[name] = [min(counts), round(statistics.mean(counts), 2), max(counts)]
    return out


def sort_check(pipe, prompts: list[str]) -> dict:
    """The embeddings alone, batches in the prompts' order vs sorted by length: alternated, median of two each."""
    times = {True: [], False: []}
    for sort in (True, False, True, False):
        times[sort].append(_timed(lambda sort=sort: encode_prompt_tokens(pipe, prompts, sort=sort))[0])
    return {
        "sort_check_prompts": len(prompts),
        "embed_sorted_s": round(statistics.median(times[True]), 2),
        "embed_unsorted_s": round(statistics.median(times[False]), 2),
    }


def encoding_rows(args, weights) -> tuple[list[dict], dict]:
    """One row per N: the solve and both encodings of the N + 1 + P prompts; and what the run measured besides."""
    edits, preserved = prompt_lists()
    largest = max(args.concepts)
    if largest > len(edits) or args.preserved > len(preserved):
        raise SystemExit(f"at most {len(edits)} concepts and {len(preserved)} preserved prompts")
    every = [*edits[:largest], GUIDE, *preserved[: args.preserved]]
    pipe = clip_l_pipeline(every, args.tokenizer)
    sample = padded_sample(every, args.sample)
    padded, _ = encode(pipe, sample, "last", padded=True)  # also the warm-up
    short, _ = encode(pipe, sample, "last")
    a, b = last_rows(pipe, sample, short), last_rows(pipe, sample, padded)
    info = {
        "padded_sample": len(sample),
        "max_rel_diff": float((a - b).abs().max() / b.abs().max()),
        "tokenizer": f"{args.tokenizer or 'whole words'} ({len(pipe.tokenizer)} tokens)",
        "tokens_per_prompt": _length_summary(pipe, edits[:largest], preserved[: args.preserved]),
    }
    rows = []
    for n in args.concepts:
        prompts = [*edits[:n], GUIDE, *preserved[: args.preserved]]
        # the machine may be shared: the 77-padded cost is timed right before and after ours and averaged
        before = time_padded_per_prompt(pipe, sample)
        encode_s, _ = _timed(lambda prompts=prompts: encode(pipe, prompts, "last"))
        per_prompt = (before + time_padded_per_prompt(pipe, sample)) / 2
        solve = time_solve(weights, n, args.preserved, args.repeats)
        padded_s = per_prompt * len(prompts)
        rows.append(
            {
                "concepts": n,
                "preserved": args.preserved,
                "solve_s": round(solve, 4),
                "solve_float32_s": round(time_solve(weights, n, args.preserved, args.repeats, False), 4),
                "encode_padded_s": round(padded_s, 2),
                "encode_s": round(encode_s, 2),
                "total_padded_s": round(padded_s + solve, 2),
                "total_s": round(encode_s + solve, 2),
                "speedup": round((padded_s + solve) / (encode_s + solve), 1),
                "encode_padded_s_per_prompt": round(per_prompt, 4),
            }
        )
    if args.sort_check:
        info.update(sort_check(pipe, every[::3]))
    return rows, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concepts", type=int, nargs="+", default=[1, 10, 100, 1000])
    parser.add_argument("--preserved", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="median of this many solves, ours and the baseline")
    parser.add_argument("--sample", type=int, default=128, help="prompts the 77-padded encoding is timed on")
    parser.add_argument("--no-sort-check", dest="sort_check", action="store_false", help="skip the unsorted timing")
    parser.add_argument("--tokenizer", help="a CLIP tokenizer folder or hub id (default: one of whole words)")
    parser.add_argument("--baseline", action="store_true", help="also time the official-style loop (~30 s a run)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    weights = projections()
    rows, info = encoding_rows(args, weights)
    baseline = None
    if args.baseline:
        n = max(args.concepts)
        official = time_official_loop(weights, n, args.preserved, args.repeats)
        ours = next(r["solve_s"] for r in rows if r["concepts"] == n)
        baseline = {
            "concepts": n,
            "preserved": args.preserved,
            "official_loop_s": round(official, 2),
            "speedup": round(official / ours, 1),
        }
    print(f"UCE on SD-1.4-shaped projections and text encoder (torch threads: {torch.get_num_threads()})")
    head = ("concepts", "preserved", "solve f64", "solve f32", "enc 77-pad", "enc ours", "total 77", "total", "x")
    print(" ".join(f"{h:>10}" for h in head))
    for r in rows:
        cells = [r["concepts"], r["preserved"], f"{r['solve_s']:.3f}", f"{r['solve_float32_s']:.3f}"]
        cells += [f"{r[k]:.1f}" for k in ("encode_padded_s", "encode_s", "total_padded_s", "total_s", "speedup")]
        print(" ".join(f"{c:>10}" for c in cells))
    print(
        f"77-padded encoding: timed on {info['padded_sample']} prompts before and after ours, scaled; ours: every "
        f"prompt timed; the rows UCE reads differ by at most {info['max_rel_diff']:.1e} of their scale"
    )
    if args.sort_check:
        print(
            f"embeddings of {info['sort_check_prompts']} prompts, sorted by length: {info['embed_sorted_s']:.1f} s, "
            f"unsorted: {info['embed_unsorted_s']:.1f} s"
        )
    if baseline:
        print(
            f"official-style loop (rank-1 updates, per-layer inverse), {baseline['concepts']} concepts + "
            f"{baseline['preserved']} preserved: {baseline['official_loop_s']:.1f} s; ours is "
            f"{baseline['speedup']:.0f}x faster (median of {args.repeats} runs each)"
        )
    if args.json:
        out = {"rows": rows, "threads": torch.get_num_threads(), **info}
        out["speedup"] = rows[-1]["speedup"] if rows[-1]["concepts"] == max(args.concepts) else None
        out["timing"] = f"solve: median of {args.repeats} runs, ours and the baseline alike; encoding: one run"
        if baseline:
            out["baseline"] = baseline
        print(json.dumps(out))


if __name__ == "__main__":
    main()
