"""Stage-2 terms for following the mask where it says "no nodule": region weighting and mask consistency."""

import json

import pytest
import torch
from safetensors.torch import load_file

from maskray.data.dataset import Dataset
from maskray.diffusion.objective import DiffusionConfig, diffusion_loss, make_train_scheduler
from maskray.errors import MaskrayError
from maskray.measures.mask_check import Checker
from maskray.measures.segmenter import Segmenter, SegmenterConfig
from maskray.training.checker import load_pairs
from maskray.training.mask_terms import MaskTerms, MaskTermsConfig, lesion_region
from maskray.training.trainer import TrainConfig, train

LABELS = {"lung": 1, "nodule": 2}


def test_lesion_region_known_answer():
    lab = torch.zeros(1, 8, 8, dtype=torch.int64)
    lab[0, 2, 2] = 2
    r = lesion_region(lab, 2, ring=1, factor=1)[0, 0]
    assert r.sum() == 9 and r[1:4, 1:4].eq(1).all()
    r2 = lesion_region(lab, 2, ring=1, factor=2)[0, 0]  # cells (0..1, 0..1) touch the 3x3 block at rows/cols 1..3
    assert r2.shape == (4, 4) and r2[:2, :2].eq(1).all() and r2.sum() == 4


class _Tiny(torch.nn.Module):
    """A model whose output depends on one parameter, so a term's gradient reaches it or not."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(0.3))

    def forward(self, noisy, t):
        return self.a * noisy


def _inputs():
    x0 = torch.rand(4, 1, 32, 32) * 2 - 1
    lab = torch.zeros(4, 32, 32, dtype=torch.int64)
    lab[:, 4:28, 4:14] = 1
    lab[:2, 10:14, 6:10] = 2
    mask = torch.stack([(lab == v).float() for v in (1, 2)], 1)
    return x0, lab, mask


def test_region_weight_counts_lesions_more_and_nothing_without_them():
    sched, dcfg = make_train_scheduler(DiffusionConfig()), DiffusionConfig()
    x0, lab, mask = _inputs()
    model = _Tiny()
    plain = diffusion_loss(model, x0, sched, dcfg, torch.Generator().manual_seed(0))
    terms = MaskTerms(MaskTermsConfig(region_weight=3.0, region_ring=1), LABELS, None, 1, dcfg.prediction_type)
    weighted = terms.loss(model, x0, mask, lab, sched, dcfg, torch.Generator().manual_seed(0))
    assert weighted > plain
    no_lesion = lab.masked_fill(lab == 2, 1)
    same = terms.loss(model, x0, mask, no_lesion, sched, dcfg, torch.Generator().manual_seed(0))
    assert torch.equal(same, plain)


def _checker(toy, tmp_path):
    ds = Dataset(toy)
    xs, ys = load_pairs(ds, ds.case_ids(), 32)
    seg = Segmenter.train(xs, ys, [0, 1, 2], SegmenterConfig(features=(4, 4, 8, 8, 8, 4), steps=5, batch_size=4,
                                                             bf16=False, channels_last=False))
    Checker(seg, {"background": 0, **LABELS}, 32).save(tmp_path / "ck")
    return tmp_path / "ck"


def test_consistency_reaches_the_model_and_skips_dropped_masks(toy_dataset, tmp_path):
    sched, dcfg = make_train_scheduler(DiffusionConfig()), DiffusionConfig()
    x0, lab, mask = _inputs()
    terms = MaskTerms(MaskTermsConfig(consistency_weight=1.0, consistency_max_t=1000,
                                      consistency_checker=str(_checker(toy_dataset, tmp_path))), LABELS, None, 1,
                      dcfg.prediction_type)
    model = _Tiny()
    plain = diffusion_loss(model, x0, sched, dcfg, torch.Generator().manual_seed(0))
    loss = terms.loss(model, x0, mask, lab, sched, dcfg, torch.Generator().manual_seed(0))
    assert "consistency" in terms.last and loss > plain
    (loss - plain).backward()  # the consistency term alone
    assert model.a.grad is not None and model.a.grad.abs() > 0
    assert not any(p.requires_grad for p in terms.checker.net.parameters())
    dropped = terms.loss(model, x0, torch.zeros_like(mask), lab, sched, dcfg, torch.Generator().manual_seed(0))
    assert torch.equal(dropped.detach(), plain.detach()) and "consistency" not in terms.last


TINY = dict(image_size=32, batch_size=4, block_out_channels=(8, 16), norm_num_groups=4, validation_cases=2,
            validation_sampler_steps=2, precision="no", checkpoint_every=100)


def test_stage_two_trains_with_both_terms_and_records_them(toy_dataset, tmp_path):
    ck = _checker(toy_dataset, tmp_path)
    base = tmp_path / "base"
    train(TrainConfig(data=str(toy_dataset), out=str(base), steps=2, **TINY), "base", progress=False)
    runs = {}
    for name, kw in {"plain": {}, "terms": dict(region_weight=2.0, consistency_weight=1.0, consistency_max_t=1000,
                                                 consistency_checker=str(ck))}.items():
        runs[name] = tmp_path / name
        train(TrainConfig(data=str(toy_dataset), out=str(runs[name]), steps=3, base=str(base), **TINY, **kw),
              "controlnet", progress=False)
    card = json.loads((runs["terms"] / "model" / "maskray.json").read_text())
    assert card["training"]["region_weight"] == 2.0 and card["training"]["consistency_weight"] == 1.0
    assert "consistency_checker" not in card["training"]  # a path: run.json has it, the card does not
    a = load_file(str(next((runs["plain"] / "model").rglob("controlnet/*.safetensors"))))
    b = load_file(str(next((runs["terms"] / "model").rglob("controlnet/*.safetensors"))))
    assert any(not torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(MaskrayError, match="consistency-checker"):
        train(TrainConfig(data=str(toy_dataset), out=str(tmp_path / "bad"), steps=1, base=str(base),
                          consistency_weight=1.0, **TINY), "controlnet", progress=False)
    with pytest.raises(MaskrayError, match="stage-2"):
        train(TrainConfig(data=str(toy_dataset), out=str(tmp_path / "bad2"), steps=1, region_weight=1.0, **TINY),
              "base", progress=False)
