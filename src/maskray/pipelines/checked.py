"""``generate --check CHECKER``: every generated image is scored against its own mask before it is written.

An image that fails the check (:mod:`maskray.measures.mask_check`: a label's Dice under the floor, an asked-for
nodule not found, or a nodule where the mask has none) is drawn again with the case's next seed, up to
``--check-tries`` attempts. A case that passes is written with the attempt that passed; one that never passes
is given up: not written (the default), or written as its best attempt with ``--check-keep-failed``.
``--check-select best`` draws every attempt and writes the passing one with the faintest spot outside the
asked-for nodules (a case stops early at an attempt with none). Each case's
scores, attempts and outcome are kept in ``OUT/.check/CASE.json`` as it finishes (so ``--resume`` continues with
them) and go into ``manifest.json`` (``check``) and ``check.json`` (the run's counts) at the end.

Attempt 0 uses the case's ordinary seed, so a case that passes at once has the bytes of an unchecked run.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Literal, get_args

import torch

from maskray.errors import MaskrayError
from maskray.files import atomic_write, read_json
from maskray.measures.mask_check import CheckRule, Checker, CheckerPanel, summarize_checks

RECORDS = ".check"


def open_checker(folders: str, min_dice: float | None, operating_point: float | None, image_size: int,
                 mask_labels: dict[str, int], false_operating_point: float | None = None) -> Checker | CheckerPanel:
    """The checker of ``--check`` (one folder, or several separated by commas: a :class:`CheckerPanel`) with the
    ``--check-*`` overrides of its stored rule (None: as stored), refused when it cannot score these masks at
    this model's size."""
    overrides = {k: v for k, v in (("min_dice", min_dice), ("operating_point", operating_point),
                                   ("false_operating_point", false_operating_point)) if v is not None}
    members = []
    for folder in checker_folders(folders):
        checker = Checker.load(folder)
        checker.rule = dataclasses.replace(checker.rule, **overrides)
        if checker.image_size != image_size:
            raise MaskrayError(f"{folder}: the checker works at {checker.image_size} px but the model draws "
                               f"{image_size} px images; train one with `maskray train checker --image-size "
                               f"{image_size}`")
        unknown = [n for n, v in mask_labels.items() if v != 0 and n not in checker.labels]
        if unknown:
            raise MaskrayError(f"{folder}: the checker was not trained on labels {unknown} of the masks")
        members.append(checker)
    if len(members) == 1:
        return members[0]
    try:
        return CheckerPanel(members)
    except MaskrayError as e:
        raise MaskrayError(f"--check {folders}: {e}") from None


def checker_folders(folders: str) -> list[str]:
    """The folders of a ``--check`` value (comma-separated), refused when empty."""
    out = [f.strip() for f in folders.split(",") if f.strip()]
    if not out:
        raise MaskrayError(f"--check {folders!r}: names no checker folder")
    return out


def label_lut(mask_labels: dict[str, int], checker: Checker | CheckerPanel) -> torch.Tensor:
    """Mask label value -> checker label value, matched by name."""
    lut = torch.zeros(max(mask_labels.values()) + 1, dtype=torch.int64)
    for name, v in mask_labels.items():
        lut[v] = checker.labels.get(name, 0)
    return lut


def record_path(out: Path, out_id: str) -> Path:
    return out / RECORDS / f"{out_id}.json"


def given_up(out: Path, out_id: str) -> bool:
    """Whether a finished case was given up unwritten (its record says so)."""
    p = record_path(out, out_id)
    return p.is_file() and not read_json(p, what="check record").get("written", True)


Selection = Literal["first", "best"]  # --check-select: which passing attempt is written
SELECTIONS = get_args(Selection)


