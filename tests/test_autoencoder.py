"""The latent autoencoder: codec round trip and storage, each loss term, the discriminator warm-up, the report's
measures, the latent cache, and ``maskray train autoencoder`` end to end on a tiny phantom."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from PIL import Image

from maskray.cli import main
from maskray.diffusion.autoencoder import AutoencoderConfig, LatentCodec
from maskray.diffusion.autoencoder_losses import AutoencoderLoss, LossWeights, adaptive_weight
from maskray.errors import MaskrayError
from maskray.measures.features import FeatureNet, FeatureNetConfig
from maskray.training.autoencoder_report import nodule_survival, reconstruction_picture
from maskray.training.latent_cache import cached_latents

TINY = AutoencoderConfig(factor=4, latent_channels=4, block_out_channels=(8, 16))


def tiny_codec(seed: int = 0, config: AutoencoderConfig = TINY) -> LatentCodec:
    torch.manual_seed(seed)
    return LatentCodec.new(config)


def images(n: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ------------------------------------------------------------------------------------------------ codec
@pytest.mark.parametrize("factor", [4, 8])
def test_round_trip_shapes_and_range(factor):
    codec = tiny_codec(config=AutoencoderConfig(factor=factor, block_out_channels=(8, 16)))
    x = images()
    with torch.no_grad():
        z = codec.encode(x)
        y = codec.decode(z * 50)  # far outside the training range: the decoder output must still be clamped
    assert z.shape == (3, 4, 32 // factor, 32 // factor)
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        zs = codec.encode(x, generator=g)
    assert zs.shape == z.shape and not torch.allclose(zs, z)  # a posterior sample, not the mean


def test_scaling_factor_is_one_over_latent_std_and_survives_save_load(tmp_path):
    codec = tiny_codec()
    x = images(6)
    s = codec.measure_scaling_factor(x)
    with torch.no_grad():
        z = codec.encode(x)
    assert abs(float(z.std()) - 1.0) < 1e-4 and s > 0
    codec.summary = {"steps": 3}
    codec.save(tmp_path / "ae")
    back = LatentCodec.load(tmp_path / "ae")
    assert back.scaling_factor == codec.scaling_factor
    assert back.weights_hash() == codec.weights_hash() and back.summary == {"steps": 3}
    codec.vae.eval()
    with torch.no_grad():
        assert torch.equal(back.decode(back.encode(x)), codec.decode(codec.encode(x)))
    card = json.loads((tmp_path / "ae" / "maskray_autoencoder.json").read_text())
    assert card["config"]["factor"] == 4 and card["scaling_factor"] == s
    with pytest.raises(MaskrayError, match="already holds files"):
        codec.save(tmp_path / "ae")


def test_load_refuses_pickles_and_bad_weights(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tiny_codec().save(tmp_path / "ae")
    (folder / "diffusion_pytorch_model.bin").write_bytes(b"planted")
    with pytest.raises(MaskrayError, match="pickle") as e:
        LatentCodec.load(folder)
    assert "\n" not in str(e.value)
    (folder / "diffusion_pytorch_model.bin").unlink()
    weights = folder / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state.pop("decoder.conv_out.weight")
    save_file(state, weights)
    with pytest.raises(MaskrayError, match="missing keys") as e:
        LatentCodec.load(folder)
    assert "\n" not in str(e.value)
    (folder / "maskray_autoencoder.json").unlink()
    with pytest.raises(MaskrayError, match="missing maskray_autoencoder.json"):
        LatentCodec.load(folder)


def test_load_refuses_weights_changed_after_saving(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tiny_codec().save(tmp_path / "ae")
    weights = folder / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state["decoder.conv_out.bias"] = state["decoder.conv_out.bias"] + 1
    save_file(state, weights)
    with pytest.raises(MaskrayError, match="hash"):
        LatentCodec.load(folder)


def test_config_refuses_bad_factor_and_channels():
    with pytest.raises(MaskrayError, match="factor 3"):
        AutoencoderConfig(factor=3)
    with pytest.raises(MaskrayError, match="norm groups"):
        AutoencoderConfig(block_out_channels=(12,), norm_num_groups=8)
    assert AutoencoderConfig(factor=8, block_out_channels=(8, 16)).channels() == (8, 16, 16, 16)


# ------------------------------------------------------------------------------------------------ losses
def _grads(weights: LossWeights, step: int = 10) -> torch.Tensor:
    """Gradient of the generator loss w.r.t. the tiny autoencoder's parameters, all else fixed."""
    codec = tiny_codec()
    torch.manual_seed(1)
    feat = FeatureNet(FeatureNetConfig(widths=(4, 8)))
    torch.manual_seed(2)
    loss_fn = AutoencoderLoss(weights, feat if weights.perceptual > 0 else None, disc_channels=(8, 16))
    x = images(2)
    post = codec.vae.encode(x).latent_dist
    xrec = codec.vae.decode(post.sample(generator=torch.Generator().manual_seed(3))).sample
    loss, _ = loss_fn.generator_loss(x, xrec, post, step, codec.vae.decoder.conv_out.weight)
    params = list(codec.vae.parameters())
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])


