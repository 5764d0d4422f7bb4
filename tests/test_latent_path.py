"""Both stages and generation in an autoencoder's latent space, end to end at tiny sizes."""


import numpy as np
import pytest
import torch
from PIL import Image

from maskray.data.dataset import Dataset
from maskray.diffusion.autoencoder import AutoencoderConfig, LatentCodec
from maskray.diffusion.store import load_codec, load_model
from maskray.errors import MaskrayError
from maskray.pipelines.generate import GenerateConfig, generate
from maskray.training.config import TrainConfig
from maskray.training.trainer import train

TINY = dict(image_size=32, batch_size=4, block_out_channels=(8, 16), norm_num_groups=4, validation_cases=2,
            validation_sampler_steps=2, precision="no", checkpoint_every=2)


def _codec(folder, seed=0):
    torch.manual_seed(seed)
    codec = LatentCodec.new(AutoencoderConfig(factor=4, latent_channels=2, block_out_channels=(8, 16),
                                              norm_num_groups=4))
    codec.measure_scaling_factor(torch.rand(4, 1, 32, 32) * 2 - 1)
    codec.save(folder)
    return codec


@pytest.fixture(scope="module")
def latent_runs(tmp_path_factory):
    from conftest import make_toy_dataset

    root = tmp_path_factory.mktemp("latent")
    data = make_toy_dataset(root / "toy")
    _codec(root / "ae")
    train(TrainConfig(data=str(data), out=str(root / "base"), steps=2, autoencoder=str(root / "ae"), **TINY),
          "base", progress=False)
    train(TrainConfig(data=str(data), out=str(root / "cn"), base=str(root / "base"), steps=2, **TINY), "controlnet",
          progress=False)
    return root, data


def test_both_stages_learn_on_latents(latent_runs):
    root, data = latent_runs
    model, card = load_model(root / "cn")
    assert card.latent["factor"] == 4 and card.sample_shape == (2, 8, 8)
    assert model.unet.config.in_channels == 2 and model.unet.config.sample_size == 8
    # the mask enters at image resolution: 32 px folded into 4 x 4 x 2 channels of the 8 x 8 latent
    assert tuple(model.controlnet.config.conditioning_embedding_out_channels) == (16,)
    assert model.controlnet.config.conditioning_channels == 2 * 16
    codec = load_codec(root / "cn", card)
    assert codec.weights_hash() == card.latent["autoencoder_sha256"]
    assert list((root / "base" / "cache").glob("latents-*.safetensors"))
    # stage 2 read its base's cache of the same images and autoencoder instead of encoding them again
    assert not list((root / "cn" / "cache").glob("latents-*.safetensors"))
    assert (root / "cn" / "validation" / "strip.png").is_file()
    # a latent base shifts its noise schedule by default (measured: stage 1 learns the layout), and stage 2 keeps it
    from maskray.diffusion.objective import LATENT_SNR_SHIFT

    _, base_card = load_model(root / "base")
    assert base_card.diffusion["snr_shift"] == card.diffusion["snr_shift"] == LATENT_SNR_SHIFT
    assert card.scheduler_config["trained_betas"] == base_card.scheduler_config["trained_betas"]


def test_generate_decodes_to_images_that_depend_on_the_mask(latent_runs, tmp_path):
    root, data = latent_runs
    out = generate(GenerateConfig(model=str(root / "cn"), masks=str(data), out=str(tmp_path / "g"), steps=2),
                   progress=False)
    ds = Dataset(out)
    img = np.asarray(Image.open(ds.cases["case000"].image_path))
    assert img.shape == (32, 32) and img.std() > 0
    # another mask, same seed: another image (two training steps barely move the zero-initialised joins, so move them by hand)
    model, _ = load_model(root / "cn")
    with torch.no_grad():
        x = torch.randn(2, 2, 8, 8)
        t = torch.tensor([500, 500])
        for conv in [*model.controlnet.controlnet_down_blocks, model.controlnet.controlnet_cond_embedding.conv_out]:
            conv.weight.fill_(0.05)
        a = model(x, t, torch.zeros(2, 2, 32, 32))
        b = model(x, t, torch.ones(2, 2, 32, 32))
    assert not torch.allclose(a, b)


