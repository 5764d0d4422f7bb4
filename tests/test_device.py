"""The device path: ``--device`` on every command, precision per device, and the fp16 (gradient-scaler) lines a
GPU without bf16 runs, exercised here on the CPU."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from maskray import distributed
from maskray.cli import build_parser, main
from maskray.errors import MaskrayError


@pytest.fixture
def fresh_choice(monkeypatch):
    """Each test chooses its own device; the process's choice and accelerate's CPU flag are restored after."""
    monkeypatch.setitem(distributed._chosen, "device", "auto")
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)


def _leaves(parser: argparse.ArgumentParser, path=()):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for action in subs:
        for name, child in action.choices.items():
            yield from _leaves(child, (*path, name))


def test_every_command_takes_device_once_defaulting_to_auto():
    leaves = list(_leaves(build_parser()))
    assert len(leaves) >= 15  # phantom, data *, train *, generate, masks, export, evaluate, downstream, demo, serve
    for path, parser in leaves:
        opts = [a for a in parser._actions if "--device" in a.option_strings]
        assert len(opts) == 1 and opts[0].default == "auto", path


@pytest.mark.parametrize("name, problem", [("tpu", "not a device"), ("cpu:1", "not a device"),
                                           ("cuda:x", "not a device")])
def test_a_device_that_is_not_one_is_a_one_line_error(fresh_choice, name, problem):
    with pytest.raises(MaskrayError, match=problem):
        distributed.choose_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_a_gpu_that_is_not_there_names_the_torch_build(fresh_choice, tmp_path, capsys):
    assert main(["phantom", "--out", str(tmp_path / "p"), "--n", "2", "--image-size", "32", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("maskray: error: --device cuda: no CUDA GPU is visible") and "\n" not in err
    assert not (tmp_path / "p").exists()  # refused before anything is written


def test_cpu_choice_is_the_cpu(fresh_choice):
    distributed.choose_device("cpu")
    assert distributed.device() == torch.device("cpu")


def test_precision_auto_per_device(monkeypatch):
    monkeypatch.setattr(distributed, "cpu_has_fast_bf16", lambda: True)  # AVX-512 / AMX, Arm BF16
    assert distributed.resolve_precision("auto", torch.device("cpu")) == "bf16"
    assert distributed.bf16_autocast_pays(torch.device("cpu"))
    monkeypatch.setattr(distributed, "cpu_has_fast_bf16", lambda: False)  # AVX2 only: bf16 emulated, ~40x slower
    assert distributed.resolve_precision("auto", torch.device("cpu")) == "no"
    assert not distributed.bf16_autocast_pays(torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert distributed.bf16_autocast_pays(torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # a T4: the segmenter runs fp32
    assert not distributed.bf16_autocast_pays(torch.device("cuda"))
    assert distributed.resolve_precision("bf16", torch.device("cpu")) == "bf16"  # an explicit choice is kept
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert distributed.resolve_precision("auto", torch.device("cuda")) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # e.g. a T4 or V100
    assert distributed.resolve_precision("auto", torch.device("cuda")) == "fp16"
    assert distributed.resolve_precision("auto", torch.device("mps")) == "no"
    assert distributed.resolve_precision("no", torch.device("cuda")) == "no"  # an explicit choice is kept
    assert distributed.autocast_dtype("fp16") == torch.float16 and distributed.autocast_dtype("no") is None


def test_autoencoder_trains_in_fp16_through_the_gradient_scaler(tmp_path, monkeypatch):
    """The fp16 path of a GPU without bf16, on the CPU: finite losses, a saved autoencoder, fp16 recorded."""
    data = tmp_path / "ph"
    assert main(["phantom", "--out", str(data), "--n", "8", "--image-size", "32", "--seed", "0"]) == 0
    scaled = []
    real_scale = torch.amp.GradScaler.scale
    monkeypatch.setattr(torch.amp.GradScaler, "scale",
                        lambda self, loss: scaled.append(self.is_enabled()) or real_scale(self, loss))
    run = tmp_path / "ae"
    assert main(["train", "autoencoder", "--data", str(data), "--out", str(run), "--image-size", "32",
                 "--crop-size", "16", "--block-out-channels", "8,16", "--batch-size", "2", "--steps", "4", "--perceptual-weight", "0",
                 "--adversarial-weight", "0.5", "--feature-matching-weight", "0", "--disc-start", "2",
                 "--eval-cases", "2", "--scale-cases", "4", "--precision", "fp16", "--device", "cpu"]) == 0
    assert scaled and all(scaled)  # every update went through an enabled scaler (generator and discriminator)
    assert len(scaled) > 4
    info = json.loads((run / "run.json").read_text())
    assert info["config"]["precision"] == "fp16"
    rows = (run / "log.csv").read_text().splitlines()[1:]
    assert len(rows) == 4 and all("nan" not in r for r in rows)
    assert (run / "autoencoder").is_dir()


def test_auto_precision_is_recorded_resolved(tmp_path):
    data = tmp_path / "ph"
    assert main(["phantom", "--out", str(data), "--n", "8", "--image-size", "32", "--seed", "0"]) == 0
    run = tmp_path / "ae"
    assert main(["train", "autoencoder", "--data", str(data), "--out", str(run), "--image-size", "32",
                 "--crop-size", "16", "--block-out-channels", "8,16", "--batch-size", "2", "--steps", "1", "--perceptual-weight", "0",
                 "--adversarial-weight", "0", "--feature-matching-weight", "0", "--eval-cases", "2",
                 "--scale-cases", "4"]) == 0
    # auto on the CPU: bf16 where it computes bf16 natively, else fp32
    expected = "bf16" if distributed.cpu_has_fast_bf16() else "no"
    assert json.loads((run / "run.json").read_text())["config"]["precision"] == expected


def test_segmenter_bf16_runs_in_fp32_where_the_cpu_emulates_bf16(monkeypatch):
    """SegmenterConfig.bf16 asks for bf16 autocast only where it pays: on a CPU without native bf16 the network
    trains and predicts exactly as in fp32; where it pays, autocast is on and the numbers differ."""
    from maskray.measures.segmenter import Segmenter, SegmenterConfig

    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 32, 32, generator=g) * 2 - 1
    y = (x[:, 0] > 0.3).long()
    cfg = SegmenterConfig(features=(4, 4, 8, 8, 8, 4), steps=2, batch_size=2, channels_last=False)

    def probs(bf16: bool) -> torch.Tensor:
        import dataclasses
        return Segmenter.train(x, y, [0, 1], dataclasses.replace(cfg, bf16=bf16)).probabilities(x)

    monkeypatch.setattr(distributed, "cpu_has_fast_bf16", lambda: False)
    assert torch.equal(probs(True), probs(False))
    monkeypatch.setattr(distributed, "cpu_has_fast_bf16", lambda: True)
    assert not torch.equal(probs(True), probs(False))


def test_the_bf16_peak_is_taken_small_where_bf16_is_emulated(monkeypatch):
    """maskray.hardware.measure_peaks: a 2048 bf16 product takes ~19 s on an AVX2-only CPU, so there the bf16
    peak is measured on a 512 side, and the record says which side and whether bf16 is native."""
    from maskray import hardware

    sides = []
    monkeypatch.setattr(hardware, "matmul_peak_gflops", lambda dtype, n, repeats: sides.append((dtype, n)) or 1.0)
    monkeypatch.setattr(hardware, "cpu_has_fast_bf16", lambda: False)
    rec = hardware.measure_peaks()
    assert sides == [(torch.float32, 2048), (torch.bfloat16, 512)]
    assert (rec["matrix_side"], rec["bf16_matrix_side"], rec["native_bf16"]) == (2048, 512, False)
    sides.clear()
    monkeypatch.setattr(hardware, "cpu_has_fast_bf16", lambda: True)
    assert hardware.measure_peaks()["bf16_matrix_side"] == 2048 and sides[1] == (torch.bfloat16, 2048)
