"""Latents of a training set, computed once and kept on disk.

Training in latent space encodes every image many times over a run; the encoder is frozen, so each image's
latent (the posterior mean, scaled) is computed once and stored as safetensors. A cache file is named by the
hash of the image set and records the autoencoder it came from (weight hash and scaling factor): another
autoencoder, or other images, recompute it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from maskray.diffusion.autoencoder import LatentCodec
from maskray.errors import MaskrayError
from maskray.training.data import TrainingArrays
from maskray.files import atomic_path


def images_hash(images: torch.Tensor | TrainingArrays) -> str:
    """SHA-256 of an image set: its stored tensor (dtype, shape and bytes) and, for TrainingArrays, the case ids."""
    h = hashlib.sha256()
    t = images.images if isinstance(images, TrainingArrays) else images
    if isinstance(images, TrainingArrays):
        h.update("\n".join(images.case_ids).encode())
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}|{tuple(t.shape)}".encode())
    h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _as_float(images: torch.Tensor | TrainingArrays, i: int, j: int) -> torch.Tensor:
    if isinstance(images, TrainingArrays):
        return images.batch(torch.arange(i, j))[0]
    return images[i:j].float()


def cached_latents(images: torch.Tensor | TrainingArrays, codec: LatentCodec, cache_dir: str | os.PathLike,
                   batch_size: int = 16, progress: bool = True) -> torch.Tensor:
    """Scaled posterior-mean latents ``(N, C, S/f, S/f)`` of images ``(N, 1, S, S)`` in ``[-1, 1]`` (or of a
    :class:`TrainingArrays`), read from ``cache_dir`` when they were computed there with this autoencoder."""
    n = len(images)
    shape = tuple(images.images.shape if isinstance(images, TrainingArrays) else images.shape)
    if len(shape) != 4 or shape[1] != 1:
        raise ValueError(f"expected (N, 1, S, S) images, got {shape}")
    key = {"images_sha256": images_hash(images), "autoencoder_sha256": codec.weights_hash(),
           "scaling_factor": repr(codec.scaling_factor)}
    path = Path(cache_dir) / f"latents-{key['images_sha256'][:16]}.safetensors"
    if path.is_file():
        try:
            with safe_open(str(path), framework="pt") as f:
                if f.metadata() == key:
                    return f.get_tensor("latents")
        except Exception as e:  # a damaged cache file is recomputed, but say so
            tqdm.write(f"maskray: {path}: unreadable latent cache ({e.__class__.__name__}); recomputing")
    codec.vae.eval()
    parts = []
    with torch.no_grad():
        for i in tqdm(range(0, n, batch_size), desc="encoding latents", unit="batch", disable=not progress,
                      leave=False):
            parts.append(codec.encode(_as_float(images, i, min(n, i + batch_size))).float().cpu())
    latents = torch.cat(parts).contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path) as tmp:
            save_file({"latents": latents}, str(tmp), metadata=key)
    except OSError as e:
        raise MaskrayError(f"{path}: cannot write latent cache ({e})") from None
    return latents