@pytest.mark.parametrize("term", ["kl", "perceptual", "feature_matching", "adversarial"])
def test_each_term_changes_the_gradient_only_when_weighted(term):
    base = LossWeights(l1=1.0, kl=0.0, perceptual=0.0, feature_matching=0.0, adversarial=0.0, disc_start=0,
                       adaptive=False)
    from dataclasses import replace

    g0 = _grads(base)
    g_off = _grads(replace(base, **{term: 0.0}))
    g_on = _grads(replace(base, **{term: 0.5 if term != "kl" else 1.0}))
    assert torch.equal(g0, g_off)
    assert (g_on - g0).abs().max() > 1e-6 * g0.abs().max()


def test_adaptive_weight_is_the_ratio_of_gradient_norms():
    w = torch.ones(3, 3, requires_grad=True)
    rec = 3.0 * (w * torch.arange(9.0).view(3, 3)).sum()
    adv = (w * torch.arange(9.0).view(3, 3)).sum()
    assert abs(float(adaptive_weight(rec, adv, w)) - 3.0) < 1e-3


def test_discriminator_starts_after_warm_up():
    torch.manual_seed(0)
    loss_fn = AutoencoderLoss(LossWeights(perceptual=0.0, adversarial=0.5, feature_matching=1.0, disc_start=5),
                              disc_channels=(8, 16))
    x, xrec = images(2), images(2, seed=1)
    post = DiagonalGaussianDistribution(torch.zeros(2, 8, 8, 8))
    d_before, _ = loss_fn.discriminator_loss(x, xrec, step=4)
    _, parts_before = loss_fn.generator_loss(x, xrec, post, step=4)
    d_after, _ = loss_fn.discriminator_loss(x, xrec, step=5)
    _, parts_after = loss_fn.generator_loss(x, xrec, post, step=5)
    assert d_before is None and "adversarial" not in parts_before and "feature_matching" not in parts_before
    assert d_after is not None and float(d_after.detach()) > 0
    assert "adversarial" in parts_after and parts_after["feature_matching"] > 0


# ------------------------------------------------------------------------------------------------ report
def _nodule_case(contrast: float) -> tuple[torch.Tensor, torch.Tensor]:
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    lab = torch.ones(32, 32, dtype=torch.int64)  # lung everywhere
    nod = (yy - 16) ** 2 + (xx - 16) ** 2 <= 9
    lab[nod] = 2
    x = torch.full((1, 1, 32, 32), -0.5)
    x[0, 0][nod] += contrast
    return x, lab[None]


def test_nodule_survival_known_answers():
    real, lab = _nodule_case(0.4)
    r = {c: nodule_survival(real, _nodule_case(c)[0], lab, nodule=2, lung=1) for c in (0.4, 0.24, 0.16, 0.0)}
    assert all(v["n_nodules"] == v["n_scored"] == 1 for v in r.values())
    for contrast, v in r.items():
        assert abs(v["mean_ratio"] - contrast / 0.4) < 1e-6
        assert v["fraction_surviving"] == (1.0 if contrast / 0.4 >= 0.5 else 0.0)
    faint, _ = _nodule_case(0.01)  # below min_contrast in the original: counted, not scored
    assert nodule_survival(faint, faint, lab, nodule=2, lung=1)["n_scored"] == 0


def test_reconstruction_picture_depends_on_input(tmp_path):
    x = images(2)
    reconstruction_picture(x, x, tmp_path / "a.png")
    reconstruction_picture(x, -x, tmp_path / "b.png")
    a, b = np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "b.png"))
    assert a.shape == b.shape == (96, 64)
    assert np.array_equal(a[:32], b[:32]) and not np.array_equal(a[32:], b[32:])


