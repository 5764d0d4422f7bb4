"""What ``generate`` conditions each image on, beyond the mask: edge maps of real images (``--edges-from``) and the
patient attributes asked for (``--attributes``). The per-condition scales and guidance
(``--conditioning-scale mask=1,edges=0.5``, ``--guidance-scale mask=2``, ``--attribute-guidance 2``) are the
model's sampler settings (diffusion/model.py, ``MaskModel.sampler_settings``).

A model trained on the mask alone without attributes gets the bare one-hot tensor, exactly as before several
conditions existed.
"""

from __future__ import annotations

import torch

from maskray.data.dataset import Dataset
from maskray.data.resize import resize_image
from maskray.diffusion.attributes import encode, parse_request
from maskray.diffusion.card import ModelCard
from maskray.diffusion.conditioning import Conditions, mask_condition
from maskray.diffusion.edges import EdgeConfig, edge_map
from maskray.errors import MaskrayError


class GenerationConditions:
    """The condition of every batch of one ``generate`` run, built from the model card and the options."""

    def __init__(self, card: ModelCard, mapping: list[int | None], edges_from: Dataset | None,
                 attributes: str | None, origins: dict[str, str]):
        self.card, self.mapping, self.edges_from, self.origins = card, mapping, edges_from, origins
        self.names = card.condition_names
        if edges_from is not None and "edges" not in self.names:
            raise MaskrayError(f"--edges-from: this model follows {', '.join(self.names)}, not edges; train it "
                               f"with --conditions mask,edges")
        self.edges = EdgeConfig.from_card(card.conditions["edges"]) if edges_from is not None else None
        self.request = parse_request(attributes or "", card.vocabulary)
        self.single_mask = self.names == ["mask"] and not card.vocabulary
        if "mask" not in self.names and edges_from is None:
            raise MaskrayError(f"this model follows {', '.join(self.names)} and not the mask; give --edges-from REAL")

    def build(self, labels: torch.Tensor, source_ids: list[str]) -> torch.Tensor | Conditions:
        """int ``(N, H, W)`` label maps and the mask cases they come from -> the model's condition."""
        size = self.card.image_size
        if self.single_mask:
            return mask_condition(labels, self.mapping, size)
        maps: dict[str, torch.Tensor | None] = {}
        for name in self.names:
            if name == "mask":
                maps[name] = mask_condition(labels, self.mapping, size)
            else:  # edges: from the real image behind each mask case, or left out (its ControlNet is skipped)
                maps[name] = None if self.edges_from is None else edge_map(
                    torch.stack([self.real_image(s) for s in source_ids]), self.edges)
        attrs = encode([self.request] * len(source_ids), self.card.vocabulary) if self.card.vocabulary else None
        return Conditions(maps, attrs)

    def real_image(self, mask_case: str) -> torch.Tensor:
        """float ``(1, S, S)`` in ``[-1, 1]``: the ``--edges-from`` image of a mask case (its source case when
        the masks come from ``maskray masks``), at the model's size."""
        source = self.origins.get(mask_case, mask_case)
        ds = self.edges_from
        if source not in ds.cases or ds.cases[source].image_path is None:
            raise MaskrayError(f"{ds.root}: has no image for case '{source}' to take edges from (mask case "
                               f"{mask_case})")
        return resize_image(ds.image(source)[None], self.card.image_size)[0]

    def record(self, mask_case: str) -> dict:
        """What the manifest records of a case's condition."""
        rec: dict = {}
        if self.request:
            rec["attributes"] = dict(self.request)
        if self.edges_from is not None:
            rec["edges_from"] = self.origins.get(mask_case, mask_case)
        return rec
