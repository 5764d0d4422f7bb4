"""``maskray train autoencoder --init-from MODEL --decoder-only [--segmenter CK --segmentation-weight W]``: the
lesion-aware decoder. The encoder (so the model's latents) must not move, the written model must generate, and
the checker's term must reach the decoder and never the checker."""

from __future__ import annotations

import json

import pytest
import torch

from maskray.cli import main
from maskray.data.dataset import Dataset
from maskray.data.schema import write_splits
from maskray.diffusion.autoencoder import AutoencoderConfig, LatentCodec
from maskray.diffusion.store import load_codec, load_model, read_card
from maskray.errors import MaskrayError
from maskray.measures.mask_check import Checker
from maskray.measures.segmenter import Segmenter, SegmenterConfig
from maskray.pipelines.generate import GenerateConfig, generate
from maskray.training.autoencoder import AutoencoderTrainConfig, train_autoencoder
from maskray.training.autoencoder_start import encoder_hash, open_start
from maskray.training.checker import load_pairs
from maskray.training.config import TrainConfig
from maskray.training.mask_terms import CheckerLoss
from maskray.training.trainer import train

TINY = dict(image_size=32, batch_size=4, block_out_channels=(8, 16), norm_num_groups=4, validation_cases=2,
            validation_sampler_steps=2, precision="no", checkpoint_every=2)
LABELS = {"background": 0, "lung": 1, "nodule": 2}


@pytest.fixture(scope="module")
def latent_model(tmp_path_factory):
    from conftest import make_toy_dataset

    root = tmp_path_factory.mktemp("decoder")
    data = make_toy_dataset(root / "toy")
    write_splits(data, {"train": [f"case{i:03d}" for i in range(4)], "val": ["case004", "case005"], "test": []})
    torch.manual_seed(0)
    codec = LatentCodec.new(AutoencoderConfig(factor=4, latent_channels=2, block_out_channels=(8, 16),
                                              norm_num_groups=4))
    codec.measure_scaling_factor(torch.rand(4, 1, 32, 32) * 2 - 1)
    codec.save(root / "ae")
    train(TrainConfig(data=str(data), out=str(root / "base"), steps=2, autoencoder=str(root / "ae"), **TINY),
          "base", progress=False)
    train(TrainConfig(data=str(data), out=str(root / "cn"), base=str(root / "base"), steps=2, **TINY), "controlnet",
          progress=False)
    ds = Dataset(data)
    xs, ys = load_pairs(ds, ds.case_ids(), 32)
    seg = Segmenter.train(xs, ys, [0, 1, 2], SegmenterConfig(features=(4, 4, 8, 8, 8, 4), steps=5, batch_size=4,
                                                             bf16=False, channels_last=False))
    Checker(seg, dict(LABELS), 32).save(root / "ck")
    return root, data


def _tune(root, data, out, weight: float, steps: int = 2, sampled: int = 0, start=None) -> AutoencoderTrainConfig:
    cfg = AutoencoderTrainConfig(data=str(data), out=str(out), image_size=32, crop_size=0, steps=steps,
                                 batch_size=2, warmup_steps=1, eval_cases=2, scale_cases=2, perceptual_weight=0,
                                 adversarial_weight=0, feature_matching_weight=0, precision="no",
                                 fused_kernels=False, init_from=str(start or root / "cn"), decoder_only=True,
                                 segmenter=str(root / "ck") if weight > 0 else None, segmentation_weight=weight, sampled_batch=sampled)
    train_autoencoder(cfg, progress=False)
    return cfg


