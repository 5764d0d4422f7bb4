"""maskray.measures: image measures on cases with known answers, and the self-supervised feature network."""

from __future__ import annotations

import json
import math

import pytest
import torch

from maskray.errors import MaskrayError
from maskray.measures.features import CONFIG, WEIGHTS, FeatureNet, train_feature_net
from maskray.measures.image import psnr, radial_power_spectrum, spectrum_distance, ssim


def textured(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth 'anatomy' (a vertical gradient) plus fine random texture, in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(-0.5, 0.5, size).view(1, 1, size, 1).expand(n, 1, size, size)
    return (ramp + 0.2 * torch.randn(n, 1, size, size, generator=g)).clamp(-1, 1)


def blur(x: torch.Tensor) -> torch.Tensor:
    k = torch.ones(1, 1, 5, 5) / 25
    return torch.nn.functional.conv2d(torch.nn.functional.pad(x, (2, 2, 2, 2), mode="replicate"), k)


def test_psnr_known_value_and_exact_copy():
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    # constant error 0.02 on a range of 2: MSE 4e-4, PSNR = 10 log10(4 / 4e-4) = 40 dB
    assert torch.allclose(psnr(x, x + 0.02), torch.full((3,), 40.0), atol=1e-3)
    assert torch.isinf(psnr(x, x)).all()


def test_ssim_is_the_unit_range_ssim():
    x, y = torch.rand(2, 1, 32, 32) * 2 - 1, torch.rand(2, 1, 32, 32) * 2 - 1
    assert torch.allclose(ssim(x, x), torch.ones(2))
    from monai.metrics import SSIMMetric

    ref = SSIMMetric(spatial_dims=2, data_range=1.0, kernel_type="gaussian", win_size=11, kernel_sigma=1.5,
                     reduction="none")((x + 1) / 2, (y + 1) / 2).view(-1)
    assert torch.allclose(ssim(x, y), ref, atol=1e-6)


def test_radial_spectrum_puts_a_cosine_at_its_frequency():
    size, k = 32, 5
    j = torch.arange(size).float()
    x = torch.cos(2 * math.pi * k * j / size).view(1, 1, 1, size).expand(1, 1, size, size)
    s = radial_power_spectrum(x)
    assert s.shape == (1, size // 2)
    assert int(s[0].argmax()) == k - 1 and s[0, k - 1] > 1e3 * s[0, [i for i in range(size // 2) if i != k - 1]].max()


def test_spectrum_distance_ranks_blurred_below_real():
    a, b = textured(16, seed=0), textured(16, seed=1)
    floor = spectrum_distance(a, b)
    blurred = spectrum_distance(a, blur(b))
    assert spectrum_distance(a, a) == 0.0
    assert blurred > 10 * floor and blurred > 0.3


def test_feature_net_shapes_save_load(tmp_path):
    x = textured(6)
    net = train_feature_net(x, steps=3, seed=0, progress=False, widths=(4, 8))
    feats = net.features(x)
    assert [tuple(f.shape) for f in feats] == [(6, 4, 16, 16), (6, 8, 8, 8)]
    e = net.embed(x)
    assert e.shape == (6, 24) and torch.isfinite(e).all()
    net.save(tmp_path / "fn")
    back = FeatureNet.load(tmp_path / "fn")
    assert back.config == net.config and torch.equal(back.embed(x), e)
    # same seed, same network
    assert torch.equal(train_feature_net(x, steps=3, seed=0, progress=False, widths=(4, 8)).embed(x), e)


def test_feature_net_load_refuses_bad_folders(tmp_path):
    with pytest.raises(MaskrayError, match="not a feature network folder"):
        FeatureNet.load(tmp_path)
    net = train_feature_net(textured(2), steps=1, progress=False, widths=(4, 8))
    net.save(tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / CONFIG).read_text())
    (tmp_path / "a" / CONFIG).write_text(json.dumps({**cfg, "widths": [4, 16]}))
    with pytest.raises(MaskrayError, match="do not fit"):
        FeatureNet.load(tmp_path / "a")
    (tmp_path / "a" / WEIGHTS).write_bytes(b"\x80\x04K\x01.")  # a pickle, not safetensors
    (tmp_path / "a" / CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(MaskrayError, match="do not fit"):
        FeatureNet.load(tmp_path / "a")


def test_nodule_contrast_is_inside_minus_the_lung_ring_for_each_nodule():
    from maskray.measures.nodules import nodule_contrasts

    labels = torch.ones(2, 32, 32, dtype=torch.int64)  # lung everywhere
    labels[0, 5:8, 5:8] = 3  # two nodules in image 0, none in image 1
    labels[0, 20:24, 20:24] = 3
    images = torch.full((2, 1, 32, 32), 0.2)
    images[0, 0][labels[0] == 3] = 0.7
    images[0, 0, 20:24, 20:24] = 0.2  # the second nodule is invisible
    got = nodule_contrasts(images, labels, nodule=3, lung=1)
    assert [i for i, _ in got] == [0, 0]
    assert got[0][1] == pytest.approx(0.5) and got[1][1] == pytest.approx(0.0)
    labels[0, 1:12, 1:12] = 0  # no lung within the 3 px ring of the first nodule: skipped
    labels[0, 5:8, 5:8] = 3
    assert len(nodule_contrasts(images, labels, nodule=3, lung=1)) == 1


@pytest.mark.parametrize("size", [64, 80, 96, 112, 128, 256])
def test_ms_ssim_scales_follow_monais_own_check(size):
    from maskray.measures.image import ms_ssim, ms_ssim_scales

    x = textured(1, size)
    y = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(-1, 1)
    v = ms_ssim(x, y)
    assert v.shape == (1,) and 0.0 < float(v) < 1.0 and float(ms_ssim(x, x)) == pytest.approx(1.0, abs=1e-4)
    assert ms_ssim_scales(size) == {64: 3, 80: 3, 96: 3, 112: 4, 128: 4, 256: 5}[size]