# ------------------------------------------------------------------------------------------------ cache
def test_latent_cache_reused_for_same_autoencoder_recomputed_for_another(tmp_path, monkeypatch):
    x = images(5)
    codec = tiny_codec()
    calls = []
    real_encode = LatentCodec.encode
    monkeypatch.setattr(LatentCodec, "encode", lambda self, *a, **k: calls.append(1) or real_encode(self, *a, **k))
    z1 = cached_latents(x, codec, tmp_path, batch_size=2, progress=False)
    n_first = len(calls)
    z2 = cached_latents(x, codec, tmp_path, batch_size=2, progress=False)
    assert n_first == 3 and len(calls) == n_first and torch.equal(z1, z2)
    with torch.no_grad():
        assert torch.allclose(z1, codec.encode(x), atol=1e-6)
    other = tiny_codec(seed=7)
    z3 = cached_latents(x, other, tmp_path, batch_size=2, progress=False)
    assert len(calls) > n_first + 1 and not torch.allclose(z3, z1)
    other.scaling_factor = 2.0  # same weights, other scale: recomputed too
    z4 = cached_latents(x, other, tmp_path, batch_size=2, progress=False)
    assert torch.allclose(z4, 2.0 * z3, atol=1e-5)
    z5 = cached_latents(images(5, seed=9), other, tmp_path, batch_size=2, progress=False)
    assert not torch.allclose(z5, z4)


def test_latent_cache_reads_another_runs_cache_of_the_same_images_and_autoencoder(tmp_path, monkeypatch):
    x, codec = images(5), tiny_codec()
    z_base = cached_latents(x, codec, tmp_path / "base", batch_size=2, progress=False)
    calls = []
    real_encode = LatentCodec.encode
    monkeypatch.setattr(LatentCodec, "encode", lambda self, *a, **k: calls.append(1) or real_encode(self, *a, **k))
    z = cached_latents(x, codec, tmp_path / "cn", batch_size=2, progress=False, also_read=(tmp_path / "base",))
    assert torch.equal(z, z_base) and not calls and not (tmp_path / "cn").exists()
    # another autoencoder finds nothing to reuse there: it encodes, into its own folder only
    cached_latents(x, tiny_codec(seed=7), tmp_path / "cn", batch_size=2, progress=False, also_read=(tmp_path / "base",))
    assert calls and len(list((tmp_path / "cn").glob("latents-*"))) == 1
    assert len(list((tmp_path / "base").glob("latents-*"))) == 1


def test_latent_cache_other_processes_read_what_the_main_process_wrote(tmp_path, monkeypatch):
    from maskray.training import latent_cache

    x = images(4)
    codec = tiny_codec()
    z_main = cached_latents(x, codec, tmp_path, progress=False)  # a world of one: the main process writes
    calls = []
    monkeypatch.setattr(LatentCodec, "encode", lambda self, *a, **k: calls.append(1))
    monkeypatch.setattr(latent_cache, "on_main", lambda fn: None)  # as a process other than the main one sees it
    assert torch.equal(cached_latents(x, codec, tmp_path, progress=False), z_main) and not calls
    with pytest.raises(MaskrayError, match="main process wrote no readable latent cache"):
        cached_latents(images(4, seed=3), codec, tmp_path, progress=False)


# ------------------------------------------------------------------------------------------------ CLI
TRAIN = ["train", "autoencoder", "--image-size", "32", "--crop-size", "16", "--block-out-channels", "8,16",
         "--batch-size", "2", "--feature-steps", "3", "--feature-matching-weight", "1", "--adversarial-weight",
         "0.5", "--disc-start", "4", "--eval-cases", "3", "--scale-cases", "6", "--precision", "no",
         "--checkpoint-every", "3"]


@pytest.fixture(scope="module")
def phantom32(tmp_path_factory):
    root = tmp_path_factory.mktemp("ph") / "ph32"
    assert main(["phantom", "--out", str(root), "--n", "16", "--image-size", "32", "--seed", "0"]) == 0
    return root


