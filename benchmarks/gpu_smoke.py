"""The GPU smoke run: every stage a few hundred steps on a GPU, then generate and evaluate; one results file.

    bash benchmarks/gpu_smoke.sh                    # on the GPU machine: results/gpu.json, under 8 minutes
    python benchmarks/gpu_smoke.py --tiny --device cpu --results DIR   # the same lines at 32 px (tests/test_gpu_smoke.py)

Steps, each through ``maskray``'s own command line in this process (so that peak GPU memory is read per step):
a 256 px phantom; the autoencoder, stage 1 and stage 2 on its latents (``--steps`` each); ``generate`` for the
test masks; ``evaluate``; then one Stable Diffusion ControlNet training step at 512 px on a random SD folder of
SD 1.5's shapes (benchmarks/random_sd.py; nothing is downloaded) and one 512 px image from it. Writes
results/gpu.json: per step wall seconds, images/s (training) or s/image (generating), peak GPU memory, the
device name, torch and CUDA versions, and the precision each run resolved to.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from random_sd import make_sd_folder
from results_file import RESULTS, write_results

FULL = dict(size=256, n=96, steps=300, batch=8, gen_steps=20, eval_steps=200, sd_size=512, sd_shapes="sd15")
TINY = dict(size=32, n=12, steps=2, batch=2, gen_steps=2, eval_steps=2, sd_size=32, sd_shapes="tiny")
NETS = {256: ["--block-out-channels", "64,128,256"], 32: ["--block-out-channels", "8,16", "--norm-num-groups", "4"]}
AE_NETS = {256: [], 32: ["--block-out-channels", "8,16", "--crop-size", "16", "--feature-steps", "2",
                         "--scale-cases", "4", "--eval-cases", "2"]}


def device_name(device: str) -> str:
    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return torch.cuda.get_device_name()
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


class Steps:
    """Runs ``maskray ARGV`` in this process and records its wall time and peak GPU memory."""

    def __init__(self, device: str):
        self.device, self.rows = device, {}

    def __call__(self, name: str, *argv: str, images: int | None = None, per_image: bool = False) -> dict:
        from maskray.cli import main

        cuda = torch.cuda.is_available() and self.device != "cpu"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        print(f"--- {name}: maskray {' '.join(argv)}", flush=True)
        t = time.perf_counter()
        rc = main([*argv, "--device", self.device])
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - t
        if rc != 0:
            raise SystemExit(f"gpu_smoke: step '{name}' failed (exit {rc})")
        row = {"wall_s": round(wall, 2), "peak_gpu_memory_gib":
               round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None}
        if images:
            row["s_per_image" if per_image else "images_per_s"] = round(wall / images if per_image
                                                                       else images / wall, 3)
        self.rows[name] = row
        return row


def run(work: Path, device: str, p: dict) -> dict:
    step = Steps(device)
    data, ae, base, cn = work / "data", work / "ae", work / "base", work / "cn"
    size, steps, batch = str(p["size"]), str(p["steps"]), str(p["batch"])
    once = ["--validate-every", steps, "--validation-cases", "2", "--validation-sampler-steps", "4"]
    step("phantom", "phantom", "--out", str(data), "--n", str(p["n"]), "--image-size", size, "--seed", "0")
    step("train_autoencoder", "train", "autoencoder", "--data", str(data), "--out", str(ae), "--image-size", size,
         "--steps", steps, "--batch-size", batch, *AE_NETS[p["size"]], images=p["steps"] * p["batch"])
    step("train_base", "train", "base", "--data", str(data), "--out", str(base), "--autoencoder", str(ae),
         "--image-size", size, "--steps", steps, "--batch-size", batch, *NETS[p["size"]], *once,
         images=p["steps"] * p["batch"])
    step("train_controlnet", "train", "controlnet", "--data", str(data), "--out", str(cn), "--base", str(base),
         "--image-size", size, "--steps", steps, "--batch-size", batch, *once, images=p["steps"] * p["batch"])
    test = json.loads((data / "splits.json").read_text())["test"]
    n_test = len(test)
    step("generate", "generate", "--model", str(cn), "--masks", str(data), "--split", "test", "--out",
         str(work / "gen"), "--steps", str(p["gen_steps"]), "--batch-size", batch, images=n_test, per_image=True)
    e = str(p["eval_steps"])
    step("evaluate", "evaluate", "--real", str(data), "--synthetic", str(work / "gen"), "--out", str(work / "eval"),
         "--seg-steps", e, "--reg-steps", e, "--feature-steps", e)
    sd = make_sd_folder(work / "sd", p["sd_shapes"])
    step("train_sd_controlnet", "train", "controlnet", "--pretrained", str(sd), "--data", str(data), "--out",
         str(work / "sd_cn"), "--image-size", str(p["sd_size"]), "--steps", "1", "--batch-size", "1",
         "--validate-every", "1", "--validation-cases", "1", "--validation-sampler-steps", "2", images=1)
    step("generate_sd", "generate", "--model", str(work / "sd_cn"), "--masks", str(data), "--split", "test",
         "--cases", test[0], "--out", str(work / "sd_gen"), "--steps", "4", images=1, per_image=True)
    precision = {k: json.loads((work / k / "run.json").read_text())["config"].get("precision")
                 for k in ("ae", "base", "cn", "gen", "sd_cn")}
    metrics = json.loads((work / "eval" / "metrics.json").read_text())
    return {"device": device_name(device), "torch": torch.__version__, "cuda": torch.version.cuda,
            "image_size": p["size"], "train_steps": p["steps"], "batch_size": p["batch"],
            "sd_shapes": p["sd_shapes"], "sd_image_size": p["sd_size"], "precision": precision, "steps": step.rows,
            "total_wall_s": round(sum(r["wall_s"] for r in step.rows.values()), 1),
            "evaluate": {k: metrics.get(k) for k in ("adherence", "realism") if k in metrics}}


def main() -> None:
    a = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    a.add_argument("--work", default="bench_out/gpu_smoke", help="a new folder for the runs")
    a.add_argument("--device", default="auto")
    a.add_argument("--tiny", action="store_true", help="32 px, 2 steps, tiny SD shapes: the test's run")
    a.add_argument("--results", default=str(RESULTS), help="folder of gpu.json")
    a.add_argument("--name", default="gpu")
    args = a.parse_args()
    work = Path(args.work)
    if work.exists() and any(work.iterdir()):
        raise SystemExit(f"gpu_smoke: {work} already holds files; give a new --work")
    res = run(work, args.device, TINY if args.tiny else FULL)
    res["command"] = "bash benchmarks/gpu_smoke.sh" + (" (--tiny)" if args.tiny else "")
    write_results(args.name, res, Path(args.results))
    for name, row in res["steps"].items():
        print(f"{name:>26}: {row}")


if __name__ == "__main__":
    main()
