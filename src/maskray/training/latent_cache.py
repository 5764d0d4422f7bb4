"""Latents of a training set, computed once and kept on disk.

Training in latent space encodes every image many times over a run; the encoder is frozen, so each image's
latent (the posterior mean, scaled) is computed once and stored as safetensors. A cache file is named by the
hash of the image set and records the autoencoder it came from (weight hash and scaling factor): another
autoencoder, or other images, recompute it.

Under several processes (``accelerate launch``) only the main process reads or encodes and writes the file; the
others wait for it and then read what it wrote. So N processes encode once, not N times, and no process reads a
file another is still writing (the write itself is atomic: a temporary file renamed into place). Like checkpoints,
this assumes the output folder is one file system for every process.
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
from maskray.distributed import on_main
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
        return images.pixels(torch.arange(i, j))
    return images[i:j].float()


def _read(path: Path, key: dict[str, str]) -> torch.Tensor | None:
    """The cached latents at ``path`` if it was written for ``key``; ``None`` when absent, stale or damaged."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.get_tensor("latents") if f.metadata() == key else None
    except Exception as e:  # a damaged cache file is recomputed, but say so
        tqdm.write(f"maskray: {path}: unreadable latent cache ({e.__class__.__name__}); recomputing")
        return None


def _encode_and_write(images, codec: LatentCodec, path: Path, key: dict[str, str], batch_size: int,
                      progress: bool) -> torch.Tensor:
    n = len(images)
    codec.vae.eval()
    parts = []
    with torch.no_grad():
        for i in tqdm(range(0, n, batch_size), desc="encoding latents", unit="batch", disable=not progress,
                      leave=False):
            parts.append(codec.encode(_as_float(images, i, min(n, i + batch_size))).float().cpu())
    latents = torch.cat(parts).contiguous()
    try:
        with atomic_path(path) as tmp:
            save_file({"latents": latents}, str(tmp), metadata=key)
    except OSError as e:
        raise MaskrayError(f"{path}: cannot write latent cache ({e})") from None
    return latents


def cached_latents(images: torch.Tensor | TrainingArrays, codec: LatentCodec, cache_dir: str | os.PathLike,
                   batch_size: int = 16, progress: bool = True,
                   also_read: tuple[str | os.PathLike, ...] = ()) -> torch.Tensor:
    """Scaled posterior-mean latents ``(N, C, S/f, S/f)`` of images ``(N, 1, S, S)`` in ``[-1, 1]`` (or of a
    :class:`TrainingArrays`), read from ``cache_dir`` when they were computed there with this autoencoder, or from
    a folder of ``also_read`` (read only: stage 2 takes its base's cache of the same images and autoencoder).
    Under several processes the main process computes and writes them, the others read its file."""
    shape = tuple(images.images.shape if isinstance(images, TrainingArrays) else images.shape)
    if len(shape) != 4 or shape[1] != 1:
        raise ValueError(f"expected (N, 1, S, S) images, got {shape}")
    key = {"images_sha256": images_hash(images), "autoencoder_sha256": codec.weights_hash(),
           "scaling_factor": repr(codec.scaling_factor)}
    path = Path(cache_dir) / f"latents-{key['images_sha256'][:16]}.safetensors"

    places = [path, *(Path(d) / path.name for d in also_read)]

    def read_any() -> torch.Tensor | None:
        for place in places:
            found = _read(place, key)
            if found is not None:
                return found
        return None

    def main_process() -> torch.Tensor:
        cached = read_any()
        return cached if cached is not None else _encode_and_write(images, codec, path, key, batch_size, progress)

    latents = on_main(main_process)
    if latents is None:  # another process: the main one has found or written the file by now
        latents = read_any()
        if latents is None:
            raise MaskrayError(f"{path}: the main process wrote no readable latent cache for these images")
    return latents
