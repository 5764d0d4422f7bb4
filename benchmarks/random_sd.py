"""A Stable Diffusion folder in diffusers layout with every part randomly initialised, written here: nothing is
downloaded. ``tiny`` shapes for the tests (32 px, seconds on a CPU); ``sd15`` the shapes of Stable Diffusion 1.5
(UNet 320-640-1280-1280 with cross-attention 768, VAE factor 8, a 77-token text encoder of width 768), so one
512 px ControlNet step costs what it costs on the real model (benchmarks/gpu_smoke.py). The text encoder is
shallow in both (its depth does not change a ControlNet step's shapes).
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

SHAPES = {
    "tiny": dict(unet=dict(sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
                           down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                           up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                           attention_head_dim=8),
                 vae=dict(block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=4),
                 text=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4),
                 max_tokens=16),
    "sd15": dict(unet=dict(sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                           down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                           up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768,
                           attention_head_dim=8),
                 vae=dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32),
                 text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=1, num_attention_heads=12),
                 max_tokens=77),
}


def tokenizer(folder: Path, max_tokens: int) -> tuple[CLIPTokenizer, int]:
    """A character-level CLIP BPE tokenizer: every lowercase letter is a token (so prompts differ in ids)."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_tokens), \
        len(vocab)


def unet(shapes: str = "tiny", seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(in_channels=4, out_channels=4, **SHAPES[shapes]["unet"])


def make_sd_folder(root: Path, shapes: str = "tiny") -> Path:
    """Write the folder (tokenizer, text_encoder, unet, vae, scheduler) and return it."""
    s = SHAPES[shapes]
    tok, vocab_size = tokenizer(root.parent / f"{root.name}-vocab", s["max_tokens"])
    tok.save_pretrained(root / "tokenizer")
    torch.manual_seed(1)
    CLIPTextModel(CLIPTextConfig(vocab_size=vocab_size, max_position_embeddings=s["max_tokens"], bos_token_id=0,
                                 eos_token_id=1, pad_token_id=1, **s["text"])).save_pretrained(root / "text_encoder")
    unet(shapes).save_pretrained(root / "unet")
    torch.manual_seed(2)
    n = len(s["vae"]["block_out_channels"])
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, down_block_types=("DownEncoderBlock2D",) * n,
                  up_block_types=("UpDecoderBlock2D",) * n, **s["vae"]).save_pretrained(root / "vae")
    PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                  set_alpha_to_one=False, steps_offset=1).save_pretrained(root / "scheduler")
    return root
