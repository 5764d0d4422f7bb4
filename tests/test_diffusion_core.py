"""The diffusion core's promises: a checkpoint is a usable model, nothing executes on load, model cards are
checked, the default precision is byte-exact per case, and the training log survives a resume."""

import json
import pickle
import shutil

import numpy as np
import pytest
import torch

from maskray.cli import main
from maskray.diffusion.card import ModelCard
from maskray.diffusion.store import load_model
from maskray.distributed import resolve_precision
from maskray.errors import MaskrayError
from maskray.pipelines.generate import GenerateConfig, generate
from maskray.training.config import TrainConfig
from maskray.training.trainer import train

TINY = dict(image_size=32, batch_size=4, block_out_channels=(8, 16), norm_num_groups=4, validation_cases=2,
            validation_sampler_steps=2, precision="no", checkpoint_every=2, keep_checkpoints=5)


@pytest.fixture(scope="module")
def two_stage(tmp_path_factory):
    from conftest import make_toy_dataset

    root = tmp_path_factory.mktemp("core")
    data = make_toy_dataset(root / "toy")
    train(TrainConfig(data=str(data), out=str(root / "base"), steps=2, **TINY), "base", progress=False)
    train(TrainConfig(data=str(data), out=str(root / "cn"), base=str(root / "base"), steps=4, **TINY), "controlnet",
          progress=False)
    return root, data


def test_generate_from_a_mid_run_checkpoint(two_stage, tmp_path):
    root, data = two_stage
    ckpt = root / "cn" / "checkpoints" / "step-2"
    assert (ckpt / "model" / "maskray.json").is_file()
    card = ModelCard.load(ckpt / "model")
    assert card.step == 2 and card.stage == "controlnet"
    out = generate(GenerateConfig(model=str(ckpt), masks=str(data), out=str(tmp_path / "g"), steps=2,
                                  precision="no"), progress=False)
    assert len(list((out / "imagesTr").glob("*.png"))) == 6
    # the mid-run weights are not the final ones
    mid, _ = load_model(ckpt)
    final, _ = load_model(root / "cn")
    assert any(not torch.equal(a, b) for a, b in zip(mid.controlnet.state_dict().values(),
                                                     final.controlnet.state_dict().values()))