class CheckedBatches:
    """Draw the cases of ``todo`` in padded batches; with a checker, redraw failing cases with their next seed.

    ``draw(items)`` samples images for ``[(plan item, attempt)]``; ``write(plan item, image, label)`` writes one
    case. Without a checker every image is written as drawn. ``select`` says which passing attempt is written:
    ``first``, the first that passes; ``best``, of all ``tries`` attempts the passing one whose strongest spot
    outside the asked-for lesions is faintest (``false_score``; a case stops early at an attempt with none)."""

    def __init__(self, out: Path, checker: Checker | CheckerPanel | None, lut: torch.Tensor | None, tries: int,
                 keep_failed: bool, select: str = "first"):
        if tries < 1:
            raise MaskrayError("--check-tries must be at least 1")
        if select not in SELECTIONS:
            raise MaskrayError(f"--check-select {select!r}: must be one of {', '.join(SELECTIONS)}")
        self.out, self.checker, self.lut, self.tries = out, checker, lut, tries
        self.keep_failed, self.select = keep_failed, select

    def run(self, todo: list, batch_size: int, draw, write, bar) -> None:
        queue = [(item, 0) for item in todo]
        passing: dict[str, tuple] = {}  # out id -> (false score, attempt, image, label, record): best passing attempt
        failing: dict[str, tuple] = {}  # out id -> (failures, attempt, image, label, record): best failed attempt
        while queue:
            batch, queue = queue[:batch_size], queue[batch_size:]
            labs, imgs = draw(batch)
            if self.checker is None:
                for (item, _), img, lab in zip(batch, imgs, labs):
                    write(item, img, lab)
                bar.update(len(batch))
                continue
            records = self.checker.check(imgs, self.lut[torch.stack(labs)])
            for (item, attempt), img, lab, rec in zip(batch, imgs, labs, records):
                out_id = item[0]
                if rec["passed"]:
                    score = rec.get("false_score", 0.0)
                    if out_id not in passing or score < passing[out_id][0]:  # ties keep the earlier attempt
                        passing[out_id] = (score, attempt, img, lab, rec)
                elif out_id not in failing or len(rec["failures"]) < failing[out_id][0]:
                    failing[out_id] = (len(rec["failures"]), attempt, img, lab, rec)
                settled = out_id in passing and (self.select == "first" or passing[out_id][0] == 0.0)
                if not settled and attempt + 1 < self.tries:
                    queue.append((item, attempt + 1))
                    continue
                self._settle(item, attempt + 1, passing.pop(out_id, None), failing.pop(out_id, None), write)
                bar.update(1)

    def _settle(self, item, attempts: int, passed: tuple | None, failed: tuple | None, write) -> None:
        """Write a finished case's chosen attempt (the best passing one, else the best failed one when failures
        are kept) after its record."""
        _, attempt, img, lab, rec = passed or failed
        outcome = "given_up" if passed is None else "passed" if attempt == 0 else "resampled"
        written = passed is not None or self.keep_failed
        # the record goes first: a case whose image is missing is drawn again on --resume, to the same bytes
        atomic_write(record_path(self.out, item[0]),
                     json.dumps({**rec, "written_attempt": attempt, "attempts": attempts, "outcome": outcome,
                                 "written": written}))
        if written:
            write(item, img, lab)


def collect(out: Path, out_ids: list[str], checker_folders_text: str, rule: CheckRule, tries: int,
            select: str = "first") -> dict:
    """Every case's record (``out id -> record``) and the run's counts, written to ``OUT/check.json``."""
    records = {}
    for c in out_ids:
        p = record_path(out, c)
        if not p.is_file():
            raise MaskrayError(f"{out}: case {c} has no check record; run the same command again with --resume")
        records[c] = read_json(p, what="check record")
    outcomes = [r["outcome"] for r in records.values()]
    written = [r for r in records.values() if r["written"]]
    summary = {"cases": len(records), "passed_first_try": outcomes.count("passed"),
               "passed_after_resampling": outcomes.count("resampled"), "given_up": outcomes.count("given_up"),
               "written": len(written), "attempts": sum(r["attempts"] for r in records.values()),
               "max_attempts": tries, "select": select, "rule": rule.__dict__,
               "checker": [str(Path(f).resolve()) for f in checker_folders(checker_folders_text)],
               "written_images": summarize_checks(written),
               "note": "scores are the checkers' own; judge the set with a segmenter of another seed (evaluate)"}
    summary["rejected_share"] = summary["given_up"] / len(records) if records else 0.0
    atomic_write(out / "check.json", json.dumps(summary, indent=2))
    return {"records": records, "summary": summary}
