"""What the page can ask for, with the web left out: cases, edited masks, queued generations, their files."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from maskray.errors import MaskrayError
from maskray.measures.mask_check import Checker, CheckerPanel
from maskray.pipelines.checked import label_lut
from maskray.serve.downloads import FILES, OutputDataset, render_file
from maskray.serve.engine import DEFAULTS, SCHEDULER_NAMES, Engine, Request
from maskray.serve.jobs import Job, JobQueue
from maskray.serve.render import colour_mask, difference, png_bytes, to_uint8
from maskray.serve.workspace import Nodule, Workspace

MODES = ("new", "inpaint")
VIEWS = ("image", "real", "mask", "diff")


@dataclass(frozen=True)
class GenerateParams:
    """One request from the page. ``mode``: ``new`` (a whole image for the mask) or ``inpaint`` (only the
    changed region of the real image is generated; ``maskray generate --inpaint-from``)."""

    case_id: str
    nodules: tuple[Nodule, ...] = ()
    mode: str = "new"
    scheduler: str = DEFAULTS.scheduler
    steps: int = DEFAULTS.steps
    guidance_scale: float | None = None  # None: the model's default (Engine.default_guidance)
    seeds: tuple[int, ...] = (0,)


@dataclass
class Result:
    """Images float32 ``(N, H, W)`` in ``[0, 1]`` at the model's size, with the label map and real image they
    belong to (``real`` None for a mask-only case), and how they were made."""

    images: np.ndarray
    label: np.ndarray
    real: np.ndarray | None
    spacing: tuple[float, float]
    record: dict
    saved: dict[int, str] = field(default_factory=dict)

    def record_of(self, k: int) -> dict:
        """How image ``k`` was made: the shared record with its own seed and, with a checker, its check."""
        rec = {key: v for key, v in self.record.items() if key not in ("seeds", "checks")}
        check = self.check_of(k)
        return {**rec, "seed": self.record["seeds"][k], **({"check": check} if check is not None else {})}

    def check_of(self, k: int) -> dict | None:
        """Image ``k``'s check record (``passed``, ``failures``, Dice, found and false lesions), None unchecked."""
        return self.record["checks"][k] if "checks" in self.record else None


