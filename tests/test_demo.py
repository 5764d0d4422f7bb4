"""``maskray demo``: an end-to-end smoke test of the real CLI with a tiny budget, and a check that the demo's
headline (true-mask vs shuffled-mask margin) tells a model that follows its masks from one that outputs noise."""

import json
from pathlib import Path

import numpy as np
import pytest

import maskray.demo as demo
from maskray.cli import main
from maskray.data.dataset import Dataset, write_case
from maskray.data.schema import write_dataset_info

TINY = ["--image-size", "32", "--cases", "30", "--base-steps", "3", "--controlnet-steps", "3", "--batch-size", "4",
        "--sampler-steps", "2", "--eval-steps", "3", "--feature-steps", "3"]


def test_demo_smoke(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), *TINY])
    assert rc == 0
    assert "report:" in capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    s = m["scores"]
    assert set(s) >= {"generated (true mask)", "generated vs other case (shuffled mask)", "mean training image",
                      "per-label mean painted into mask", "real image of another case"}
    assert m["test_cases"] == len(list((out / "generated" / "imagesTr").glob("*.png"))) > 0
    assert 0 <= s["generated (true mask)"]["ssim"]["mean"] <= 1
    # the demo's numbers are evaluate's numbers: one scoring path
    ev = json.loads((out / "evaluation" / "metrics.json").read_text())
    assert s["generated (true mask)"]["ssim"] == ev["fidelity"]["synthetic"]["ssim"]
    assert m["ssim_true_minus_shuffled"] == ev["fidelity"]["ssim_true_minus_shuffled"]
    # timings and the machine's measured peak, so the times can be scaled
    assert set(m["times_s"]) == {"phantom_s", "train_base_s", "train_controlnet_s", "generate_s", "evaluate_s"}
    assert m["hardware"]["bf16_gflops"] > 0 and m["hardware"]["fp32_gflops"] > 0
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and "shuffled" in page
    for f in ("run.json", "evaluation/grid.png", "controlnet/validation/strip.png", "evaluation/report.html"):
        assert (out / f).is_file(), f
    # a second run into the same folder is refused with one line
    assert main(["demo", "--out", str(out)]) == 2
    assert "already holds files" in capsys.readouterr().err


def _fake_generator(kind: str):
    """Stand-ins for training and generation: 'follows' writes each test mask's real image plus a little noise
    (a model that follows its masks), 'noise' writes pure noise (a model that learned nothing)."""

    def generate(cfg, progress=True):
        real = Dataset(cfg.masks)
        rng = np.random.default_rng(0)
        manifest = {}
        for cid in real.case_ids("test"):
            img = (real.image(cid)[0].numpy() + 1) / 2
            pic = img + 0.03 * rng.standard_normal(img.shape) if kind == "follows" else rng.random(img.shape)
            write_case(cfg.out, f"syn_{cid}", np.clip(pic, 0, 1), real.label(cid).numpy())
            manifest[f"syn_{cid}"] = {"source_case": cid, "seed": 0, "sample": 0}
        write_dataset_info(cfg.out, real.info, len(manifest))
        (Path(cfg.out) / "manifest.json").write_text(json.dumps(manifest))
        return Path(cfg.out)

    return generate


def assert_margin_clear(m: dict) -> None:
    """What the README's demo claims: the true mask explains the image clearly better than another mask."""
    mg = m["ssim_true_minus_shuffled"]
    assert mg["clear"] and mg["mean"] > 0.02 and mg["mean"] > 3 * mg["standard_error"], mg


@pytest.mark.parametrize("kind", ["follows", "noise"])
def test_demo_margin_tells_a_model_from_noise(tmp_path, monkeypatch, kind):
    monkeypatch.setattr(demo, "train", lambda cfg, stage, progress=True: None)
    monkeypatch.setattr(demo, "generate", _fake_generator(kind))
    m = demo.run_demo(demo.DemoConfig(out=str(tmp_path / "d"), image_size=32, cases=60, eval_steps=3, feature_steps=3),
                      progress=False)
    if kind == "follows":
        assert_margin_clear(m)
    else:  # a demo whose model outputs noise fails the same assertion
        with pytest.raises(AssertionError):
            assert_margin_clear(m)


def test_latent_demo_smoke(tmp_path):
    """``--latent``: an autoencoder first, both stages on its latents, images decoded at full size."""
    out = tmp_path / "latent"
    assert main(["demo", "--out", str(out), "--latent", "--autoencoder-steps", "2", *TINY]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["times_s"]) >= {"train_autoencoder_s", "train_base_s"}
    card = json.loads((out / "controlnet" / "model" / "maskray.json").read_text())
    assert card["latent"]["factor"] == 4 and card["image_size"] == 32
    imgs = sorted((out / "generated" / "imagesTr").glob("*.png"))
    assert imgs and np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(imgs[0])).shape == (32, 32)
