"""Conditioning: label maps turned into what the ControlNet reads.

The mask enters as a one-hot stack of the model's foreground labels (background excluded), in the channel order the
model card records, at the model's resolution. A label the mask's dataset lacks becomes an all-zero channel, which is
also what conditioning dropout trains the ControlNet to read as "no mask here".

Several conditions at once (mask, edges) and the patient attributes travel together as one :class:`Conditions`;
edge maps are made in diffusion/edges.py and attribute vectors in diffusion/attributes.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from maskray.data.resize import resize_label
from maskray.errors import MaskrayError


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


@dataclass(frozen=True)
class Conditions:
    """Everything one batch is conditioned on: named condition maps and the patient-attribute vector.

    ``maps``: condition name -> float ``(N, C_k, H, W)`` (``None``: that condition is left out, so its ControlNet
    does not run); ``attributes``: float ``(N, D)`` multi-hot attribute vector (diffusion/attributes.py; an
    all-zero block means "unknown", which is what attribute dropout trains) or ``None``. Methods return new
    objects; no tensor is changed in place.
    """

    maps: dict[str, torch.Tensor | None] = field(default_factory=dict)
    attributes: torch.Tensor | None = None

    def to(self, device, memory_format: torch.memory_format = torch.contiguous_format) -> "Conditions":
        maps = {k: None if v is None else v.to(device).contiguous(memory_format=memory_format)
                for k, v in self.maps.items()}
        return Conditions(maps, None if self.attributes is None else self.attributes.to(device))

    def without(self, name: str | None) -> "Conditions":
        """The same with condition ``name`` zeroed (``"attributes"``: the attribute vector; ``None``: every map),
        which is what dropout in training taught the networks to read as "not given"."""
        if name == ATTRIBUTES:
            return Conditions(dict(self.maps), None if self.attributes is None else torch.zeros_like(self.attributes))
        maps = {k: None if v is None else (torch.zeros_like(v) if name in (None, k) else v)
                for k, v in self.maps.items()}
        return Conditions(maps, self.attributes)

    def with_lesion_over(self, lesion: int, region: int) -> "Conditions":
        """The same with every pixel of mask channel ``region`` (the lung fields) relabelled as channel ``lesion``
        (a nodule): the reference that lesion guidance steers away from, so that no nodule grows where the mask
        holds none while the asked-for ones (lesion in both) keep their pull."""
        mask = self.maps.get("mask")
        if mask is None:
            raise ValueError("lesion guidance needs the mask condition")
        neg = mask.clone()
        neg[:, lesion] = torch.maximum(mask[:, lesion], mask[:, region])
        neg[:, region] = 0
        return Conditions({**self.maps, "mask": neg}, self.attributes)

    @staticmethod
    def cat(items: list["Conditions"]) -> "Conditions":
        """Stack several batches along the batch dimension (the guided passes of one sampling step)."""
        maps = {k: None if items[0].maps[k] is None else torch.cat([c.maps[k] for c in items])
                for k in items[0].maps}
        attrs = None if items[0].attributes is None else torch.cat([c.attributes for c in items])
        return Conditions(maps, attrs)


ATTRIBUTES = "attributes"  # the guidance / scale key of the attribute vector


def as_conditions(cond: "torch.Tensor | Conditions | None") -> Conditions:
    """A bare tensor is the one condition map of a single-ControlNet model (the mask)."""
    if cond is None:
        return Conditions()
    if isinstance(cond, Conditions):
        return cond
    return Conditions({"mask": cond})


def parse_scales(value, names: list[str], flag: str) -> float | dict[str, float]:
    """``2`` / ``"2"`` -> 2.0 (every condition); ``"mask=1,edges=0.5"`` -> ``{"mask": 1.0, "edges": 0.5}``
    (a condition not named keeps 1). Unknown names are a one-line error naming the model's conditions."""
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    out = {}
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        name, eq, num = part.partition("=")
        name = name.strip()
        if not eq or name not in names:
            raise MaskrayError(f"{flag} {text}: '{part}' is not CONDITION=NUMBER with a condition of this model "
                               f"(allowed: {', '.join(names)})")
        try:
            out[name] = float(num)
        except ValueError:
            raise MaskrayError(f"{flag} {text}: '{num}' is not a number") from None
    return out
