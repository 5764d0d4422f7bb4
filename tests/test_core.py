"""Core path: networks, objective, training (both stages, resume), sampling and generate."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from maskray.cli import main
from maskray.data.dataset import Dataset
from maskray.diffusion.store import load_model
from maskray.diffusion.networks import ControlledUNet, UNetConfig, build_controlnet, build_unet
from maskray.pipelines.generate import GenerateConfig, case_seed, generate
from maskray.diffusion.sampling import SCHEDULERS, make_scheduler, sample
from maskray.diffusion.objective import DiffusionConfig, make_train_scheduler
from maskray.training.trainer import TrainConfig, train

TINY = dict(image_size=32, batch_size=4, block_out_channels=(8, 16), norm_num_groups=4, validation_cases=2,
            validation_sampler_steps=2, precision="no", checkpoint_every=3)


def tiny_unet():
    torch.manual_seed(0)
    return build_unet(UNetConfig(block_out_channels=(8, 16), norm_num_groups=4), 32)


def test_fresh_controlnet_reproduces_base_exactly():
    unet = tiny_unet()
    cn = build_controlnet(unet, conditioning_channels=3)
    x, t = torch.randn(2, 1, 32, 32), torch.tensor([10, 700])
    cond = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        base = ControlledUNet(unet)(x, t)
        both = ControlledUNet(unet, cn)(x, t, cond)
    assert torch.equal(base, both)
    # and the ControlNet is not inert: once its zero convolutions move, the output changes
    with torch.no_grad():
        for conv in cn.controlnet_down_blocks:
            conv.weight.fill_(0.01)
        moved = ControlledUNet(unet, cn)(x, t, cond)
    assert not torch.allclose(base, moved)


def test_image_size_the_network_cannot_take():
    from maskray.errors import MaskrayError

    with pytest.raises(MaskrayError, match="not divisible"):
        build_unet(UNetConfig(block_out_channels=(8, 16, 32), norm_num_groups=4), 30)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_scheduler_runs_one_loop(name):
    unet = tiny_unet()
    sched = make_scheduler(name, dict(make_train_scheduler(DiffusionConfig()).config))
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    out = sample(ControlledUNet(unet).eval(), sched, (2, 1, 32, 32), gens, num_steps=3, precision="no")
    assert out.shape == (2, 1, 32, 32) and torch.isfinite(out).all() and out.abs().max() <= 1


def test_one_sample_depends_only_on_its_seed():
    model = ControlledUNet(tiny_unet()).eval()
    sched = make_scheduler("ddpm", dict(make_train_scheduler(DiffusionConfig()).config))
    a = sample(model, sched, (2, 1, 32, 32), [torch.Generator().manual_seed(s) for s in (5, 6)], num_steps=3,
               precision="no")
    b = sample(model, sched, (1, 1, 32, 32), [torch.Generator().manual_seed(6)], num_steps=3, precision="no")
    assert torch.allclose(a[1], b[0], atol=1e-5)


def _cfg(data, out, **kw):
    return TrainConfig(data=str(data), out=str(out), **{**TINY, **kw})


def test_interrupted_then_resumed_equals_uninterrupted(toy_dataset, tmp_path):
    train(_cfg(toy_dataset, tmp_path / "full", steps=6), "base", progress=False)
    train(_cfg(toy_dataset, tmp_path / "split", steps=6, stop_after=3), "base", progress=False)
    assert not (tmp_path / "split" / "model").exists()  # stopped early: no final model yet
    train(_cfg(toy_dataset, tmp_path / "split", steps=6, resume=True), "base", progress=False)
    a, _ = load_model(tmp_path / "full")
    b, _ = load_model(tmp_path / "split")
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), n
    log = (tmp_path / "split" / "log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in log[1:]] == [str(i) for i in range(1, 7)]


def test_two_stages_generate_and_reproduce(toy_dataset, tmp_path):
    base, cn = tmp_path / "base", tmp_path / "cn"
    train(_cfg(toy_dataset, base, steps=4), "base", progress=False)
    train(_cfg(toy_dataset, cn, steps=4, base=str(base)), "controlnet", progress=False)
    meta = json.loads((cn / "model" / "maskray.json").read_text())
    assert meta["labels"] == {"lung": 1, "nodule": 2} and meta["stage"] == "controlnet"
    assert (cn / "validation" / "strip.png").is_file() and (cn / "run.json").is_file()
    # the frozen base is untouched by stage 2
    a, _ = load_model(base)
    b, _ = load_model(cn)
    assert all(torch.equal(p, q) for p, q in zip(a.unet.state_dict().values(), b.unet.state_dict().values()))

    gcfg = GenerateConfig(model=str(cn), masks=str(toy_dataset), out=str(tmp_path / "gen"), steps=3,
                          samples_per_mask=2, batch_size=5, precision="no")
    generate(gcfg, progress=False)
    syn = Dataset(tmp_path / "gen")
    assert len(syn) == 12 and syn.info.extra["synthetic"] is True
    manifest = json.loads((tmp_path / "gen" / "manifest.json").read_text())["cases"]
    assert manifest["case003_s1"]["source_case"] == "case003"
    assert manifest["case003_s1"]["seed"] == case_seed(0, "case003", 1)
    assert torch.equal(syn.label("case003_s1"), Dataset(toy_dataset).label("case003"))
    assert "synthetic" in Image.open(syn.cases["case003_s1"].image_path).text["Comment"]
    # one case alone, in another batch, reproduces the same pixels
    one = GenerateConfig(**{**gcfg.__dict__, "out": str(tmp_path / "one"), "cases": ("case003",), "batch_size": 1})
    generate(one, progress=False)
    p = np.asarray(Image.open(tmp_path / "gen/imagesTr/case003_s1_0000.png"), dtype=int)
    q = np.asarray(Image.open(tmp_path / "one/imagesTr/case003_s1_0000.png"), dtype=int)
    assert np.abs(p - q).max() <= 1


def test_generate_killed_midway_then_resumed_equals_uninterrupted(toy_dataset, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    base, cn = tmp_path / "base", tmp_path / "cn"
    train(_cfg(toy_dataset, base, steps=2), "base", progress=False)
    train(_cfg(toy_dataset, cn, steps=2, base=str(base)), "controlnet", progress=False)
    kw = dict(model=str(cn), masks=str(toy_dataset), steps=30, batch_size=1, precision="no")
    generate(GenerateConfig(out=str(tmp_path / "full"), **kw), progress=False)
    part = tmp_path / "part"
    argv = [sys.executable, "-m", "maskray", "generate", "--model", str(cn), "--masks", str(toy_dataset),
            "--out", str(part), "--steps", "30", "--batch-size", "1", "--precision", "no"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list((part / "imagesTr").glob("case*_0000.png")):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = list((part / "imagesTr").glob("case*_0000.png"))
    assert 1 <= len(done) < 6, "the run was not stopped midway"
    assert main(argv[3:]) == 2  # a second run into the folder refuses without --resume
    generate(GenerateConfig(out=str(part), resume=True, **kw), progress=False)
    for c in Dataset(toy_dataset).case_ids():
        a = (tmp_path / f"full/imagesTr/{c}_0000.png").read_bytes()
        b = (part / f"imagesTr/{c}_0000.png").read_bytes()
        assert a == b, c
    assert len(Dataset(part)) == 6


def test_bad_inputs_give_one_line_errors(toy_dataset, tmp_path, capsys):
    from conftest import make_toy_dataset

    unlabelled = make_toy_dataset(tmp_path / "unl", n=3, labelled=False)
    base = tmp_path / "base"
    assert main(["train", "base", "--data", str(unlabelled), "--out", str(base), "--image-size", "32",
                 "--steps", "1", "--batch-size", "2", "--block-out-channels", "8,16", "--norm-num-groups", "4",
                 "--precision", "no"]) == 0
    capsys.readouterr()
    cases = [
        (["train", "controlnet", "--data", str(unlabelled), "--base", str(base), "--out", str(tmp_path / "x"),
          "--image-size", "32"], "no label maps"),
        (["train", "controlnet", "--data", str(toy_dataset), "--base", str(tmp_path / "nope"),
          "--out", str(tmp_path / "y"), "--image-size", "32"], "not a trained maskray run"),
        (["train", "controlnet", "--data", str(toy_dataset), "--base", str(base), "--out", str(tmp_path / "z"),
          "--image-size", "64"], "trained at 32 px"),
        (["train", "base", "--data", str(toy_dataset), "--out", str(tmp_path / "w"), "--image-size", "30"],
         "not divisible"),
        (["train", "base", "--data", str(toy_dataset), "--out", str(tmp_path / "v"), "--lr-schedule", "weird"],
         None),
    ]
    for argv, msg in cases:
        with pytest.raises(SystemExit) if msg is None else _nullcontext():
            assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        if msg:
            assert msg in err and len(err.splitlines()) == 1 and "Traceback" not in err, err


def test_mask_with_label_the_model_never_saw(toy_dataset, tmp_path):
    from conftest import make_toy_dataset
    from maskray.errors import MaskrayError

    base, cn = tmp_path / "base", tmp_path / "cn"
    train(_cfg(toy_dataset, base, steps=1), "base", progress=False)
    train(_cfg(toy_dataset, cn, steps=1, base=str(base)), "controlnet", progress=False)
    other = make_toy_dataset(tmp_path / "other", n=2)
    meta = json.loads((other / "dataset.json").read_text())
    meta["labels"]["heart"] = 3
    (other / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(MaskrayError, match="heart"):
        generate(GenerateConfig(model=str(cn), masks=str(other), out=str(tmp_path / "g")), progress=False)
    assert not (tmp_path / "g").exists()


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_region_preserving_generation_keeps_every_pixel_outside_the_region(toy_dataset, tmp_path):
    from conftest import assert_only_region_changed, one_new_nodule

    base, cn = tmp_path / "base", tmp_path / "cn"
    train(_cfg(toy_dataset, base, steps=2), "base", progress=False)
    train(_cfg(toy_dataset, cn, steps=2, base=str(base)), "controlnet", progress=False)
    edited = one_new_nodule(toy_dataset, tmp_path / "edited")
    out = generate(GenerateConfig(model=str(cn), masks=str(edited), out=str(tmp_path / "inp"), steps=3,
                                  precision="no", inpaint_from=str(toy_dataset), inpaint_margin=2), progress=False)
    assert_only_region_changed(toy_dataset, out, edited)
    new, masks = Dataset(out), Dataset(edited)
    assert all(torch.equal(new.label(c), masks.label(c)) for c in new.case_ids())


def test_scaled_spacing_scales_each_axis_by_its_own_ratio(tmp_path):
    from conftest import TOY_LABELS
    from maskray.data.dataset import write_case
    from maskray.data.schema import DatasetInfo, write_dataset_info
    from maskray.pipelines.generate import _scaled_spacing

    write_case(tmp_path, "case000", np.full((40, 20), 0.5), np.zeros((40, 20), np.uint8))  # H=40, W=20
    write_dataset_info(tmp_path, DatasetInfo(labels=dict(TOY_LABELS), spacing=(0.5, 0.3)), 1)
    sy, sx = _scaled_spacing(Dataset(tmp_path), 80)  # 40 -> 80 rows, 20 -> 80 columns
    assert sy == pytest.approx(0.25) and sx == pytest.approx(0.075)


def test_region_preserving_size_error_names_the_real_flag(toy_dataset):
    from maskray.errors import MaskrayError
    from maskray.pipelines.generate import _inpaint_inputs

    ds = Dataset(toy_dataset)
    with pytest.raises(MaskrayError, match="maskray data import --image-size 64"):
        _inpaint_inputs(ds, ds, "case000", "case000", ds.label("case000"), 64, 2)
