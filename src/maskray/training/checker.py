"""``maskray train checker``: the segmenter that ``generate --check`` scores every generated image with.

It trains :class:`maskray.measures.segmenter.Segmenter` on the real training split (the pairs the diffusion
model learnt from), then applies the check to the real held-out split and writes what real images score as
``report.json``: that is the ceiling of the check's pass rate, so a rule that fails many real images is too
strict for the data (loosen ``--min-dice`` or ``--operating-point``). The folder appears complete or not at all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from maskray.config import option, option_like, overwrite_option, threads_option
from maskray.data.dataset import Dataset
from maskray.data.resize import resize_image, resize_label
from maskray.errors import MaskrayError
from maskray.files import atomic_write, staged_output
from maskray.measures.mask_check import Checker, CheckRule, summarize_checks
from maskray.measures.segmenter import Network, Segmenter, SegmenterConfig, torch_threads
from maskray.provenance import to_jsonable, write_run_info


@dataclass(frozen=True)
class CheckerConfig:
    data: str = option("", help="real dataset in the native layout (its train split trains the checker)")
    out: str = option("", help="checker folder to write")
    image_size: int = option(256, help="working resolution (the generated images' size; multiple of 16)")
    steps: int = option(600, help="segmenter training steps")
    batch_size: int = option_like(SegmenterConfig, "batch_size")
    seed: int = option_like(SegmenterConfig, "seed")
    network: Network = option_like(SegmenterConfig, "network")
    flip: bool = option(True, help="random left-right flips while training")
    eval_split: str = option("val", help="held-out split scored in report.json (falls back to test)")
    min_dice: float = option(0.8, help="the check: least Dice of every label but the lesion")
    operating_point: float = option(0.5, help="the check: lesion probability at which a candidate counts")
    lesion_label: str = option("nodule", help="label name checked as lesions (found, and none where the mask has none)")
    threads: int = threads_option()
    overwrite: bool = overwrite_option()


def load_pairs(ds: Dataset, ids: list[str], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 images ``(N, 1, size, size)`` in ``[-1, 1]`` and int64 label maps ``(N, size, size)``."""
    xs = torch.cat([resize_image(ds.image(c).unsqueeze(0), (size, size)) for c in ids])
    ys = torch.cat([resize_label(ds.label(c).unsqueeze(0), (size, size)) for c in ids])
    return xs, ys


def train_checker(cfg: CheckerConfig, progress: bool = True) -> Path:
    if not cfg.data or not cfg.out:
        raise MaskrayError("--data and --out are required")
    if cfg.image_size % 16 or cfg.image_size < 16:
        raise MaskrayError(f"--image-size {cfg.image_size}: must be a multiple of 16")
    ds = Dataset(cfg.data)
    if not ds.has_labels:
        raise MaskrayError(f"{cfg.data}: has no label maps to train a checker on")
    train_ids = ds.case_ids("train", labelled=True)
    held = ds.case_ids(cfg.eval_split, labelled=True) or ds.case_ids("test", labelled=True)
    if len(train_ids) < 2:
        raise MaskrayError(f"{cfg.data}: the train split needs at least 2 labelled cases")
    rule = CheckRule(min_dice=cfg.min_dice, operating_point=cfg.operating_point, lesion=cfg.lesion_label)
    seg_cfg = SegmenterConfig(steps=cfg.steps, batch_size=cfg.batch_size, seed=cfg.seed, flip=cfg.flip,
                              network=cfg.network)
    with staged_output(cfg.out, overwrite=cfg.overwrite) as out, torch_threads(cfg.threads):
        xtr, ytr = load_pairs(ds, train_ids, cfg.image_size)
        values = sorted(ds.labels.values())
        seg = Segmenter.train(xtr, ytr, values, seg_cfg, desc="checker")
        checker = Checker(seg, dict(ds.labels), cfg.image_size, rule)
        checker.save(out, provenance={"cases": len(train_ids), "split": "train"})
        report = {"note": "the check applied to real held-out images: the ceiling of generate --check's pass rate"}
        if held:
            xh, yh = load_pairs(ds, held, cfg.image_size)
            records = checker.check(xh, yh)
            report.update(split=cfg.eval_split if ds.case_ids(cfg.eval_split, labelled=True) else "test",
                          **summarize_checks(records))
        atomic_write(out / "report.json", json.dumps(to_jsonable(report), indent=2))
        write_run_info(out, "train checker", cfg, seed=cfg.seed,
                       extra={"final_loss": seg.losses[-1] if seg.losses else None})
    if progress and held:
        print(f"checker: {report['passed']} of {report['images']} real held-out images pass the check")
    return Path(cfg.out)
