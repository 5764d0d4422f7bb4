"""How fast does maskray *learn* on this CPU? Trains both stages on the phantom with one set of levers,
generates for the held-out masks and scores them against the real images and against shuffled masks.

    python benchmarks/bench_learning.py --name baseline --base-steps 600 --cn-steps 600 [--set key=value ...]

Prints the figures and appends them to benchmarks/results/learning.jsonl.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from maskray.data.dataset import Dataset
from maskray.data.phantom import PhantomConfig, make_phantom
from maskray.evaluation.adherence import lung_darker
from maskray.evaluation.scores import mean_image_baseline
from maskray.hardware import measure_peaks
from maskray.measures.image import psnr, ssim
from maskray.pipelines.generate import GenerateConfig, generate
from maskray.training.trainer import TrainConfig, train


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--name", required=True)
    p.add_argument("--work", default="bench_out/learning")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--cases", type=int, default=400)
    p.add_argument("--base-steps", type=int, default=600)
    p.add_argument("--cn-steps", type=int, default=600)
    p.add_argument("--base-from", default=None, help="reuse this stage-1 run")
    p.add_argument("--set", nargs="*", default=[], help="TrainConfig overrides for both stages, key=value")
    p.add_argument("--set-cn", nargs="*", default=[], help="overrides for stage 2 only")
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--sampler-steps", type=int, default=25)
    a = p.parse_args()
    work = Path(a.work)
    data = work / f"phantom{a.size}"
    if not (data / "dataset.json").exists():
        make_phantom(PhantomConfig(out=data, n=a.cases, image_size=a.size, seed=0, workers=2))

    def overrides(pairs):
        out = {}
        for kv in pairs:
            k, v = kv.split("=", 1)
            out[k] = v
        return out

    from maskray.config import build
    common = dict(data=str(data), image_size=a.size, overwrite=True)
    t0 = time.time()
    if a.base_from:
        base = Path(a.base_from)
        t_base = 0.0
    else:
        base = work / f"{a.name}-base"
        cfg = build(TrainConfig, {**common, "out": str(base), "steps": a.base_steps}, overrides(a.set))
        train(cfg, "base")
        t_base = time.time() - t0
    t1 = time.time()
    cn = work / f"{a.name}-cn"
    cfg2 = build(TrainConfig, {**common, "out": str(cn), "base": str(base), "steps": a.cn_steps},
                 {**overrides(a.set), **overrides(a.set_cn)})
    train(cfg2, "controlnet")
    t_cn = time.time() - t1
    t2 = time.time()
    gen = work / f"{a.name}-gen"
    generate(GenerateConfig(model=str(cn), masks=str(data), out=str(gen), split="test", overwrite=True,
                            steps=a.sampler_steps, guidance_scale=a.guidance))
    t_gen = time.time() - t2
    real, syn = Dataset(data), Dataset(gen)
    ids = real.case_ids("test")
    x = torch.stack([real.image(c) for c in ids])  # [-1, 1], as maskray.measures expects
    y = torch.stack([real.label(c) for c in ids])
    g = torch.stack([syn.image(c) for c in ids]).clamp(-1, 1)
    # the mean-image baseline knows only the training images (never the test images it is scored against)
    mean_train = mean_image_baseline(torch.stack([real.image(c) for c in real.case_ids("train")]))
    perm = torch.roll(torch.arange(len(ids)), 1)
    labels = real.labels
    ld = lung_darker(g, y, labels["lung"], labels.get("heart"))
    res = {
        "name": a.name, "argv": sys.argv[1:], "size": a.size, "base_steps": a.base_steps, "cn_steps": a.cn_steps,
        "t_base_s": round(t_base, 1), "t_cn_s": round(t_cn, 1), "t_gen_s": round(t_gen, 1),
        "psnr": float(psnr(g, x).mean()), "ssim": float(ssim(g, x).mean()),
        "psnr_shuffled": float(psnr(g, x[perm]).mean()), "ssim_shuffled": float(ssim(g, x[perm]).mean()),
        "ssim_mean_training_image": float(ssim(mean_train.expand_as(x), x).mean()),
        "lung_darker": float(ld["ok"].float().mean()),
        "threads": torch.get_num_threads(), "hardware": measure_peaks(),
    }
    print(json.dumps(res, indent=1))
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    with open(out / "learning.jsonl", "a") as f:
        f.write(json.dumps(res) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
