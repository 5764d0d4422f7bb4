"""What a training batch is conditioned on, per stage: the mask (one-hot), edge maps (Canny, from the batch's own
images) and the patient attributes (from ``cases.json``), each dropped independently for guidance.

A run that follows the mask alone and has no attributes keeps the single-ControlNet form (a bare one-hot tensor,
the same random draws as before several conditions existed); any other run gets a
:class:`~maskray.diffusion.conditioning.Conditions`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from maskray.diffusion.attributes import Vocabulary, drop_attributes, encode
from maskray.diffusion.conditioning import Conditions, drop_conditions, one_hot
from maskray.diffusion.edges import EdgeConfig, edge_map
from maskray.errors import MaskrayError

CONDITION_NAMES = ("mask", "edges")


def check_condition_names(names: tuple[str, ...]) -> None:
    unknown = [n for n in names if n not in CONDITION_NAMES]
    if unknown or not names or len(set(names)) != len(names):
        raise MaskrayError(f"--conditions {','.join(names)}: allowed are {', '.join(CONDITION_NAMES)}, each once, "
                           f"at least one")


@dataclass
class ConditionMaker:
    """Turns a batch into its condition. ``names``: condition maps in ControlNet order (empty for a base)."""

    names: tuple[str, ...]
    label_values: list[int]
    edges: EdgeConfig | None
    vocab: Vocabulary
    case_attributes: dict[str, dict[str, str]]

    @property
    def single_mask(self) -> bool:
        return self.names == ("mask",) and not self.vocab

    def channels(self, name: str) -> int:
        return len(self.label_values) if name == "mask" else 1

    def make(self, labels: torch.Tensor | None, images: torch.Tensor | None,
             case_ids: list[str] | None) -> torch.Tensor | Conditions | None:
        """The whole condition of a batch (nothing dropped). ``labels`` int64 ``(B, S, S)``, ``images`` float
        ``(B, 1, S, S)`` in ``[-1, 1]``, ``case_ids`` the batch's cases (for their attributes)."""
        if not self.names and not self.vocab:
            return None
        maps = {}
        for name in self.names:
            if name == "mask":
                maps[name] = one_hot(labels, self.label_values)
            else:
                maps[name] = edge_map(images, self.edges).to(images.device)
        if self.single_mask:
            return maps["mask"]
        attrs = None
        if self.vocab:
            attrs = encode([self.case_attributes.get(c) for c in case_ids], self.vocab)
        return Conditions(maps, attrs)

    def drop(self, cond, p: float, generator: torch.Generator):
        """Each condition map, and the attributes, dropped independently with probability ``p``."""
        if cond is None:
            return None
        if isinstance(cond, torch.Tensor):
            return drop_conditions(cond, p, generator)
        maps = {k: drop_conditions(v, p, generator) for k, v in cond.maps.items()}
        attrs = None if cond.attributes is None else drop_attributes(cond.attributes, self.vocab, p, generator)
        return Conditions(maps, attrs)

    def card_conditions(self) -> dict:
        """The model card's ``conditions`` (empty for the single-mask form)."""
        if not self.names or self.names == ("mask",):
            return {}
        return {n: (self.edges.to_card() if n == "edges" else {"channels": self.channels(n)}) for n in self.names}
