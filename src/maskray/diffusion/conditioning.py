"""Conditioning: label maps turned into what the ControlNet reads.

The mask enters as a one-hot stack of the model's foreground labels (background excluded), in the channel order the
model card records, at the model's resolution. A label the mask's dataset lacks becomes an all-zero channel, which is
also what conditioning dropout trains the ControlNet to read as "no mask here".
"""

from __future__ import annotations

import torch

from maskray.data.resize import resize_label


def one_hot(label: torch.Tensor, values: list[int]) -> torch.Tensor:
    """int64 ``(..., H, W)`` label map -> float32 ``(..., C, H, W)`` with one channel per value in ``values``.

    A value that no pixel holds (e.g. ``-1`` for a label the mask's dataset lacks) gives an all-zero channel."""
    vals = torch.as_tensor(values, dtype=label.dtype, device=label.device)
    oh = label.unsqueeze(-3) == vals.view(-1, 1, 1)
    return oh.to(torch.float32)


def mask_condition(labels: torch.Tensor, values: list[int | None], size: int) -> torch.Tensor:
    """int ``(N, H, W)`` label maps -> float32 ``(N, len(values), size, size)`` one-hot condition.

    ``values[k]`` is the mask value of the model's k-th condition label, ``None`` where the masks lack it."""
    lab = resize_label(labels.long(), size)
    return one_hot(lab, [-1 if v is None else v for v in values])


def drop_conditions(cond: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Zero the whole condition of each sample with probability ``p`` (classifier-free guidance training).

    The draw comes from ``generator`` so that a training step stays a pure function of its seed. Returns a new
    tensor; ``cond`` is not modified."""
    drop = torch.rand(cond.shape[0], generator=generator) < p
    return cond * (~drop).to(cond.dtype).view(-1, *([1] * (cond.ndim - 1))).to(cond.device)
