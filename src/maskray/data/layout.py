"""The native dataset layout: nnU-Net v2's raw format, plus a maskray split file.

::

    Dataset/
      dataset.json        {"channel_names": {"0": "CR"}, "labels": {"background": 0, "lung": 1, ...},
                           "numTraining": N, "file_ending": ".png", "spacing": [sy, sx] (mm), ...}
      imagesTr/CASE_0000.png   8- or 16-bit grayscale
      labelsTr/CASE.png        integer label map, values from dataset.json
      imagesTs/, labelsTs/     optional held-out cases
      splits.json         {"train": [...], "val": [...], "test": [...], "patients": {case: patient}}

Each concern has its own module; this one gathers their names for the commands that use several:
the JSON files and their schemas in :mod:`maskray.data.schema`, image and label I/O in
:mod:`maskray.data.io`, the :class:`Dataset` in :mod:`maskray.data.dataset`, output folders in
:mod:`maskray.files`.
"""

from __future__ import annotations

import torch

from maskray.data.dataset import Case, Dataset, image_path, label_path, write_case
from maskray.data.io import read_image_file, read_label_file, write_image_file, write_label_file
from maskray.data.schema import (CHANNEL_SUFFIX, SPLIT_NAMES, SPLITS_FILE, DatasetInfo, read_dataset_info,
                                 write_dataset_info, write_splits)
from maskray.files import prepare_output_dir

__all__ = ["CHANNEL_SUFFIX", "SPLITS_FILE", "SPLIT_NAMES", "Case", "Dataset", "DatasetInfo", "image_path",
           "label_path", "one_hot", "prepare_output_dir", "read_dataset_info", "read_image_file", "read_label_file",
           "write_case", "write_dataset_info", "write_image_file", "write_label_file", "write_splits"]


def one_hot(label: torch.Tensor, values: list[int]) -> torch.Tensor:
    """int64 ``(..., H, W)`` label map -> float32 ``(..., C, H, W)`` with one channel per value in ``values``."""
    vals = torch.as_tensor(values, dtype=label.dtype, device=label.device)
    oh = label.unsqueeze(-3) == vals.view(-1, 1, 1)
    return oh.to(torch.float32)
