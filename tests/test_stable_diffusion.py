"""A ControlNet on a Stable Diffusion folder (diffusers layout), with tiny random components the test saves itself.

Nothing is downloaded: the UNet (cross-attention), the RGB VAE (factor 4), the CLIP text encoder, a tokenizer
built from a vocabulary written here and the scheduler config are made at random and written with
``save_pretrained``, in the layout ``StableDiffusionPipeline.save_pretrained`` writes.
"""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import random_sd  # noqa: E402  (benchmarks/random_sd.py: the random SD folder, shared with gpu_smoke.py)

from maskray.cli import main  # noqa: E402
from maskray.data.dataset import Dataset  # noqa: E402
from maskray.diffusion import pretrained as sd  # noqa: E402
from maskray.diffusion.store import load_codec, load_model, read_card, save_pretrained_model  # noqa: E402
from maskray.errors import MaskrayError  # noqa: E402
from maskray.pipelines.generate import GenerateConfig, generate  # noqa: E402
from maskray.training.config import TrainConfig  # noqa: E402
from maskray.training.trainer import train  # noqa: E402

TINY = ["--image-size", "32", "--batch-size", "2", "--steps", "2", "--validation-cases", "2",
        "--validation-sampler-steps", "2", "--precision", "no", "--checkpoint-every", "2"]


def _unet(seed=0):
    return random_sd.unet("tiny", seed)


def make_sd_folder(root):
    """A tiny Stable Diffusion folder in diffusers layout, every part randomly initialised and saved here."""
    return random_sd.make_sd_folder(root, "tiny")


@pytest.fixture(scope="module")
def sd_run(tmp_path_factory):
    from conftest import make_toy_dataset

    root = tmp_path_factory.mktemp("sd")
    data = make_toy_dataset(root / "toy")
    folder = make_sd_folder(root / "sd-base")
    rc = main(["train", "controlnet", "--data", str(data), "--out", str(root / "cn"), "--pretrained", str(folder),
               *TINY])
    assert rc == 0
    return root, data, folder


def test_training_writes_a_controlnet_that_names_its_base_without_copying_it(sd_run):
    from conftest import assert_stage_saves

    root, data, folder = sd_run
    assert_stage_saves("controlnet", root / "cn")
    model_dir = root / "cn" / "model"
    assert sorted(p.name for p in model_dir.iterdir()) == ["controlnet", "maskray.json", "pretrained.json"]
    card_text = (model_dir / "maskray.json").read_text()
    assert str(folder) not in card_text and folder.name not in card_text  # the card holds no path
    assert json.loads((model_dir / "pretrained.json").read_text())["path"] == str(folder.resolve())
    card = read_card(root / "cn")
    assert card.pretrained["prompt"] == sd.DEFAULT_PROMPT
    assert card.pretrained["parts_sha256"] == sd.parts_sha256(folder)
    assert card.latent == {"factor": 4, "latent_channels": 4, "scaling_factor": 0.18215,
                           "autoencoder_sha256": card.pretrained["parts_sha256"]["vae"]}
    assert card.scheduler_config["beta_end"] == 0.012  # the folder's schedule, not maskray's own
    model, card = load_model(root / "cn", need_controlnet=True)
    assert model.controlnet.config.conditioning_channels == 2 and model.controlnet.config.cross_attention_dim == 32
    assert tuple(model.controlnet.config.conditioning_embedding_out_channels) == (16, 32, 64)  # 32 px mask -> 8, strided
    assert torch.equal(model.encoder_states(torch.zeros(2, 4, 8, 8)),
                       sd.prompt_context(folder, sd.DEFAULT_PROMPT).expand(2, -1, -1))
    codec = load_codec(root / "cn", card)
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    assert codec.encode(x).shape == (2, 4, 8, 8) and codec.decode(codec.encode(x)).shape == (2, 1, 32, 32)
    assert load_model(root / "cn" / "checkpoints" / "step-2")[1].step == 2  # checkpoints load too
    assert (root / "cn" / "validation" / "strip.png").is_file()
    rows = (root / "cn" / "log.csv").read_text().splitlines()[1:]
    assert len(rows) == 2 and all(np.isfinite(float(r.split(",")[1])) for r in rows)


def _perturbed(run, out):
    """The trained model with its zero-initialised joins moved by hand (two steps barely move them), saved
    through the same function as training saves with."""
    model, card = load_model(run)
    with torch.no_grad():
        for conv in [*model.controlnet.controlnet_down_blocks, model.controlnet.controlnet_mid_block,
                     model.controlnet.controlnet_cond_embedding.conv_out]:
            conv.weight.fill_(0.05)
    return save_pretrained_model(out, model.controlnet, card, json.loads(
        (run / "model" / "pretrained.json").read_text())["path"])