def test_decoder_only_keeps_the_latents_and_writes_a_model_that_generates(latent_model, tmp_path):
    root, data = latent_model
    _tune(root, data, tmp_path / "dec", 1.0)
    from conftest import assert_stage_saves
    assert_stage_saves("autoencoder", tmp_path / "dec")
    old_card, new_card = read_card(root / "cn"), read_card(tmp_path / "dec")
    old, new = load_codec(root / "cn", old_card), load_codec(tmp_path / "dec", new_card)
    assert encoder_hash(new.vae) == encoder_hash(old.vae)  # the latents the networks learned on
    assert new.weights_hash() != old.weights_hash()  # the decoder moved
    assert new.scaling_factor == old.scaling_factor  # not re-measured
    assert new_card.unet_sha256 == old_card.unet_sha256 and new_card.controlnet_sha256 == old_card.controlnet_sha256
    note = new_card.training["decoder"]
    assert note["from_autoencoder_sha256"] == old.weights_hash() and note["segmentation_weight"] == 1.0
    assert note["sampled_batch"] == 0
    load_model(tmp_path / "dec", need_controlnet=True)
    rows = (tmp_path / "dec" / "log.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert all(float(r.split(",")[header.index("segmentation")]) > 0 for r in rows[1:])
    run = json.loads((tmp_path / "dec" / "run.json").read_text())
    assert run["init_from"]["autoencoder_sha256"] == old.weights_hash()
    assert 0 < run["trained_parameters"] < run["parameters"]
    pics = []
    for model in (root / "cn", tmp_path / "dec"):
        out = tmp_path / f"gen_{model.parent.name}_{model.name}"
        generate(GenerateConfig(model=str(model), masks=str(data), out=str(out), cases=("case000",), steps=2,
                                precision="no"), progress=False)
        pics.append(Dataset(out).image("case000"))
    # the same seed gives the same latents; only the decoder differs, so the pictures do
    assert pics[0].shape == pics[1].shape and (pics[0] != pics[1]).any()


def test_a_tuned_model_starts_another_tuning_as_a_model(latent_model, tmp_path):
    root, data = latent_model
    _tune(root, data, tmp_path / "dec", 1.0)
    tuned = LatentCodec.load(tmp_path / "dec" / "model" / "autoencoder").weights_hash()
    for start in (tmp_path / "dec", tmp_path / "dec" / "model"):  # both hold autoencoder/ beside the model
        codec, folder = open_start(str(start))
        assert folder == tmp_path / "dec" / "model" and codec.weights_hash() == tuned
    assert open_start(str(root / "ae"))[1] is None  # an autoencoder alone draws no latents
    _tune(root, data, tmp_path / "again", 1.0, steps=1, sampled=1, start=tmp_path / "dec" / "model")
    assert read_card(tmp_path / "again").training["decoder"]["from_autoencoder_sha256"] == tuned


def test_the_checker_term_reaches_the_decoder_and_not_the_checker(latent_model, tmp_path):
    root, data = latent_model
    _tune(root, data, tmp_path / "w0", 0.0, steps=1)
    _tune(root, data, tmp_path / "w1", 50.0, steps=1)
    a, b = (LatentCodec.load(tmp_path / r / "autoencoder") for r in ("w0", "w1"))
    assert a.weights_hash() != b.weights_hash()  # the same step with and without the term
    term = CheckerLoss(str(root / "ck"), Dataset(data).labels)
    x = (torch.rand(2, 1, 32, 32) * 2 - 1).requires_grad_(True)
    lab = torch.zeros(2, 32, 32, dtype=torch.int64)
    term(x, lab).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in term.net.parameters())


def test_decoder_only_refuses_what_it_cannot_keep(latent_model, tmp_path, capsys):
    _, data = latent_model
    base = ["train", "autoencoder", "--data", str(data), "--image-size", "32", "--crop-size", "0", "--steps", "1",
            "--precision", "no"]
    assert main(base + ["--out", str(tmp_path / "a"), "--decoder-only"]) == 2
    assert "--init-from" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "b"), "--segmentation-weight", "1"]) == 2
    assert "--segmenter" in capsys.readouterr().err
    pixel = tmp_path / "pixel"
    train(TrainConfig(data=str(data), out=str(pixel), steps=1, **TINY), "base", progress=False)
    assert main(base + ["--out", str(tmp_path / "c"), "--init-from", str(pixel), "--decoder-only"]) == 2
    err = capsys.readouterr().err.strip()
    assert "works on pixels" in err and "\n" not in err
    for name in ("a", "b", "c"):
        assert not (tmp_path / name / "autoencoder").exists()


def test_sampled_latents_are_drawn_once_for_the_training_masks_and_scored(latent_model, tmp_path):
    from safetensors.torch import load_file

    from maskray.training.data import load_arrays
    from maskray.training.decoder_samples import sampled_latents

    root, data = latent_model
    _tune(root, data, tmp_path / "s", 1.0, sampled=2)
    rows = (tmp_path / "s" / "log.csv").read_text().splitlines()
    col = rows[0].split(",").index("segmentation_sampled")
    assert all(float(r.split(",")[col]) > 0 for r in rows[1:])
    cache = load_file(str(tmp_path / "s" / "sampled_latents.safetensors"))
    arrays = load_arrays(Dataset(data), 32, "train", need_labels=True, progress=False)
    assert cache["latents"].shape == (len(arrays), 2, 8, 8) and torch.equal(cache["labels"], arrays.labels.long())
    # a pure function of the seed: drawn again elsewhere, the same latents
    again, _ = sampled_latents(root / "cn" / "model", arrays, Dataset(data).labels, tmp_path / "again", 0,
                               progress=False)
    assert torch.equal(again, cache["latents"])
    with pytest.raises(MaskrayError, match="--sampled-batch"):
        cfg = AutoencoderTrainConfig(data=str(data), out=str(tmp_path / "x"), image_size=32, crop_size=0, steps=1,
                                     init_from=str(root / "cn"), decoder_only=True, sampled_batch=2)
        train_autoencoder(cfg, progress=False)
