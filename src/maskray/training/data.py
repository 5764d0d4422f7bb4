"""Training data held in memory: a dataset split resized to the model's size.

Images are held as integers 0..65535 (``(N, 1, S, S)``, exact for 8- and 16-bit files) and label maps as
uint8 (``(N, S, S)``) to keep memory
small; :meth:`TrainingArrays.batch` turns a batch into the data contract (float ``[-1, 1]``, int64).
Batches are a pure function of ``(seed, step)``: each epoch is a fresh permutation drawn from a
generator seeded with ``(seed, epoch)``, so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm import tqdm

from maskray.data.dataset import Dataset
from maskray.data.io import read_image_file
from maskray.data.resize import resize_image, resize_label
from maskray.errors import MaskrayError


@dataclass
class TrainingArrays:
    case_ids: list[str]
    images: torch.Tensor  # int32 (N, 1, S, S), 0..65535
    labels: torch.Tensor | None  # uint8 (N, S, S)
    latents: torch.Tensor | None = None  # float32 (N, C, S/f, S/f): what a latent model trains on

    def __len__(self) -> int:
        return len(self.case_ids)

    def indices(self, step: int, batch_size: int, seed: int) -> torch.Tensor:
        """The case indices of batch ``step``: consecutive slices of per-epoch permutations."""
        n = len(self)
        start = step * batch_size
        out = []
        while len(out) < batch_size:
            epoch, offset = divmod(start + len(out), n)
            g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            perm = torch.randperm(n, generator=g)
            out.extend(perm[offset: offset + batch_size - len(out)].tolist())
        return torch.tensor(out)

    def pixels(self, idx: torch.Tensor) -> torch.Tensor:
        """float32 ``(B, 1, S, S)`` images in ``[-1, 1]``."""
        return self.images[idx].float() / 65535.0 * 2.0 - 1.0

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(x, label)``: what the model denoises (images float32 ``(B, 1, S, S)`` in ``[-1, 1]``, or their
        latents when set) and int64 ``(B, S, S)`` label maps (or ``None``)."""
        x = self.latents[idx] if self.latents is not None else self.pixels(idx)
        lab = self.labels[idx].long() if self.labels is not None else None
        return x, lab


def load_arrays(ds: Dataset, size: int, split: str = "train", need_labels: bool = False,
                progress: bool = True) -> TrainingArrays:
    """Read one split of ``ds`` into memory at ``size`` x ``size``.

    Falls back to every case when the split is empty and no splits file exists (an unsplit dataset).
    """
    ids = ds.case_ids(split, labelled=need_labels)
    if not ids:
        raise MaskrayError(f"{ds.root}: split '{split}' holds no {'labelled ' if need_labels else ''}cases")
    imgs = torch.empty((len(ids), 1, size, size), dtype=torch.int32)
    labs = torch.empty((len(ids), size, size), dtype=torch.uint8) if need_labels else None
    for i, cid in enumerate(tqdm(ids, desc=f"loading {split}", unit="case", disable=not progress, leave=False)):
        case = ds.cases[cid]
        x = torch.from_numpy(read_image_file(case.image_path))[None, None]
        imgs[i] = torch.round(resize_image(x, size).clamp(0, 1) * 65535.0).to(torch.int32)[0]
        if need_labels:
            lab = ds.label(cid)
            if lab.shape != x.shape[-2:]:
                raise MaskrayError(f"{case.label_path}: label map is {tuple(lab.shape)} but its image is "
                                   f"{tuple(x.shape[-2:])}")
            labs[i] = resize_label(lab[None], size)[0].to(torch.uint8)
    return TrainingArrays(ids, imgs, labs)


def crops(arrays: TrainingArrays, step: int, batch_size: int, side: int, seed: int) -> torch.Tensor:
    """Batch ``step``: random ``side`` x ``side`` crops (and horizontal flips) of the images, ``(B, 1, side, side)``
    in ``[-1, 1]``; a pure function of ``(seed, step)``."""
    return crop_pairs(arrays, step, batch_size, side, seed)[0]


def crop_pairs(arrays: TrainingArrays, step: int, batch_size: int, side: int,
               seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`crops` and the same crops of the label maps (int64 ``(B, side, side)``; ``None`` without labels)."""
    idx = arrays.indices(step, batch_size, seed)
    x = arrays.pixels(idx)
    g = torch.Generator().manual_seed(seed * 7_654_321 + step)
    size = x.shape[-1]
    out = torch.empty(x.shape[0], 1, side, side)
    lab = None if arrays.labels is None else torch.empty(x.shape[0], side, side, dtype=torch.int64)
    for i in range(x.shape[0]):
        r, c = (torch.randint(0, size - side + 1, (2,), generator=g).tolist())
        out[i] = x[i, :, r:r + side, c:c + side]
        if lab is not None:
            lab[i] = arrays.labels[idx[i], r:r + side, c:c + side].long()
    flip = torch.rand(x.shape[0], generator=g) < 0.5
    out = torch.where(flip.view(-1, 1, 1, 1), out.flip(-1), out)
    if lab is not None:
        lab = torch.where(flip.view(-1, 1, 1), lab.flip(-1), lab)
    return out, lab
