"""Where an autoencoder run starts: fresh weights, or an existing autoencoder or latent model's (``--init-from``),
and with ``--decoder-only`` which of its parts stay frozen.

A decoder-only run keeps the encoder (and its ``quant_conv``) and the latent scaling factor exactly as they were,
so every latent a base and ControlNet learned on is unchanged and the model keeps working with the new decoder;
the run checks at the end that the encoder's weights did not move.
"""

from __future__ import annotations

from pathlib import Path

import torch

from maskray.diffusion.autoencoder import CARD_FILE as CODEC_CARD
from maskray.diffusion.autoencoder import LatentCodec, state_hash
from maskray.diffusion.card import CARD_FILE as MODEL_CARD
from maskray.diffusion.store import load_codec, model_folder, read_card
from maskray.errors import MaskrayError


def open_start(path: str) -> tuple[LatentCodec, Path | None]:
    """The codec at ``path`` (an autoencoder run, its ``autoencoder/`` folder, or a latent model: a run, model
    folder or checkpoint) and the model folder it belongs to (``None`` for an autoencoder)."""
    p = Path(path)
    is_model = (p / MODEL_CARD).is_file() or (p / "model" / MODEL_CARD).is_file()  # a model holds autoencoder/ too
    for cand in (p, *(() if is_model else (p / "autoencoder",))):
        if (cand / CODEC_CARD).is_file():
            return LatentCodec.load(cand), None
    folder = model_folder(p)
    card = read_card(folder)
    if card.latent is None or card.pretrained is not None:
        raise MaskrayError(f"{path}: --init-from needs a maskray autoencoder or a latent model with its own "
                           f"autoencoder (this model {'works on pixels' if card.latent is None else 'uses a Stable Diffusion VAE'})")
    return load_codec(folder, card), folder


def encoder_part(vae) -> torch.nn.ModuleDict:
    """The part of an ``AutoencoderKL`` that makes latents: the encoder and its ``quant_conv``."""
    return torch.nn.ModuleDict({"encoder": vae.encoder, "quant_conv": vae.quant_conv})


def encoder_hash(vae) -> str:
    return state_hash(encoder_part(vae))


def freeze_encoder(vae) -> None:
    """Freeze the latent-making part (in eval mode, which an ``AutoencoderKL`` encoder without dropout or batch
    norm does not need, but which says what it is)."""
    encoder_part(vae).requires_grad_(False).eval()