def test_latent_inpainting_keeps_every_pixel_outside_the_region(latent_runs, tmp_path):
    from conftest import assert_only_region_changed, one_new_nodule

    root, data = latent_runs
    edited = one_new_nodule(data, tmp_path / "edited")
    out = generate(GenerateConfig(model=str(root / "cn"), masks=str(edited), out=str(tmp_path / "inp"), steps=2,
                                  inpaint_from=str(data), inpaint_margin=2), progress=False)
    assert_only_region_changed(data, out, edited)


def test_stage_two_refuses_another_autoencoder(latent_runs, tmp_path):
    root, data = latent_runs
    _codec(tmp_path / "other", seed=1)
    with pytest.raises(MaskrayError, match="not the autoencoder of the base"):
        train(TrainConfig(data=str(data), out=str(tmp_path / "cn2"), base=str(root / "base"), steps=1,
                          autoencoder=str(tmp_path / "other"), **TINY), "controlnet", progress=False)


def test_mask_fold_reads_every_image_pixel_and_old_strided_embeddings_still_run():
    from maskray.diffusion.networks import ControlledUNet, UNetConfig, build_controlnet, build_unet, mask_fold

    assert mask_fold(4, (16,)) == 4 and mask_fold(4, (16, 32, 64)) == 1 and mask_fold(1, (16,)) == 1
    with pytest.raises(MaskrayError, match="downsamples by 4, more than the model's factor 2"):
        mask_fold(2, (16, 32, 64))
    torch.manual_seed(0)
    unet = build_unet(UNetConfig(block_out_channels=(8, 16), norm_num_groups=4, in_channels=2), 8)
    x, t = torch.randn(1, 2, 8, 8), torch.tensor([500])
    for emb in ((16,), (16, 32, 64)):  # folded (the default now) and strided (latent models of before)
        net = build_controlnet(unet, 2, emb, factor=4)
        with torch.no_grad():
            for conv in [*net.controlnet_down_blocks, net.controlnet_cond_embedding.conv_out]:
                conv.weight.fill_(0.05)
            model = ControlledUNet(unet, net).eval()
            mask = torch.zeros(1, 2, 32, 32)
            a = model(x, t, mask)
            mask[0, 1, 17, 6] = 1  # one image pixel, inside one 4 x 4 latent cell
            b = model(x, t, mask)
        assert not torch.allclose(a, b), emb


def test_a_latent_mask_model_samples_with_its_own_mask_guidance(latent_runs, tmp_path):
    """A latent mask model's card asks for mask guidance 1.5 (measured: its nodules are found as often as real
    ones); `generate` uses it unless told otherwise and records what it used. A pixel model keeps 1."""
    import json

    from maskray.training.stages import LATENT_MASK_GUIDANCE

    root, data = latent_runs
    _, card = load_model(root / "cn")
    assert card.sampling == {"guidance_scale": LATENT_MASK_GUIDANCE} and float(LATENT_MASK_GUIDANCE) > 1
    kw = dict(model=str(root / "cn"), masks=str(data), steps=2, cases=("case000",), batch_size=1)
    used = generate(GenerateConfig(out=str(tmp_path / "default"), **kw), progress=False)
    assert json.loads((used / "generate_config.json").read_text())["guidance_scale"] == LATENT_MASK_GUIDANCE
    off = generate(GenerateConfig(out=str(tmp_path / "off"), guidance_scale="1", **kw), progress=False)
    assert json.loads((off / "generate_config.json").read_text())["guidance_scale"] == "1"
    pixel = tmp_path / "pixel"
    train(TrainConfig(data=str(data), out=str(pixel / "base"), steps=1, **{**TINY, "image_size": 16}), "base",
          progress=False)
    train(TrainConfig(data=str(data), out=str(pixel / "cn"), base=str(pixel / "base"), steps=1,
                      **{**TINY, "image_size": 16}), "controlnet", progress=False)
    assert load_model(pixel / "cn")[1].sampling == {}
