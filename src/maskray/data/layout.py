"""The native dataset layout: nnU-Net v2's raw format, plus a maskray split file.

::

    Dataset/
      dataset.json        {"channel_names": {"0": "CR"}, "labels": {"background": 0, "lung": 1, ...},
                           "numTraining": N, "file_ending": ".png", "spacing": [sy, sx] (mm), ...}
      imagesTr/CASE_0000.png   8- or 16-bit grayscale
      labelsTr/CASE.png        integer label map, values from dataset.json
      imagesTs/, labelsTs/     optional held-out cases
      splits.json         {"train": [...], "val": [...], "test": [...], "patients": {case: patient}}

This page is the data contract; each part of it has one module, imported from there: the JSON files and their
schemas in :mod:`maskray.data.schema`, image and label I/O in :mod:`maskray.data.io`, the :class:`Dataset` in
:mod:`maskray.data.dataset`, output folders in :mod:`maskray.files`. Label maps become network channels here
(:func:`one_hot`).
"""

from __future__ import annotations

import torch


def one_hot(label: torch.Tensor, values: list[int]) -> torch.Tensor:
    """int64 ``(..., H, W)`` label map -> float32 ``(..., C, H, W)`` with one channel per value in ``values``."""
    vals = torch.as_tensor(values, dtype=label.dtype, device=label.device)
    oh = label.unsqueeze(-3) == vals.view(-1, 1, 1)
    return oh.to(torch.float32)
