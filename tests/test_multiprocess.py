"""Several processes: ``accelerate launch --num_processes 2 -m maskray train|generate`` on the CPU (gloo backend).

Training runs, checkpoints and resumes to the weights of an uninterrupted two-process run; generation's shards
together equal a one-process run byte for byte, and a shard resumed after losing cases fills in exactly those.
Each launch starts two Python processes, so these tests take about half a minute each.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from maskray.pipelines.generate import GenerateConfig, generate
from maskray.pipelines.sharding import Shard
from maskray.training.trainer import TrainConfig, train

TINY = ["--image-size", "32", "--batch-size", "2", "--block-out-channels", "8,16", "--norm-num-groups", "4",
        "--validation-cases", "2", "--validation-sampler-steps", "2", "--precision", "no", "--checkpoint-every", "2"]
SRC = str(Path(__file__).resolve().parents[1] / "src")


def launch(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``accelerate launch`` two processes of ``python -m maskray ARGS`` (torchrun underneath; gloo on a CPU)."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1",
           "ACCELERATE_USE_CPU": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--multi_gpu", "--num_processes",
           "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           "0", "-m", "maskray", *args]
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_shards_deal_every_case_once():
    plan = list(range(11))
    shards = [Shard(r, 3).take(plan) for r in range(3)]
    assert sorted(sum(shards, [])) == plan
    assert shards[1] == [1, 4, 7, 10]


def _log(run: Path) -> list[dict]:
    with open(run / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_two_process_training_checkpoints_and_resumes(toy_dataset, tmp_path):
    launch("train", "base", "--data", str(toy_dataset), "--out", "full", *TINY, "--steps", "4", cwd=tmp_path)
    launch("train", "base", "--data", str(toy_dataset), "--out", "split", *TINY, "--steps", "4", "--stop-after", "2",
           cwd=tmp_path)
    assert (tmp_path / "split/checkpoints/step-2/trainer_state.json").is_file()
    assert not (tmp_path / "split/model").exists()
    launch("train", "base", "--data", str(toy_dataset), "--out", "split", *TINY, "--steps", "4", "--resume",
           cwd=tmp_path)
    weights = "model/unet/diffusion_pytorch_model.safetensors"
    assert (tmp_path / "full" / weights).read_bytes() == (tmp_path / "split" / weights).read_bytes()
    log = _log(tmp_path / "split")
    assert [r["step"] for r in log] == ["1", "2", "3", "4"]
    # two processes of batch 2 are 4 images per step, and the LR schedule runs at one process's pace
    # (accelerate steps a prepared schedule once per process): warm-up 50 steps to 2e-3 gives 4e-5 at step 1
    assert float(log[0]["lr"]) == pytest.approx(2e-3 / 50)


def test_two_process_generation_equals_one_process(toy_dataset, tmp_path):
    kw = dict(image_size=32, batch_size=2, block_out_channels=(8, 16), norm_num_groups=4, validation_cases=2,
              validation_sampler_steps=2, precision="no", data=str(toy_dataset), steps=2)
    train(TrainConfig(out=str(tmp_path / "base"), **kw), "base", progress=False)
    train(TrainConfig(out=str(tmp_path / "cn"), base=str(tmp_path / "base"), **kw), "controlnet", progress=False)
    gen = ["--model", str(tmp_path / "cn"), "--masks", str(toy_dataset), "--samples-per-mask", "2", "--steps", "3",
           "--batch-size", "4"]
    generate(GenerateConfig(model=gen[1], masks=gen[3], samples_per_mask=2, steps=3, batch_size=4,
                            out=str(tmp_path / "one")), progress=False)
    launch("generate", *gen, "--out", "two", cwd=tmp_path)
    one, two = tmp_path / "one", tmp_path / "two"

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}

    assert len(files(one)) == 2 * 2 * 6  # images and labels of 6 masks x 2 samples
    assert files(two) == files(one)
    assert (two / "manifest.json").read_bytes() == (one / "manifest.json").read_bytes()
    # lose one case of each shard and the records; a two-process resume redraws exactly those
    lost = sorted((two / "imagesTr").glob("*.png"))[:2]
    for p in lost:
        p.unlink()
    (two / "manifest.json").unlink()
    launch("generate", *gen, "--out", "two", "--resume", cwd=tmp_path)
    assert files(two) == files(one)
    assert (two / "manifest.json").is_file()


def test_two_process_latent_training_encodes_one_cache(toy_dataset, tmp_path):
    import torch
    from safetensors.torch import load_file

    from maskray.data.dataset import Dataset
    from maskray.diffusion.autoencoder import AutoencoderConfig, LatentCodec
    from maskray.training.data import load_arrays
    from maskray.training.latent_cache import images_hash

    torch.manual_seed(0)
    codec = LatentCodec.new(AutoencoderConfig(factor=4, latent_channels=2, block_out_channels=(8, 16),
                                              norm_num_groups=4))
    codec.measure_scaling_factor(torch.rand(4, 1, 32, 32) * 2 - 1)
    codec.save(tmp_path / "ae")
    launch("train", "base", "--data", str(toy_dataset), "--out", "lat", "--autoencoder", str(tmp_path / "ae"), *TINY,
           "--steps", "2", cwd=tmp_path)
    cache = sorted((tmp_path / "lat/cache").iterdir())
    arrays = load_arrays(Dataset(toy_dataset), 32, TrainConfig.split, need_labels=False, progress=False)
    assert [p.name for p in cache] == [f"latents-{images_hash(arrays)[:16]}.safetensors"]  # no stray temp file
    with torch.no_grad():
        expected = codec.encode(arrays.pixels(torch.arange(len(arrays))))
    assert torch.allclose(load_file(str(cache[0]))["latents"], expected, atol=1e-5)
