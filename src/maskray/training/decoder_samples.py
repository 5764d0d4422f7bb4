"""Latents the model itself draws, for a decoder-only run (``--sampled-batch N``): the decoder then also learns on
what it will decode.

A lesion-aware decoder trained on the encoder's latents of real images learns not to draw a nodule those latents
do not hold; the latents a ControlNet samples differ from them, and most false nodules of generated images come
from those (benchmarks/results/decoder_phantom.json). So the ``--init-from`` model draws one latent per training
mask, once, at its card's sampler and guidance (cached in ``RUN/sampled_latents.safetensors``, a pure function of
the seed, so ``--resume`` reads the same ones); each step decodes ``N`` of them and the checker's DiceCE against
their masks joins the loss. They have no paired image, so no reconstruction term applies to them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from maskray.diffusion.conditioning import mask_condition
from maskray.diffusion.model import MaskModel
from maskray.distributed import device, resolve_precision
from maskray.errors import MaskrayError
from maskray.files import atomic_path
from maskray.training.data import TrainingArrays

CACHE = "sampled_latents.safetensors"


def sampled_latents(model_path: Path, arrays: TrainingArrays, labels: dict[str, int], out: Path, seed: int,
                    batch_size: int = 16, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(z, labels)``: one unscaled latent ``(N, C, h, w)`` the model draws for each training mask, and the
    masks (int64 ``(N, S, S)``)."""
    from safetensors.torch import load_file, save_file

    lab = arrays.labels.long()
    path = out / CACHE
    if path.is_file():
        got = load_file(str(path))
        if got["labels"].shape != lab.shape or not torch.equal(got["labels"], lab):
            raise MaskrayError(f"{path}: drawn for other masks than this run's training split")
        return got["latents"], got["labels"]
    model = MaskModel.load(model_path, need_controlnet=True)
    card = model.card
    if card.condition_names != ["mask"] or card.attributes:
        raise MaskrayError(f"{model_path}: --sampled-batch needs a model that follows the mask alone")
    if card.image_size != lab.shape[-1]:
        raise MaskrayError(f"{model_path}: works at {card.image_size} px, the run at {lab.shape[-1]} px")
    settings = model.sampler_settings()
    dev = device()
    precision = resolve_precision("auto", dev)
    model.prepare(dev, precision, channels_last=True)
    mapping = [labels.get(n) for n in card.labels]
    zs = []
    for i in tqdm(range(0, len(lab), batch_size), desc="sampling latents", unit="batch", disable=not progress):
        chunk = lab[i:i + batch_size]
        gens = [torch.Generator().manual_seed(seed * 1_000_003 + 7_919 + i + k) for k in range(len(chunk))]
        z = model.sample(gens, mask_condition(chunk, mapping, card.image_size), settings, precision=precision,
                         device=dev, channels_last=True, decode=False)
        zs.append(z.float() / model.codec.scaling_factor)
    latents = torch.cat(zs).contiguous()
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({"latents": latents, "labels": lab.contiguous()}, str(tmp))
    return latents, lab