class _Planted:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_resume_never_unpickles_a_planted_file(two_stage, tmp_path, capsys):
    root, data = two_stage
    run = tmp_path / "run"
    shutil.copytree(root / "cn", run)
    ckpt = run / "checkpoints" / "step-4"
    marker = tmp_path / "pwned"
    torch.save({"optimizer": _Planted(str(marker))}, ckpt / "optimizer.pt")
    argv = ["train", "controlnet", "--data", str(data), "--base", str(root / "base"), "--out", str(run),
            "--image-size", "32", "--steps", "6", "--batch-size", "4", "--block-out-channels", "8,16",
            "--norm-num-groups", "4", "--precision", "no", "--resume"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "optimizer.pt" in err and "maskray: error" in err
    assert not marker.exists()
    # a stray pickle beside the tensors is refused too
    (ckpt / "optimizer.pt").unlink()
    shutil.copy(root / "cn" / "checkpoints" / "step-4" / "optimizer.pt", ckpt / "optimizer.pt")
    (ckpt / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(_Planted(str(marker))))
    assert main(argv) == 2
    assert "custom_checkpoint_0.pkl" in capsys.readouterr().err and not marker.exists()
    assert not (run / "checkpoints" / "step-6").exists()


def _break(card: dict, how: str):
    if how == "missing":
        del card["labels"]
    elif how == "unknown":
        card["surprise"] = 1
    elif how == "size_str":
        card["image_size"] = "32"
    elif how == "size_float":
        card["image_size"] = 32.5
    elif how == "labels_type":
        card["labels"] = ["lung"]
    elif how == "version":
        card["format_version"] = 99
    return card


@pytest.mark.parametrize("how", ["missing", "unknown", "size_str", "size_float", "labels_type", "version", "corrupt",
                                 "pickle_weights", "wrong_network", "not_object"])
def test_malformed_model_folders_give_one_line_errors(two_stage, tmp_path, capsys, how):
    root, data = two_stage
    run = tmp_path / "cn"
    shutil.copytree(root / "cn", run)
    card_path = run / "model" / "maskray.json"
    if how == "corrupt":
        card_path.write_text('{"stage": "controlnet", ')
    elif how == "not_object":
        card_path.write_text("[1, 2]")
    elif how == "pickle_weights":
        (run / "model" / "controlnet" / "diffusion_pytorch_model.bin").write_bytes(b"not really")
    elif how == "wrong_network":
        for f in (run / "model" / "controlnet").glob("*.safetensors"):
            shutil.copy(next((run / "model" / "unet").glob("*.safetensors")), f)
    else:
        card_path.write_text(json.dumps(_break(json.loads(card_path.read_text()), how)))
    out = tmp_path / "gen"
    assert main(["generate", "--model", str(run), "--masks", str(data), "--out", str(out), "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and str(run) in err, err
    assert not out.exists()  # nothing left behind, so a corrected rerun is not refused


def _images(folder):
    return {p.name: p.read_bytes() for p in sorted((folder / "imagesTr").glob("*.png"))}


def test_default_precision_is_byte_exact_per_case(two_stage, tmp_path):
    """The defaults (precision auto: bf16 on a CPU with native bf16, else fp32; channels_last): a case's bytes do
    not depend on which cases share its batch, so --cases X and a resumed run reproduce an uninterrupted one."""
    root, data = two_stage
    kw = dict(model=str(root / "cn"), masks=str(data), steps=3, batch_size=4)
    assert GenerateConfig().precision == "auto" and GenerateConfig().channels_last
    from maskray.distributed import cpu_has_fast_bf16

    assert resolve_precision("auto", torch.device("cpu")) == ("bf16" if cpu_has_fast_bf16() else "no")
    full = _images(generate(GenerateConfig(out=str(tmp_path / "full"), **kw), progress=False))
    one = _images(generate(GenerateConfig(out=str(tmp_path / "one"), cases=("case005",), **kw), progress=False))
    assert one["case005_0000.png"] == full["case005_0000.png"]
    part = tmp_path / "part"
    generate(GenerateConfig(out=str(part), **kw), progress=False)
    for name in ("case001_0000.png", "case004_0000.png", "case005_0000.png"):
        (part / "imagesTr" / name).unlink()  # as if killed before these were written
    assert _images(generate(GenerateConfig(out=str(part), resume=True, **kw), progress=False)) == full
    with pytest.raises(MaskrayError, match="batch_size"):
        generate(GenerateConfig(out=str(part), resume=True, **{**kw, "batch_size": 2}), progress=False)
    # a run recorded before a setting existed resumes as if it had the setting's default ...
    record = part / "generate_config.json"
    old = json.loads(record.read_text())
    del old["lesion_guidance"]
    record.write_text(json.dumps(old))
    (part / "imagesTr" / "case004_0000.png").unlink()
    assert _images(generate(GenerateConfig(out=str(part), resume=True, **kw), progress=False)) == full
    # ... and is refused when the new run sets it otherwise
    record.write_text(json.dumps(old))
    with pytest.raises(MaskrayError, match="lesion_guidance"):
        generate(GenerateConfig(out=str(part), resume=True, lesion_guidance=1.0, **kw), progress=False)


def test_log_is_cut_back_to_the_resumed_step(two_stage, tmp_path):
    root, data = two_stage
    run = tmp_path / "run"
    cfg = dict(data=str(data), out=str(run), steps=4, **TINY)
    train(TrainConfig(stop_after=2, **cfg), "base", progress=False)
    with open(run / "log.csv", "a") as f:  # rows a killed run wrote after its last checkpoint
        f.write("3,0.5,1e-3,1.0,1.0\n")
    train(TrainConfig(resume=True, **cfg), "base", progress=False)
    rows = (run / "log.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss") and [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4"]
    assert np.isfinite([float(r.split(",")[1]) for r in rows[1:]]).all()


def test_snr_shift_divides_every_steps_snr_and_every_sampler_shares_it():
    from maskray.diffusion.objective import DiffusionConfig, make_train_scheduler
    from maskray.diffusion.sampling import SCHEDULERS, make_scheduler

    plain = make_train_scheduler(DiffusionConfig()).alphas_cumprod.double()
    sched = make_train_scheduler(DiffusionConfig(snr_shift=2.0))
    shifted = sched.alphas_cumprod.double()
    ratio = (shifted / (1 - shifted)) / (plain / (1 - plain))
    assert torch.allclose(ratio, torch.full_like(ratio, 0.25), rtol=1e-3)
    for name in SCHEDULERS:  # built from the card's config, as generate does
        assert torch.allclose(make_scheduler(name, dict(sched.config)).alphas_cumprod, sched.alphas_cumprod)


def test_stage_two_takes_its_bases_snr_shift(tmp_path):
    from conftest import make_toy_dataset

    assert TrainConfig().diffusion_config().snr_shift == 1.0  # pixel models: the plain schedule
    data = make_toy_dataset(tmp_path / "toy", n=4)
    train(TrainConfig(data=str(data), out=str(tmp_path / "base"), steps=1, snr_shift=2.0, **TINY), "base",
          progress=False)
    base_card = ModelCard.load(tmp_path / "base" / "model")
    assert base_card.diffusion["snr_shift"] == 2.0 and len(base_card.scheduler_config["trained_betas"]) == 1000
    train(TrainConfig(data=str(data), out=str(tmp_path / "cn"), base=str(tmp_path / "base"), steps=1, **TINY),
          "controlnet", progress=False)
    cn_card = ModelCard.load(tmp_path / "cn" / "model")
    assert cn_card.diffusion["snr_shift"] == 2.0
    assert cn_card.scheduler_config["trained_betas"] == base_card.scheduler_config["trained_betas"]
    with pytest.raises(MaskrayError, match="--snr-shift 3.0: stage 2 takes its base's"):
        train(TrainConfig(data=str(data), out=str(tmp_path / "cn3"), base=str(tmp_path / "base"), steps=1,
                          snr_shift=3.0, **TINY), "controlnet", progress=False)
    assert not (tmp_path / "cn3" / "model").exists()
