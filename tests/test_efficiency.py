"""MFU in log.csv: FLOPs of a training step counted once, against the measured matmul peak."""

import csv

import torch
from torch.utils.flop_counter import FlopCounterMode

from maskray.diffusion.networks import ControlledUNet, UNetConfig, build_controlnet, build_unet
from maskray.training.efficiency import Mfu, train_flops_per_image
from maskray.training.trainer import TrainConfig, train


def _unet():
    torch.manual_seed(0)
    return build_unet(UNetConfig(block_out_channels=(8, 16), norm_num_groups=4), 32)


def _forward_flops(model, x, cond):
    with FlopCounterMode(display=False) as c, torch.no_grad():
        model(x, torch.tensor([500]), cond)
    return c.get_total_flops()


def test_training_step_counts_forward_and_backward():
    x = torch.randn(1, 1, 32, 32)
    base = ControlledUNet(_unet())
    # every weight trains: backward is about twice the forward (input and weight gradients)
    ratio = train_flops_per_image(base, x, None) / _forward_flops(base, x, None)
    assert 2.6 < ratio < 3.4
    assert all(p.grad is None for p in base.parameters())
    # stage 2: the frozen base gets no weight gradients, so the step costs less than 3 forwards
    unet = _unet().requires_grad_(False)
    joined = ControlledUNet(unet, build_controlnet(unet, 2))
    cond = torch.rand(1, 2, 32, 32)
    ratio2 = train_flops_per_image(joined, x, cond) / _forward_flops(joined, x, cond)
    assert 1.5 < ratio2 < ratio


def test_mfu_divides_by_every_process_peak():
    assert Mfu(flops_per_image=1e9, peak_flops=1e11, processes=2).fraction(10.0) == 0.05


def test_log_has_an_mfu_column(toy_dataset, tmp_path):
    cfg = TrainConfig(data=str(toy_dataset), out=str(tmp_path / "run"), image_size=32, batch_size=2, steps=2,
                      block_out_channels=(8, 16), norm_num_groups=4, validation_cases=2, validation_sampler_steps=2,
                      precision="no")
    train(cfg, "base", progress=False)
    with open(tmp_path / "run/log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(0 < float(r["mfu"]) < 1 for r in rows)
