"""The data set a page serves: cases looked up by id (never joined into a path), nodules placed by the rules
of ``maskray masks`` (inside the lung field, the edge ``border_margin_mm`` from its border, ``min_gap_mm``
from every other nodule; :mod:`maskray.data.masks`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from maskray.data.dataset import Dataset
from maskray.data.masks import (MaskSynthConfig, NoduleShape, MaskCase, distance_mm, resolve_labels, pixel_spacing,
                                rasterize)
from maskray.data.resize import resize_image, resize_label
from maskray.errors import MaskrayError

MAX_NODULES = 8


class UnknownCase(MaskrayError):
    """A case id the served data set does not hold."""


class PlacementError(MaskrayError):
    """A nodule that the rules of ``maskray masks`` do not allow where it was asked for."""

    def __init__(self, index: int, message: str):
        super().__init__(message)
        self.index = index


@dataclass(frozen=True)
class Nodule:
    """A round nodule: centre in pixels of the case's label map (row, column), diameter in mm."""

    y: int
    x: int
    diameter_mm: float


class Workspace:
    """Read-only access to the labelled cases of one data set."""

    def __init__(self, root: str | Path, rules: MaskSynthConfig | None = None):
        self.rules = rules or MaskSynthConfig()
        self.rules.check()
        self.dataset = Dataset(root)
        info = self.dataset.info
        labels, self.lung_values, self.nodule_value, note = resolve_labels(info, self.rules, self.dataset.root)
        if note is not None:
            raise MaskrayError(f"{self.dataset.root}/dataset.json: has no label '{self.rules.nodule_label}', so "
                               f"nodules cannot be placed")
        self.spacing = pixel_spacing(info, self.rules, self.dataset.root)
        self.ids = self.dataset.case_ids(labelled=True)
        if not self.ids:
            raise MaskrayError(f"{self.dataset.root}: no labelled cases to place nodules in")
        self._known = set(self.ids)

    # ------------------------------------------------------------------------------------ lookup
    def check_id(self, case_id: str) -> str:
        """The id itself if the data set holds it; an id is compared, never used to build a path."""
        if case_id not in self._known:
            shown = case_id if len(case_id) <= 60 else case_id[:60] + "..."
            raise UnknownCase(f"no case {shown!r} in the served data set")
        return case_id

    def search(self, query: str = "", offset: int = 0, limit: int = 40) -> tuple[int, list[str]]:
        """Case ids containing ``query`` (case-insensitive), sorted: ``(number matching, one page of them)``."""
        q = query.strip().lower()
        hits = [c for c in self.ids if q in c.lower()] if q else self.ids
        return len(hits), hits[offset: offset + limit]

    def has_image(self, case_id: str) -> bool:
        return self.dataset.cases[self.check_id(case_id)].image_path is not None

    def image01(self, case_id: str, size: int | None = None) -> np.ndarray | None:
        """float32 ``(H, W)`` in ``[0, 1]`` (resized to ``size`` if given), or None for a mask-only case."""
        if not self.has_image(case_id):
            return None
        x = self.dataset.image(case_id)
        if size is not None:
            x = resize_image(x[None], size)[0]
        return ((x[0] + 1) / 2).clamp(0, 1).numpy()

    def label(self, case_id: str) -> np.ndarray:
        """int64 ``(H, W)`` label map of the case as stored."""
        return self.dataset.label(self.check_id(case_id)).numpy()

    def existing_nodules(self, case_id: str) -> int:
        from scipy import ndimage

        return int(ndimage.label(self.label(case_id) == self.nodule_value)[1])

    # ------------------------------------------------------------------------------------ editing
    def place(self, case_id: str, nodules: list[Nodule]) -> tuple[np.ndarray, list[dict]]:
        """The case's label map with ``nodules`` painted in order, and a record of each.

        Raises :class:`PlacementError` naming the first nodule that breaks a rule and why.
        """
        label = self.label(case_id)
        if len(nodules) > MAX_NODULES:
            raise PlacementError(MAX_NODULES, f"at most {MAX_NODULES} nodules per image (asked for {len(nodules)})")
        case = MaskCase(label.copy(), self.lung_values, self.nodule_value, self.spacing)
        records = []
        for i, nod in enumerate(nodules):
            shape = self._check(case, i, nod)
            painted = case.paint(rasterize(shape, (nod.y, nod.x), label.shape, self.spacing))
            records.append({"centre_px": [nod.y, nod.x],
                            "centre_mm": [round(nod.y * self.spacing[0], 3), round(nod.x * self.spacing[1], 3)],
                            "diameter_mm": round(float(nod.diameter_mm), 3), "area_px": painted})
        return case.label, records

    def _check(self, case: MaskCase, i: int, nod: Nodule) -> NoduleShape:
        r, h, w = self.rules, *case.label.shape
        name = f"nodule {i + 1}"
        if not r.diameter_min_mm <= nod.diameter_mm <= r.diameter_max_mm:
            raise PlacementError(i, f"{name}: diameter {nod.diameter_mm:g} mm is outside "
                                    f"{r.diameter_min_mm:g}..{r.diameter_max_mm:g} mm")
        if not (0 <= nod.y < h and 0 <= nod.x < w):
            raise PlacementError(i, f"{name}: ({nod.y}, {nod.x}) lies outside the {h} x {w} px image")
        if not case.field()[nod.y, nod.x]:
            raise PlacementError(i, f"{name}: ({nod.y}, {nod.x}) is outside the lung field")
        shape = NoduleShape(nod.diameter_mm / 2.0)
        if not case.feasible(shape.outer_radius_mm, r)[nod.y, nod.x]:
            room = float(distance_mm(case.field(), self.spacing)[nod.y, nod.x]) - r.border_margin_mm
            if room < shape.outer_radius_mm:
                raise PlacementError(i, f"{name}: {nod.diameter_mm:g} mm does not fit here with its edge "
                                        f"{r.border_margin_mm:g} mm inside the lung border (at most "
                                        f"{max(2 * room, 0):.1f} mm here); move it inward or make it smaller")
            raise PlacementError(i, f"{name}: its edge must stay {r.min_gap_mm:g} mm from every other nodule; "
                                    f"move it away or make it smaller")
        return shape

    def at_size(self, label: np.ndarray, size: int) -> torch.Tensor:
        """int64 ``(size, size)``: a label map resized as ``maskray generate`` resizes it."""
        return resize_label(torch.from_numpy(label)[None], size)[0]

    def spacing_at(self, size: int, height: int) -> tuple[float, float]:
        """Pixel spacing (mm) of an image of ``size`` px made from a label map ``height`` px high."""
        return (self.spacing[0] * height / size, self.spacing[1] * height / size)