def test_train_autoencoder_cli_end_to_end(phantom32, tmp_path):
    run = tmp_path / "run"
    assert main(TRAIN + ["--data", str(phantom32), "--out", str(run), "--steps", "8"]) == 0
    report = json.loads((run / "report.json").read_text())
    for key in ("psnr_db", "ssim", "spectrum_distance", "nodule_survival", "scaling_factor", "weights_sha256"):
        assert key in report
    assert report["split"] in ("val", "test") and report["n_images"] >= 1
    assert np.isfinite(report["psnr_db"]["mean"]) and -1 <= report["ssim"]["mean"] <= 1
    codec = LatentCodec.load(run / "autoencoder")
    assert codec.scaling_factor == report["scaling_factor"] and codec.weights_hash() == report["weights_sha256"]
    rows = (run / "log.csv").read_text().splitlines()
    header = rows[0].split(",")
    disc = [r.split(",")[header.index("disc")] for r in rows[1:]]
    assert len(rows) == 9 and disc[:4] == [""] * 4 and all(d for d in disc[4:])  # discriminator from step 5 on
    assert Image.open(run / "reconstructions.png").size == (32 * report["n_images"], 96)
    assert json.loads((run / "run.json").read_text())["config"]["factor"] == 4
    assert main(TRAIN + ["--data", str(phantom32), "--out", str(run), "--steps", "8"]) == 2  # no overwrite


def test_train_autoencoder_resume_is_exact(phantom32, tmp_path):
    args = TRAIN + ["--data", str(phantom32), "--steps", "6", "--perceptual-weight", "0"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert main(args + ["--out", str(tmp_path / "b"), "--stop-after", "3"]) == 0
    assert not (tmp_path / "b" / "report.json").exists()
    with open(tmp_path / "b" / "log.csv", "a") as f:  # a row written after the checkpoint, then a crash
        f.write("4,9,9,9,,,,,,1e-3,1,1\n")
    assert main(args + ["--out", str(tmp_path / "b"), "--resume"]) == 0
    steps = [r.split(",")[0] for r in (tmp_path / "b" / "log.csv").read_text().splitlines()[1:]]
    assert steps == [str(i) for i in range(1, 7)]
    a, b = (LatentCodec.load(tmp_path / r / "autoencoder") for r in ("a", "b"))
    assert a.weights_hash() == b.weights_hash()


def test_train_autoencoder_in_bf16_uses_the_fused_kernel_and_resumes_exactly(phantom32, tmp_path):
    from maskray.diffusion.fused import FUSED_KERNELS, kernel_problem

    if kernel_problem() is not None:
        pytest.skip(kernel_problem())
    args = [a if a != "no" else "bf16" for a in TRAIN] + ["--data", str(phantom32), "--steps", "6"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert json.loads((tmp_path / "a" / "run.json").read_text())["kernels"] == FUSED_KERNELS
    assert main(args + ["--out", str(tmp_path / "b"), "--stop-after", "3"]) == 0
    assert main(args + ["--out", str(tmp_path / "b"), "--resume"]) == 0
    a, b = (LatentCodec.load(tmp_path / r / "autoencoder") for r in ("a", "b"))
    assert a.weights_hash() == b.weights_hash()
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert np.isfinite(report["psnr_db"]["mean"])


def test_train_autoencoder_bad_input_is_one_line(phantom32, tmp_path, capsys):
    assert main(TRAIN + ["--data", str(phantom32), "--out", str(tmp_path / "r"), "--factor", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "factor 3" in err and "\n" not in err
    assert not (tmp_path / "r").exists()


def test_latent_cache_of_training_arrays_encodes_pixels(tmp_path):
    from maskray.training.data import TrainingArrays

    ints = torch.randint(0, 65536, (4, 1, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.int32)
    arrays = TrainingArrays([f"c{i}" for i in range(4)], ints, None)
    codec = tiny_codec()
    z = cached_latents(arrays, codec, tmp_path / "a", progress=False)
    with torch.no_grad():
        assert torch.allclose(z, codec.encode(arrays.pixels(torch.arange(4))), atol=1e-6)
    arrays.latents = torch.zeros_like(z)  # a latent-mode array set still caches the latents of its pixels
    assert torch.allclose(cached_latents(arrays, codec, tmp_path / "b", progress=False), z, atol=1e-6)


def test_load_refuses_a_corrupt_card_in_one_line(tmp_path):
    folder = tiny_codec().save(tmp_path / "ae")
    (folder / "maskray_autoencoder.json").write_text("{not json")
    with pytest.raises(MaskrayError, match="not valid JSON") as e:
        LatentCodec.load(folder)
    (folder / "maskray_autoencoder.json").write_text('{"config": {"factor": 4}}')
    with pytest.raises(MaskrayError, match="config is not valid") as e2:
        LatentCodec.load(folder)
    assert "\n" not in str(e.value) + str(e2.value)
