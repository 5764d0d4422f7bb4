"""benchmarks/gpu_smoke.sh's every line, run on the CPU at 32 px with a tiny random Stable Diffusion folder: each
stage trains, generates and is evaluated through --device, and results/gpu.json holds what the README quotes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_smoke_runs_every_step_on_the_cpu_and_writes_its_results(tmp_path):
    script = ROOT / "benchmarks" / "gpu_smoke.sh"
    assert os.access(script, os.X_OK)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}"
                                                          f"{os.environ.get('PATH', '')}"}
    work = tmp_path / "w"
    proc = subprocess.run(["bash", str(script), "--tiny", "--device", "cpu", "--work", str(work), "--results",
                           str(tmp_path)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "gpu.json").read_text())
    assert set(res["steps"]) == {"phantom", "train_autoencoder", "train_base", "train_controlnet", "generate",
                                 "evaluate", "train_sd_controlnet", "generate_sd"}
    assert res["device"].startswith("CPU") and res["cuda"] is None
    from maskray.distributed import cpu_has_fast_bf16

    # --precision auto on the CPU: bf16 where it is native, else fp32
    assert set(res["precision"].values()) == {"bf16" if cpu_has_fast_bf16() else "no"}
    for name in ("train_autoencoder", "train_base", "train_controlnet", "train_sd_controlnet"):
        assert res["steps"][name]["images_per_s"] > 0
    assert res["steps"]["generate"]["s_per_image"] > 0 and res["steps"]["generate_sd"]["s_per_image"] > 0
    assert res["total_wall_s"] >= sum(r["wall_s"] for r in res["steps"].values()) - 0.2
    # one image per test mask, each a picture (not a constant), from the 2-step models
    test = json.loads((work / "data" / "splits.json").read_text())["test"]
    gen = sorted((work / "gen" / "imagesTr").glob("*.png"))
    assert len(gen) == len(test) >= 1
    assert all(np.asarray(Image.open(p), dtype=np.float32).std() > 0 for p in gen)
    assert len(list((work / "sd_gen" / "imagesTr").glob("*.png"))) == 1


def test_gpu_smoke_refuses_a_used_work_folder(tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "x").write_text("kept")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_smoke.py"), "--tiny", "--work",
                           str(tmp_path / "w"), "--results", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode != 0 and "already holds files" in proc.stderr
    assert (tmp_path / "w" / "x").read_text() == "kept" and not (tmp_path / "gpu.json").exists()
