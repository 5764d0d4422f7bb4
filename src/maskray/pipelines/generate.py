"""``maskray generate``: images for label maps, written as a new dataset in the native layout.

Streams batches to disk (memory does not grow with the number of cases), one seed per case and sample
(derived from the run seed and the case id, so re-running one case reproduces it), every file written under a
temporary name and renamed, and ``--resume`` continues an interrupted run without duplicates or gaps.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from tqdm import tqdm

from maskray.config import (Precision, fused_kernels_option, option, overwrite_option, precision_option,
                            resume_option)
from maskray.data.dataset import Dataset, image_path, label_path
from maskray.data.io import read_label_file, write_image_file, write_label_file
from maskray.data.schema import DatasetInfo, write_dataset_info
from maskray.files import prepare_output_dir
from maskray.data.resize import resize_label
from maskray.data.schema import read_manifest
from maskray.diffusion.card import ModelCard
from maskray.diffusion.model import DEFAULT_SAMPLER, MaskModel
from maskray.diffusion.sampling import SCHEDULERS
from maskray.diffusion.store import model_folder
from maskray import distributed
from maskray.distributed import on_main, resolve_precision
from maskray.errors import MaskrayError
from maskray.files import atomic_write, read_json
from maskray.pipelines.checked import CheckedBatches, Selection, collect, given_up, label_lut, open_checker
from maskray.pipelines.generation_conditions import GenerationConditions
from maskray.pipelines.sharding import Shard
from maskray.provenance import to_jsonable, write_run_info

SYNTHETIC_TEXT = {"Comment": "maskray synthetic image (not a real patient)", "Software": "maskray"}


@dataclass(frozen=True)
class GenerateConfig:
    model: str = option("", help="stage-2 run folder, its model/ folder, or one of its checkpoints/step-N")
    masks: str = option("", help="dataset whose label maps are the conditions (native layout)")
    out: str = option("", help="output dataset folder")
    split: str | None = option(None, help="use only this split of --masks (train/val/test)")
    cases: tuple[str, ...] = option((), help="only these case ids (comma list)")
    samples_per_mask: int = option(1, help="images per label map")
    scheduler: str | None = option(None, help=f"sampler: {', '.join(SCHEDULERS)} (default: the one the model card "
                                              f"names, e.g. a distilled model's; else {DEFAULT_SAMPLER[0]})")
    steps: int | None = option(None, help=f"sampler steps (default: the model card's; else {DEFAULT_SAMPLER[1]})")
    guidance_scale: str | None = option(None, help="classifier-free guidance on the conditions (1 = off): a number "
                                                "for all at once, or per condition, e.g. mask=2,edges=1 (default: the "
                                                "model card's, 1.5 for a latent mask model; else 1)")
    conditioning_scale: str = option("1", help="ControlNet residual scale: a number, or per condition, e.g. "
                                           "mask=1,edges=0.5 (0 leaves a condition out)")
    edges_from: str | None = option(None, help="real dataset whose images' edge maps condition each case (a model "
                                               "trained with --conditions mask,edges); default for --masks")
    attributes: str | None = option(None, help="patient attributes to ask for, e.g. sex=F,age=60-70")
    attribute_guidance: float = option(1.0, help="classifier-free guidance on --attributes (1 = off)")
    lesion_guidance: float = option(0.0, help="negative guidance on nodules where the mask holds none: away from the "
                                    "mask with its lung fields relabelled as nodule (0 = off; one more network "
                                    "pass per step; docs/nodules.md)")
    batch_size: int = option(16, help="images per batch (every batch is padded to this size, so a case's pixels "
                                      "do not depend on which cases share its batch)")
    seed: int = option(0, help="run seed; each case's seed derives from it and the case id")
    precision: Precision = precision_option()
    channels_last: bool = option(True, help="NHWC memory format (1.3x faster sampling in bf16 on this CPU, "
                                            "benchmarks/bench_speed.py)")
    fused_kernels: bool = fused_kernels_option("1.1-1.2x faster sampling, benchmarks/bench_kernels.py")
    bit_depth: int = option(8, help="PNG bit depth (8 or 16)")
    inpaint_from: str | None = option(None, help="real dataset: regenerate only the changed region of its images")
    inpaint_margin: int = option(4, help="pixels the changed region is dilated by (region-preserving mode)")
    prompt: str | None = option(None, help="Stable Diffusion models: the prompt (default: the one it was trained "
                                "with)")
    pretrained: str | None = option(None, help="Stable Diffusion models: the folder of its base (default: the one "
                                    "named in MODEL/pretrained.json; its parts must match the model card's hashes)")
    check: str | None = option(None, help="checker folder (maskray train checker), or several separated by commas "
                                          "(an image must pass each): score every image against its mask and "
                                          "redraw failing ones with the case's next seed")
    check_tries: int = option(4, help="--check: attempts per case before it is given up")
    check_select: Selection = option(
        "first", help="--check: which passing attempt is written: first, or best (all attempts drawn; the one whose "
                      "strongest spot outside the asked-for lesions is faintest)")
    check_min_dice: float | None = option(None, help="--check: least Dice of every label but the lesion (default: "
                                                     "the checker's)")
    check_operating_point: float | None = option(None, help="--check: lesion probability at which a candidate "
                                                            "counts (default: the checker's)")
    check_false_operating_point: float | None = option(None, help="--check: lesion probability from which a spot "
                                                                  "outside every asked-for lesion fails the image "
                                                                  "(default: the checker's, else the operating point)")
    check_keep_failed: bool = option(False, help="--check: write a given-up case's best attempt (flagged in the "
                                                 "manifest) instead of leaving it out")
    resume: bool = resume_option()
    overwrite: bool = overwrite_option()


def case_seed(seed: int, case_id: str, sample_index: int, attempt: int = 0) -> int:
    """A 63-bit seed that depends only on the run seed, the case id, the sample index and the attempt (``--check``
    redraws; attempt 0 is the seed of an unchecked run)."""
    key = f"{seed}:{case_id}:{sample_index}" + (f":try{attempt}" if attempt else "")
    h = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


def _plan(cfg: GenerateConfig, masks: Dataset) -> list[tuple[str, str, int]]:
    ids = masks.case_ids(cfg.split, labelled=True) if cfg.split else masks.case_ids(labelled=True)
    if cfg.cases:
        missing = [c for c in cfg.cases if c not in masks.cases]
        if missing:
            raise MaskrayError(f"{masks.root}: no such cases {missing[:5]}")
        ids = [c for c in ids if c in set(cfg.cases)]
    if not ids:
        raise MaskrayError(f"{masks.root}: no label maps to generate for")
    k = cfg.samples_per_mask
    return [(cid if k == 1 else f"{cid}_s{s}", cid, s) for cid in ids for s in range(k)]


def condition_mapping(card: ModelCard, masks: Dataset, run: str) -> list[int | None]:
    """For each model condition channel, the value of that label in the masks' dataset (None if absent)."""
    if "mask" not in card.condition_names:  # an edges-only model: the label maps are only carried to the output
        return list(masks.info.foreground.values())
    model_labels = card.labels
    unknown = [n for n in masks.info.foreground if n not in model_labels]
    if unknown:
        raise MaskrayError(f"{masks.root}/dataset.json: labels {unknown} were not in the training data of {run} "
                           f"(model labels: {list(model_labels)})")
    return [masks.info.labels.get(name) for name in model_labels]


