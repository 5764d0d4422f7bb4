"""Does a generated image show what its mask says? The per-image check of ``maskray generate --check``.

A checker is a segmenter (:class:`maskray.measures.segmenter.Segmenter`) trained on a model's real training pairs
and saved with its label names (``maskray train checker``). It scores one image against the mask it was drawn
for, with the same definitions ``evaluate`` uses for a whole set:

- Dice of every foreground label but the lesion (MSD convention, :func:`dice`) at least ``min_dice``;
- each asked-for lesion found: a candidate at probability >= ``operating_point`` whose centre lies inside it
  (the centre rule of :mod:`maskray.measures.detection`);
- no false lesion: no candidate at that probability outside every asked-for lesion.

Each record also holds ``false_score``, the probability of the strongest spot outside every asked-for lesion (0
when there is none from p 0.1, or from the false operating point when lower): ``generate --check-select best``
writes the passing attempt where it is least.

``false_operating_point`` (when set) counts false lesions from a lower probability than found ones, so that
a faint spot another segmenter might call a nodule fails the image too. An image passes when all three hold.
A :class:`CheckerPanel` applies several checkers at once (an image must pass each). Summed over a set,
``found`` and ``false_lesions`` are exactly the ``found`` and ``false_positives`` that ``evaluate``'s detection
reports at the same operating point, and the mean of the per-image Dice is its ``dice.all`` mean (tested).

Folder of a checker: ``checker.json`` (format version, label names and values, lesion label, image size, the
rule, the segmenter's config, weight hash) and ``checker.safetensors`` (tensors only; nothing is unpickled).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from maskray.errors import MaskrayError
from maskray.measures.detection import image_candidates
from maskray.measures.segmenter import Segmenter, SegmenterConfig
from maskray.provenance import file_sha256
from maskray.files import atomic_write

FORMAT_VERSION = 1
CONFIG, WEIGHTS = "checker.json", "checker.safetensors"


def dice(pred: torch.Tensor, target: torch.Tensor, values: list[int]) -> torch.Tensor:
    """Per-image, per-label Dice ``2|P & T| / (|P| + |T|)`` of int label maps ``(N, H, W)``, as the Medical
    Segmentation Decathlon scores it: 1 when truth and prediction are both empty, 0 when the truth is empty
    and anything is predicted. Returns float ``(N, len(values))``, never NaN."""
    if pred.shape != target.shape or pred.ndim != 3:
        raise ValueError(f"expected two (N, H, W) label maps of one shape, got {tuple(pred.shape)}, {tuple(target.shape)}")
    vals = torch.as_tensor(values).view(1, -1, 1, 1)
    p = pred.unsqueeze(1) == vals
    t = target.unsqueeze(1) == vals
    inter = (p & t).sum(dim=(-2, -1)).double()
    size = (p.sum(dim=(-2, -1)) + t.sum(dim=(-2, -1))).double()
    return torch.where(size > 0, 2 * inter / size.clamp_min(1), torch.ones_like(size)).float()


@dataclass(frozen=True)
class CheckRule:
    """What a generated image must show to pass."""

    min_dice: float = 0.8
    operating_point: float = 0.5
    lesion: str = "nodule"
    false_operating_point: float | None = None  # a spot outside every asked-for lesion counts from here (None: as found)


@dataclass
class Checker:
    """A saved segmenter plus the rule it applies, over the labels ``labels`` (name -> value, background 0)."""

    segmenter: Segmenter
    labels: dict[str, int]
    image_size: int
    rule: CheckRule = field(default_factory=CheckRule)

    @property
    def foreground(self) -> dict[str, int]:
        return {n: v for n, v in self.labels.items() if v != 0}

    def check(self, images: torch.Tensor, labels: torch.Tensor) -> list[dict]:
        """One record per image of ``(N, 1, H, W)`` images in ``[-1, 1]`` against int label maps ``(N, H, W)``
        holding this checker's label values: ``passed``, the reasons it failed, Dice per label, and for the
        lesion label the asked-for lesions, how many were found and how many false lesions it shows."""
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise MaskrayError(f"the checker works at {self.image_size} px; got images of {tuple(images.shape[-2:])}")
        probs = self.segmenter.probabilities(images)
        pred = self.segmenter.labels_from(probs)
        fg = self.foreground
        d = dice(pred, labels, list(fg.values()))
        rule = self.rule
        out = []
        for i in range(images.shape[0]):
            rec: dict = {"dice": {n: round(float(d[i, j]), 4) for j, n in enumerate(fg) if n != rule.lesion}}
            failures = [f"{n} Dice {v:.3f} < {rule.min_dice}" for n, v in rec["dice"].items() if v < rule.min_dice]
            if rule.lesion in fg:
                value = fg[rule.lesion]
                false_point = rule.operating_point if rule.false_operating_point is None else rule.false_operating_point
                # found lesions are evaluate's candidates (from p 0.1); false spots from the false point when lower
                # (a second pass: lower-threshold components can merge, which would change the found count)
                lesion_probs = probs[i:i + 1, self.segmenter.values.index(value)]
                cands = image_candidates(lesion_probs, labels[i:i + 1], value, threshold=0.1)
                spots = cands if false_point >= 0.1 else image_candidates(lesion_probs, labels[i:i + 1], value,
                                                                          threshold=false_point)
                lesions = cands["lesions"][0]
                found = sum(1 for s, hit in cands["candidates"][0] if hit and s >= rule.operating_point)
                false = sum(1 for s, hit in spots["candidates"][0] if not hit and s >= false_point)
                # the strongest spot outside every asked-for lesion (0: none from the candidates' threshold)
                strongest = max((s for s, hit in spots["candidates"][0] if not hit), default=0.0)
                rec.update(lesions=lesions, found=found, false_lesions=false, false_score=round(float(strongest), 4))
                if found < lesions:
                    failures.append(f"{lesions - found} of {lesions} {rule.lesion}s not found")
                if false:
                    failures.append(f"{false} false {rule.lesion}(s)")
            rec.update(passed=not failures, failures=failures)
            out.append(rec)
        return out

    def save(self, folder: str | os.PathLike, provenance: dict | None = None) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.segmenter.save(folder / WEIGHTS)
        record = {"format_version": FORMAT_VERSION, "labels": self.labels, "image_size": self.image_size,
                  "rule": asdict(self.rule), "segmenter": self.segmenter.config_record(),
                  "weights_sha256": file_sha256(folder / WEIGHTS), **({"trained": provenance} if provenance else {})}
        atomic_write(folder / CONFIG, json.dumps(record, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, rule: CheckRule | None = None) -> "Checker":
        """A checker from :meth:`save`'s folder; ``rule`` replaces the stored one (the ``--check-*`` options)."""
        folder = Path(folder)
        cpath, wpath = folder / CONFIG, folder / WEIGHTS
        if not cpath.is_file() or not wpath.is_file():
            raise MaskrayError(f"{folder}: not a checker folder (needs {CONFIG} and {WEIGHTS}; make one with "
                               f"`maskray train checker`)")
        try:
            raw = json.loads(cpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise MaskrayError(f"{cpath}: not valid JSON ({e})") from None
        if not isinstance(raw, dict) or raw.get("format_version") != FORMAT_VERSION:
            raise MaskrayError(f"{cpath}: not a checker record of format version {FORMAT_VERSION}")
        if file_sha256(wpath) != raw.get("weights_sha256"):
            raise MaskrayError(f"{wpath}: does not match the hash in {CONFIG}")
        try:
            labels = {str(k): int(v) for k, v in raw["labels"].items()}
            seg = Segmenter.load(wpath, sorted(labels.values()), SegmenterConfig.from_record(raw["segmenter"]))
            stored = CheckRule(**raw["rule"])
            size = int(raw["image_size"])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise MaskrayError(f"{cpath}: invalid checker record ({e})") from None
        return cls(seg, labels, size, rule or stored)


@dataclass
class CheckerPanel:
    """Several checkers (other seeds, or other segmenters) applied as one: an image passes only when every one
    passes it, and each figure of its record is the strictest of theirs (least Dice and found, most false
    lesions). Two segmenters seldom share a false spot, so a panel rejects more of them than either alone."""

    members: list[Checker]

    def __post_init__(self):
        first = self.members[0]
        for m in self.members[1:]:
            if m.labels != first.labels or m.image_size != first.image_size:
                raise MaskrayError("the checkers of a panel must share their labels and image size "
                                   f"({first.labels} at {first.image_size} px against {m.labels} at {m.image_size} px)")
            if m.rule != first.rule:  # the panel's record states one rule (``rule``)
                raise MaskrayError("the checkers of a panel store different rules; give the --check-* options so "
                                   "that one rule applies to all")

    @property
    def labels(self) -> dict[str, int]:
        return self.members[0].labels

    @property
    def image_size(self) -> int:
        return self.members[0].image_size

    @property
    def rule(self) -> CheckRule:
        return self.members[0].rule

    def check(self, images: torch.Tensor, labels: torch.Tensor) -> list[dict]:
        """:meth:`Checker.check`'s records, one per image, merged over the members."""
        per_member = [m.check(images, labels) for m in self.members]
        out = []
        for recs in zip(*per_member):
            rec: dict = {"dice": {n: min(r["dice"][n] for r in recs) for n in recs[0]["dice"]}}
            if "lesions" in recs[0]:
                rec.update(lesions=recs[0]["lesions"], found=min(r["found"] for r in recs),
                           false_lesions=max(r["false_lesions"] for r in recs),
                           false_score=max(r["false_score"] for r in recs))
            failures = [f"checker {k + 1}: {f}" for k, r in enumerate(recs) for f in r["failures"]]
            rec.update(passed=not failures, failures=failures)
            out.append(rec)
        return out


def summarize_checks(records: list[dict]) -> dict:
    """Pass count and lesion figures of a list of :meth:`Checker.check` records."""
    n = len(records)
    out = {"images": n, "passed": sum(r["passed"] for r in records)}
    out["pass_rate"] = out["passed"] / n if n else float("nan")
    out["failed_dice"] = sum(any("Dice" in f for f in r["failures"]) for r in records)
    if records and "lesions" in records[0]:
        lesions = sum(r["lesions"] for r in records)
        found = sum(r["found"] for r in records)
        out.update(lesions=lesions, found=found, sensitivity=found / lesions if lesions else float("nan"),
                   false_lesions_per_image=sum(r["false_lesions"] for r in records) / n,
                   failed_missed=sum(r["found"] < r["lesions"] for r in records),
                   failed_false=sum(r["false_lesions"] > 0 for r in records))
    return out