class Service:
    """The served data set and model, the generation queue and the optional output data set."""

    def __init__(self, workspace: Workspace, engine: Engine, output: OutputDataset | None = None,
                 max_waiting: int = 2, checker: Checker | CheckerPanel | None = None):
        self.workspace, self.engine, self.output, self.checker = workspace, engine, output, checker
        self.jobs = JobQueue(self._work, max_waiting=max_waiting)

    def info(self) -> dict:
        r, ws = self.workspace.rules, self.workspace
        return {"image_size": self.engine.image_size, "labels": ws.dataset.info.labels, "cases": len(ws.ids),
                "spacing_mm": list(ws.spacing), "schedulers": list(SCHEDULER_NAMES), "modes": list(MODES),
                "diameter_mm": {"min": r.diameter_min_mm, "max": r.diameter_max_mm, "default": r.diameter_median_mm},
                "border_margin_mm": r.border_margin_mm, "min_gap_mm": r.min_gap_mm, "can_save": self.output is not None,
                "check": None if self.checker is None else {"rule": dataclasses.asdict(self.checker.rule),
                                                            "checkers": len(self.checker.members)
                                                            if isinstance(self.checker, CheckerPanel) else 1},
                "model": self.engine.record, "downloads": list(FILES),
                "defaults": {"scheduler": DEFAULTS.scheduler, "steps": DEFAULTS.steps,
                             "guidance_scale": self.engine.default_guidance}}

    def case(self, case_id: str) -> dict:
        lab = self.workspace.label(case_id)
        return {"id": case_id, "height": int(lab.shape[0]), "width": int(lab.shape[1]),
                "has_image": self.workspace.has_image(case_id),
                "nodules": self.workspace.existing_nodules(case_id),
                "inpaint": self._inpaint_problem(case_id) is None}

    def case_png(self, case_id: str, what: str) -> bytes:
        """The case's radiograph (``image``) or its mask in colours (``mask``), at its stored size."""
        if what == "image":
            x = self.workspace.image01(case_id)
            if x is None:
                raise MaskrayError(f"case {case_id!r} has no image (mask-only data set)")
            return png_bytes(to_uint8(x))
        return self.mask_png(self.workspace.label(case_id))

    def mask_png(self, label: np.ndarray) -> bytes:
        ws = self.workspace
        return png_bytes(colour_mask(label, ws.dataset.info.labels, ws.nodule_value))

    def edited_mask(self, case_id: str, nodules: tuple[Nodule, ...]) -> bytes:
        label, _ = self.workspace.place(case_id, list(nodules))
        return self.mask_png(label)

    # ------------------------------------------------------------------------------ generation
    def submit(self, p: GenerateParams) -> Job:
        """Check everything that can be checked now (so the page hears at once), then queue."""
        self.workspace.place(p.case_id, list(p.nodules))
        self.engine.check_scheduler(p.scheduler)
        if p.mode not in MODES:
            raise MaskrayError(f"mode {p.mode!r} is not known (allowed: {', '.join(MODES)})")
        if p.mode == "inpaint" and (why := self._inpaint_problem(p.case_id)):
            raise MaskrayError(why)
        return self.jobs.submit(p)

    def _inpaint_problem(self, case_id: str) -> str | None:
        size, ws = self.engine.image_size, self.workspace
        if not ws.has_image(case_id):
            return f"case {case_id!r} has no real image to insert a nodule into"
        h, w = ws.label(case_id).shape
        if (h, w) != (size, size):
            return (f"the data set's images are {h} x {w} px but the model works at {size} px; inserting a "
                    f"nodule keeps the real pixels, so serve a data set at {size} px "
                    f"(maskray data import --image-size {size})")
        return None

    def _work(self, job: Job) -> Result:
        p: GenerateParams = job.params
        ws, size = self.workspace, self.engine.image_size
        label, records = ws.place(p.case_id, list(p.nodules))
        lab = ws.at_size(label, size)
        real = ws.image01(p.case_id, size)
        known = old = None
        if p.mode == "inpaint":
            known = torch.from_numpy(real * 2.0 - 1.0)[None]
            old = torch.from_numpy(ws.label(p.case_id))
        job.total = p.steps

        def progress(done: int, total: int) -> None:
            job.done, job.total = done, total

        guidance = p.guidance_scale if p.guidance_scale is not None else self.engine.default_guidance
        req = Request(lab, p.seeds, p.scheduler, p.steps, guidance, known, old)
        imgs = self.engine.generate(req, progress)
        record = {"mode": p.mode, "scheduler": p.scheduler, "steps": p.steps, "guidance_scale": guidance,
                  "seeds": list(p.seeds), "nodules": records, "model": self.engine.record}
        if self.checker is not None:  # each image against the mask it was drawn for (generate --check's record)
            lut = label_lut(ws.dataset.info.labels, self.checker)  # mask values -> the checker's, by name
            record["checks"] = self.checker.check(imgs, lut[lab].expand(len(imgs), -1, -1))
        return Result(((imgs[:, 0] + 1) / 2).clamp(0, 1).numpy(), lab.numpy(), real,
                      ws.spacing_at(size, label.shape[0]), record)

    def result(self, job_id: str, k: int) -> tuple[Job, Result]:
        job = self.jobs.get(job_id)
        if job.state != "done":
            raise MaskrayError(f"generation {job_id} is {job.state}; its images are not ready")
        res: Result = job.result
        if not 0 <= k < len(res.images):
            raise MaskrayError(f"generation {job_id} has images 0..{len(res.images) - 1}, not {k}")
        return job, res

    def view_png(self, job_id: str, k: int, what: str) -> bytes:
        """A picture for the page: the generated ``image``, the ``real`` one, the ``mask``, or ``diff``."""
        _, res = self.result(job_id, k)
        if what not in VIEWS:
            raise MaskrayError(f"unknown view {what!r} (allowed: {', '.join(VIEWS)})")
        if what == "mask":
            return self.mask_png(res.label)
        if what == "image":
            return png_bytes(to_uint8(res.images[k]))
        if res.real is None:
            raise MaskrayError("this case has no real image to compare with")
        return png_bytes(to_uint8(res.real) if what == "real" else difference(res.images[k], res.real))

    def download(self, job_id: str, k: int, name: str) -> tuple[bytes, str, str]:
        """``(bytes, media type, file name)``; the name is ``maskray-synthetic-JOB-K[-mask].EXT``."""
        job, res = self.result(job_id, k)
        stem = f"maskray-synthetic-{job.id}-{k}"
        data, media = render_file(name, res.images[k], res.label, res.spacing, res.record_of(k), stem)
        what, _, ext = name.partition(".")
        return data, media, f"{stem}{'-mask' if what == 'mask' else ''}.{ext}"

    def save(self, job_id: str, k: int) -> str:
        """Add image ``k`` of a generation and its label map to the output data set; returns the case id."""
        if self.output is None:
            raise MaskrayError("no output data set: start the page with --out DATASET to add pairs to one")
        job, res = self.result(job_id, k)
        if k in res.saved:
            return res.saved[k]
        check = res.check_of(k)
        if check is not None and not check["passed"]:
            raise MaskrayError(f"image {k} fails the check ({'; '.join(check['failures'])}): its pixels do not show "
                               "what its mask says; draw another seed")
        rec = {**res.record_of(k), "source_case": job.params.case_id, "checkpoint": str(Path(self.engine.run).resolve())}
        res.saved[k] = self.output.add(res.images[k], res.label, rec)
        return res.saved[k]

    def close(self) -> None:
        self.jobs.close()