def _image(out, case="case000"):
    ds = Dataset(out)
    return np.asarray(Image.open(ds.cases[case].image_path)).astype(int)


def test_generate_depends_on_the_mask_and_on_the_prompt(sd_run, tmp_path):
    from conftest import make_toy_dataset

    root, data, _ = sd_run
    model = _perturbed(root / "cn", tmp_path / "model")
    other = make_toy_dataset(tmp_path / "other", seed=1)  # same case ids (same seeds), other masks
    kw = dict(model=str(model), steps=2, cases=("case000",), batch_size=1, precision="no")
    a = _image(generate(GenerateConfig(masks=str(data), out=str(tmp_path / "a"), **kw), progress=False))
    b = _image(generate(GenerateConfig(masks=str(other), out=str(tmp_path / "b"), **kw), progress=False))
    assert main(["generate", "--model", str(model), "--masks", str(data), "--out", str(tmp_path / "c"), "--steps",
                 "2", "--cases", "case000", "--batch-size", "1", "--precision", "no", "--prompt", "a knee"]) == 0
    c = _image(tmp_path / "c")
    again = _image(generate(GenerateConfig(masks=str(data), out=str(tmp_path / "d"), **kw), progress=False))
    assert a.shape == (32, 32) and a.std() > 0
    assert np.array_equal(a, again)
    assert np.abs(a - b).max() > 0, "the image does not depend on the mask"
    assert np.abs(a - c).max() > 0, "the image does not depend on the prompt"
    info = json.loads((tmp_path / "c" / "dataset.json").read_text())
    assert info["maskray"]["prompt"] == "a knee"


def test_region_preserving_mode_keeps_every_pixel_outside_the_region(sd_run, tmp_path):
    from conftest import assert_only_region_changed, one_new_nodule

    root, data, _ = sd_run
    edited = one_new_nodule(data, tmp_path / "edited")
    out = generate(GenerateConfig(model=str(root / "cn"), masks=str(edited), out=str(tmp_path / "inp"), steps=2,
                                  inpaint_from=str(data), inpaint_margin=2, precision="no"), progress=False)
    assert_only_region_changed(data, out, edited)


def _train_on(folder, data, out):
    cfg = TrainConfig(data=str(data), out=str(out), pretrained=str(folder), image_size=32, batch_size=2, steps=1,
                      precision="no")
    return train(cfg, "controlnet", progress=False)