def edit_region(new: np.ndarray, old: np.ndarray, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """``(keep, blend)`` float ``(H, W)``: keep = 1 outside the dilated changed region; blend ramps from 0
    at the region's edge to 1 inside it over ``margin`` pixels, and is exactly 0 outside."""
    changed = new != old
    region = ndimage.binary_dilation(changed, iterations=max(margin, 1)) if changed.any() else changed
    keep = (~region).astype(np.float32)
    depth = ndimage.distance_transform_edt(region)
    blend = np.clip(depth / max(margin, 1), 0, 1).astype(np.float32)
    return keep, blend


# settings that change no pixel: everything else must match for --resume to continue a run
_NOT_PIXELS = ("resume", "overwrite", "out", "pretrained")  # a moved SD folder is checked by its hashes


def _check_config(cfg: GenerateConfig) -> None:
    for name in ("model", "masks", "out"):
        if not getattr(cfg, name):
            raise MaskrayError(f"--{name} is required")
    if cfg.samples_per_mask < 1 or cfg.batch_size < 1 or (cfg.steps is not None and cfg.steps < 1):
        raise MaskrayError("--samples-per-mask, --batch-size and --steps must be at least 1")
    if cfg.bit_depth not in (8, 16):
        raise MaskrayError(f"--bit-depth {cfg.bit_depth}: allowed 8 or 16")


def _open_out(cfg: GenerateConfig) -> Path:
    """The output folder: a fresh one, or on ``--resume`` one made with the same pixel-changing settings."""
    out = Path(cfg.out)
    prev = out / "generate_config.json"
    if cfg.resume and prev.is_file():
        old = read_json(prev, what="generate config")
        mine = to_jsonable(cfg)
        # a setting newer than the old run's record counts as its default (it did not exist, so it was off)
        defaults = to_jsonable({f.name: f.default for f in dataclasses.fields(cfg)})
        diff = [k for k in mine if k not in _NOT_PIXELS and old.get(k, defaults[k]) != mine[k]]
        if diff:
            raise MaskrayError(f"{out}: was made with other settings ({', '.join(diff)}); cannot resume")
    elif not (cfg.resume and out.is_dir()):
        prepare_output_dir(out, overwrite=cfg.overwrite, hint="--resume (continue) or --overwrite (replace)")
    atomic_write(out / "generate_config.json", json.dumps(to_jsonable(cfg), indent=2))
    return out


def generate(cfg: GenerateConfig, progress: bool = True) -> Path:
    if not cfg.masks and cfg.edges_from:  # structure-preserving variation of real images: their own masks
        cfg = dataclasses.replace(cfg, masks=cfg.edges_from)
    _check_config(cfg)
    model = MaskModel.load(cfg.model, need_controlnet=True, prompt=cfg.prompt, pretrained=cfg.pretrained)
    card = model.card
    settings = model.sampler_settings(cfg.scheduler, cfg.steps, cfg.guidance_scale, cfg.conditioning_scale,
                                      cfg.attribute_guidance, cfg.lesion_guidance,
                                      attributes_given=bool((cfg.attributes or "").strip()),
                                      edges_given=cfg.edges_from is not None)
    cfg = dataclasses.replace(cfg, scheduler=settings.scheduler, steps=settings.steps,
                              guidance_scale=settings.guidance_text,
                              precision=resolve_precision(cfg.precision, distributed.device()))  # recorded resolved
    masks = Dataset(cfg.masks)
    job = _Job(cfg, card, masks, condition_mapping(card, masks, cfg.model),
               Dataset(cfg.inpaint_from) if cfg.inpaint_from else None)
    checker = (open_checker(cfg.check, cfg.check_min_dice, cfg.check_operating_point, card.image_size,
                            masks.info.labels, cfg.check_false_operating_point) if cfg.check else None)
    shard = Shard.current()  # one process, or this process's share under accelerate launch
    on_main(lambda: _open_out(cfg))
    out = Path(cfg.out)
    todo = [p for p in shard.take(job.plan)
            if not (image_path(out, p[0]).is_file() and label_path(out, p[0]).is_file()) and not given_up(out, p[0])]
    device = distributed.device()
    kernels = model.prepare(device, cfg.precision, cfg.channels_last, cfg.fused_kernels)
    mine = len(shard.take(job.plan))
    bar = tqdm(total=mine, initial=mine - len(todo), desc="generate", unit="img",
               disable=not progress or not shard.is_main, dynamic_ncols=True)

    def draw_batch(batch):
        labs, kw = job.inputs([item for item, _ in batch], [attempt for _, attempt in batch])
        gens = kw.pop("gens")
        return labs, model.sample(gens, settings=settings, precision=cfg.precision, device=device,
                                  channels_last=cfg.channels_last, **kw)[:len(labs)]  # the padding is dropped

    def write(item, img, lab):  # label first: a case counts as done only once its image (written last) exists
        write_label_file(label_path(out, item[0]), lab.numpy())
        write_image_file(image_path(out, item[0]), (img[0].numpy() + 1) / 2, cfg.bit_depth, text=SYNTHETIC_TEXT)

    lut = label_lut(masks.info.labels, checker) if checker else None
    CheckedBatches(out, checker, lut, cfg.check_tries, cfg.check_keep_failed, cfg.check_select).run(
        todo, cfg.batch_size, draw_batch, write, bar)
    bar.close()
    if checker:  # every process's given-up cases are recorded before the main process lists what was written
        distributed.barrier()
    kept = [p[0] for p in job.plan if not (checker and given_up(out, p[0]))]
    if shard.finish(out, kept):
        check = collect(out, [p[0] for p in job.plan], cfg.check, checker.rule, cfg.check_tries,
                        cfg.check_select) if checker else None
        if check and not kept:
            raise MaskrayError(f"{out}: no image passed the check ({len(job.plan)} cases given up after "
                               f"{cfg.check_tries} tries each; {out / 'check.json'} has the counts)")
        job.write_records(out, kernels, check)
        if check and progress:
            c = check["summary"]
            print(f"check: {c['passed_first_try']} passed at once, {c['passed_after_resampling']} after resampling, "
                  f"{c['given_up']} given up ({'written, flagged' if cfg.check_keep_failed else 'not written'}) "
                  f"of {c['cases']}; {c['attempts']} images drawn")
    return out


class _Job:
    """One generate run's plan and the inputs of each batch (padded to the batch size)."""

    def __init__(self, cfg: GenerateConfig, card: ModelCard, masks: Dataset, mapping: list[int | None],
                 real: Dataset | None):
        self.cfg, self.card, self.masks, self.mapping, self.real = cfg, card, masks, mapping, real
        self.size = card.image_size
        self.plan = _plan(cfg, masks)
        self.origin = _mask_origins(masks)
        self.conds = GenerationConditions(card, mapping, Dataset(cfg.edges_from) if cfg.edges_from else None,
                                          cfg.attributes, self.origin)

    def inputs(self, chunk: list[tuple[str, str, int]], attempts: list[int] | None = None
               ) -> tuple[list[torch.Tensor], dict]:
        """Label maps of ``chunk`` and the sampler's keyword inputs, padded to ``batch_size`` with copies of
        the last case (their outputs are dropped): every batch then has one shape, and with it the arithmetic
        that reduced-precision kernels choose, so a case's pixels do not depend on its batch."""
        labs, gens, knowns, keeps, blends = [], [], [], [], []
        for (out_id, src_id, k), attempt in zip(chunk, attempts or [0] * len(chunk)):
            lab = resize_label(_read_mask(self.masks, src_id, self.mapping)[None], self.size)[0]
            labs.append(lab)
            gens.append(torch.Generator().manual_seed(case_seed(self.cfg.seed, src_id, k, attempt)))
            if self.real is not None:
                x, keep, blend = _inpaint_inputs(self.real, self.masks, self.origin.get(src_id, src_id), src_id,
                                                 lab, self.size, self.cfg.inpaint_margin)
                knowns.append(x), keeps.append(keep), blends.append(blend)
        pad = self.cfg.batch_size - len(chunk)
        padded = labs + [labs[-1]] * pad
        gens += [torch.Generator().manual_seed(0) for _ in range(pad)]
        sources = [src for _, src, _ in chunk]
        kw = {"gens": gens, "cond": self.conds.build(torch.stack(padded), sources + [sources[-1]] * pad)}
        if self.real is not None:
            kw.update(known=torch.stack(knowns + [knowns[-1]] * pad),
                      keep=torch.stack(keeps + [keeps[-1]] * pad)[:, None],
                      blend=torch.stack(blends + [blends[-1]] * pad)[:, None])
        return labs, kw

    def write_records(self, out: Path, kernels: dict, check: dict | None = None) -> None:
        """manifest.json, dataset.json and run.json (``kernels``: which ran, from :meth:`MaskModel.prepare`;
        ``check``: :func:`maskray.pipelines.checked.collect`'s records): written last, once every case exists."""
        cfg, card = self.cfg, self.card
        folder = str(model_folder(cfg.model).resolve())
        mode = "region-preserving" if self.real is not None else "full"
        recs = check["records"] if check else {}
        plan = [p for p in self.plan if recs.get(p[0], {}).get("written", True)]
        manifest = {"cases": {out_id: {"source_case": self.origin.get(src, src), "mask_case": src, "sample": k,
                                       "seed": case_seed(cfg.seed, src, k, recs.get(out_id, {}).get("written_attempt", 0)),
                                       "checkpoint": folder, "mode": mode, **self.conds.record(src),
                                       **({"check": recs[out_id]} if out_id in recs else {})}
                              for out_id, src, k in plan}}
        atomic_write(out / "manifest.json", json.dumps(manifest, indent=2))
        info = DatasetInfo(labels=dict(self.masks.info.labels), spacing=_scaled_spacing(self.masks, self.size),
                           extra={"synthetic": True, "maskray": {"unet_sha256": card.unet_sha256,
                                                                 "controlnet_sha256": card.controlnet_sha256,
                                                                 "step": card.step, **_prompt_record(cfg, card)}})
        write_dataset_info(out, info, len(plan))
        write_run_info(out, "generate", cfg, seed=cfg.seed, checkpoint=folder,
                       extra={"model_card": to_jsonable(card), "kernels": kernels,
                              **({"check": check["summary"]} if check else {})})


def _prompt_record(cfg: GenerateConfig, card: ModelCard) -> dict:
    """The prompt a Stable Diffusion model's images were made with (nothing for maskray's own models)."""
    if card.pretrained is None:
        return {}
    return {"prompt": card.pretrained["prompt"] if cfg.prompt is None else cfg.prompt}


def _mask_origins(masks: Dataset) -> dict[str, str]:
    """Mask case -> the real case it was made from, when the masks come from ``maskray masks``."""
    path = masks.root / "masks.json"
    if not path.is_file():
        return {}
    cases = read_manifest(path)["cases"]  # a corrupt masks.json is a one-line error, not a traceback
    return {cid: e["source_case"] for cid, e in cases.items() if "source_case" in e}


def _scaled_spacing(ds: Dataset, size: int):
    """The masks' ``(sy, sx)`` spacing after their ``(H, W)`` label maps are resized to ``size x size``: each
    axis scaled by its own ratio (a non-square mask is stretched, not only shrunk)."""
    if ds.info.spacing is None:
        return None
    first = next(iter(ds.cases.values()))
    hw = read_label_file(first.label_path).shape[-2:] if first.label_path else (size, size)
    return tuple(s * n / size for s, n in zip(ds.info.spacing, hw))


def _read_mask(masks: Dataset, case_id: str, mapping: list[int | None]) -> torch.Tensor:
    path = masks.cases[case_id].label_path
    lab = masks.label(case_id)
    allowed = {0} | {v for v in mapping if v is not None}
    extra = sorted(set(torch.unique(lab).tolist()) - allowed)
    if extra:
        names = {v: n for n, v in masks.info.labels.items()}
        raise MaskrayError(f"{path}: holds labels {[names.get(v, v) for v in extra]} that the model was not "
                           f"trained on")
    return lab


def _inpaint_inputs(real: Dataset, masks: Dataset, source: str, case_id: str, lab: torch.Tensor, size: int,
                    margin: int):
    if source not in real.cases:
        raise MaskrayError(f"{real.root}: has no case '{source}' to regenerate a region of (mask case {case_id})")
    x = real.image(source)
    if x.shape[-1] != size or x.shape[-2] != size:
        raise MaskrayError(f"{real.cases[source].image_path}: is {tuple(x.shape[-2:])} px but the model works at "
                           f"{size} px; region-preserving mode keeps pixels as they are, so resize the dataset "
                           f"first (maskray data import --image-size {size})")
    old = real.label(source)
    # compare by label name: the edited masks may number labels differently from the real dataset
    translated = torch.zeros_like(old)
    for name, value in real.info.labels.items():
        if name in masks.info.labels:
            translated[old == value] = masks.info.labels[name]
    keep, blend = edit_region(lab.numpy(), translated.numpy(), margin)
    return x, torch.from_numpy(keep), torch.from_numpy(blend)