def test_pickled_weights_are_refused(sd_run, tmp_path):
    _, data, folder = sd_run
    copy = shutil.copytree(folder, tmp_path / "sd")
    torch.save({"x": torch.zeros(1)}, copy / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(MaskrayError, match="pickled weights") as e:
        _train_on(copy, data, tmp_path / "run")
    assert "\n" not in str(e.value) and "unet" in str(e.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("part", sd.PARTS)
def test_a_missing_part_is_a_one_line_error_naming_it(sd_run, tmp_path, part):
    _, data, folder = sd_run
    copy = shutil.copytree(folder, tmp_path / "sd")
    shutil.rmtree(copy / part)
    with pytest.raises(MaskrayError, match=f"the '{part}' part is missing") as e:
        _train_on(copy, data, tmp_path / "run")
    assert "\n" not in str(e.value)


def test_generate_checks_the_base_against_the_card(sd_run, tmp_path):
    root, data, folder = sd_run
    copy = shutil.copytree(folder, tmp_path / "sd")
    shutil.rmtree(copy / "unet")
    _unet(seed=5).save_pretrained(copy / "unet")
    kw = dict(model=str(root / "cn"), masks=str(data), steps=1, cases=("case000",), batch_size=1)
    with pytest.raises(MaskrayError, match="not the 'unet' this model was trained on"):
        generate(GenerateConfig(out=str(tmp_path / "g"), pretrained=str(copy), **kw), progress=False)
    moved = shutil.copytree(root / "cn" / "model", tmp_path / "moved")
    (moved / "pretrained.json").unlink()
    with pytest.raises(MaskrayError, match="--pretrained DIR"):
        generate(GenerateConfig(**{**kw, "model": str(moved)}, out=str(tmp_path / "h")), progress=False)
    # an exported model with its base given by hand works
    out = generate(GenerateConfig(**{**kw, "model": str(moved)}, out=str(tmp_path / "i"), pretrained=str(folder)),
                   progress=False)
    assert _image(out).shape == (32, 32)


def test_options_that_do_not_fit_stable_diffusion_mode_are_refused(sd_run, tmp_path):
    root, data, folder = sd_run
    with pytest.raises(MaskrayError, match="--prompt needs --pretrained"):
        train(TrainConfig(data=str(data), out=str(tmp_path / "a"), base=str(root / "cn"), prompt="x"), "controlnet",
              progress=False)
    with pytest.raises(MaskrayError, match="train only 'controlnet'"):
        train(TrainConfig(data=str(data), out=str(tmp_path / "b"), pretrained=str(folder)), "base", progress=False)
    with pytest.raises(MaskrayError, match="brings its own noise schedule"):
        train(TrainConfig(data=str(data), out=str(tmp_path / "s"), pretrained=str(folder), snr_shift=2.0),
              "controlnet", progress=False)
    assert main(["train", "controlnet", "--data", str(data), "--out", str(tmp_path / "c"), "--pretrained",
                 str(folder), "--image-size", "30"]) == 2


# ------------------------------------------------------------------------------------- attributes as the prompt
def test_attribute_prompt_template():
    assert sd.attribute_prompt("a chest radiograph", {"sex": "F", "age": "60-70"}) == \
        "a chest radiograph of a female patient, age 60-70"
    assert sd.attribute_prompt("a chest radiograph", {"finding": "tuberculosis", "site": "MCUCXR"}) == \
        "a chest radiograph, finding tuberculosis, site MCUCXR"
    assert sd.attribute_prompt("a chest radiograph", {}) == "a chest radiograph"


def _with_attributes(data, out):
    """A copy of ``data`` whose cases record sex and age band (cases.json), alternating."""
    copy = shutil.copytree(data, out)
    path = copy / "cases.json"
    cases = json.loads(path.read_text()) if path.is_file() else {c: {} for c in Dataset(copy).cases}
    for i, c in enumerate(sorted(cases)):
        cases[c]["attributes"] = {"sex": "FM"[i % 2], "age": ("60-70", "20-30")[i // 2 % 2]}
    path.write_text(json.dumps(cases))
    return copy


def test_attributes_become_the_prompt_in_training_and_generation(sd_run, tmp_path):
    root, data, folder = sd_run
    attr_data = _with_attributes(data, tmp_path / "attr-data")
    assert main(["train", "controlnet", "--data", str(attr_data), "--out", str(tmp_path / "cn"), "--pretrained",
                 str(folder), "--attributes", "sex,age", "--prompt", "x", *TINY]) == 0
    model, card = load_model(tmp_path / "cn")
    assert card.vocabulary == {"sex": ("F", "M"), "age": ("20-30", "60-70")}
    vec = torch.tensor([[1.0, 0, 0, 1], [0, 0, 0, 0], [0, 1, 0, 0]])  # F + 60-70, nothing given, M alone
    # a short base prompt: the tiny tokenizer keeps 16 characters
    assert model.prompts.texts(vec, 3) == ["x of a female patient, age 60-70", "x", "x of a male patient"]
    states = model.encoder_states(torch.zeros(3, 4, 8, 8), vec)
    assert states.shape[0] == 3 and not torch.equal(states[0], states[1]) and not torch.equal(states[0], states[2])
    assert torch.equal(states[1], sd.prompt_context(folder, "x")[0])
    perturbed = _perturbed(tmp_path / "cn", tmp_path / "model")
    kw = ["--model", str(perturbed), "--masks", str(attr_data), "--steps", "2", "--cases", "case000",
          "--batch-size", "1", "--precision", "no"]
    outs = {}
    for name, extra in (("f", ["--attributes", "sex=F"]), ("m", ["--attributes", "sex=M"]), ("f2", ["--attributes",
                        "sex=F"]), ("none", [])):
        assert main(["generate", *kw, "--out", str(tmp_path / name), *extra]) == 0
        outs[name] = _image(tmp_path / name)
    assert np.array_equal(outs["f"], outs["f2"])
    assert np.abs(outs["f"] - outs["m"]).max() > 0, "the image does not depend on the attributes' prompt"
    assert np.abs(outs["f"] - outs["none"]).max() > 0
    assert main(["generate", *kw, "--out", str(tmp_path / "bad"), "--attributes", "sex=X"]) == 2


def test_attribute_dropout_drops_them_from_the_prompt(sd_run):
    _, _, folder = sd_run
    from maskray.diffusion.attributes import drop_attributes, encode

    vocab = {"sex": ("F", "M"), "age": ("20-30", "60-70")}
    prompts = sd.AttributePrompts(sd.PromptEncoder(folder), sd.DEFAULT_PROMPT, vocab)
    vec = encode([{"sex": "F", "age": "60-70"}] * 64, vocab)
    texts = prompts.texts(drop_attributes(vec, vocab, 0.3, torch.Generator().manual_seed(0)), 64)
    assert {"a chest radiograph of a female patient, age 60-70", "a chest radiograph of a female patient",
            "a chest radiograph, age 60-70", "a chest radiograph"} == set(texts)

