"""Stage 1 alone on 256 px latents: does the unconditional model learn where a chest's parts go?

    python benchmarks/bench_stage1_layout.py --data DS256 --autoencoder AE --feature-net FN --steps 400 \
        --variant plain:--snr-shift=1 --variant shift4:--snr-shift=4 --variant attention16:--attention-levels=2

Each variant trains `maskray train base --autoencoder AE` for the same steps (its own process; CPU seconds
recorded), samples ``--samples`` images without any condition (DDPM, 25 steps; the same noise for every variant),
decodes them, and scores them against the real training split in the embedding of evaluate's self-supervised
feature network (``maskray evaluate`` writes one under EVAL/feature_net): FID, precision and recall, beside the
real-test-vs-real-train floor. Precision is the share of generated images that land among real ones, which a
model without a chest's layout fails. Writes benchmarks/results/stage1_layout.json (or --name) (no case ids), a strip of
samples per variant under --work and WORK/variants.png, one row per variant at half size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from results_file import write_results  # same directory
from maskray.data.dataset import Dataset
from maskray.diffusion.sampling import make_scheduler, sample
from maskray.diffusion.store import load_codec, load_model
from maskray.evaluation.pairs import load_images
from maskray.evaluation.realism import realism
from maskray.hardware import measure_peaks
from maskray.measures.features import FeatureNet
from maskray.provenance import versions


def train_variant(a, name: str, flags: list[str], env: dict) -> dict:
    out = Path(a.work) / name
    argv = [sys.executable, "-m", "maskray", "train", "base", "--data", a.data, "--out", str(out), "--image-size",
            str(a.size), "--autoencoder", a.autoencoder, "--steps", str(a.steps), "--validate-every", str(a.steps),
            "--seed", str(a.seed), "--overwrite", *flags]
    if not (a.reuse and (out / "model" / "maskray.json").is_file()):
        print(f"--- {name}: {' '.join(argv[2:])}", flush=True)
        before, t = resource.getrusage(resource.RUSAGE_CHILDREN), time.time()
        subprocess.run(argv, check=True, env=env)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cost = {"cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1),
                "wall_s": round(time.time() - t, 1)}
        (out / "bench_cost.json").write_text(json.dumps(cost))  # kept for a later --reuse
    else:
        recorded = out / "bench_cost.json"
        cost = {**(json.loads(recorded.read_text()) if recorded.is_file() else {}), "reused": True}
    return {"flags": flags, "run": out, **cost}


@torch.no_grad()
def unconditional(run: Path, n: int, seed: int) -> torch.Tensor:
    """``n`` decoded samples in ``[-1, 1]``, ``(n, 1, H, W)``; sample ``i`` draws its noise from ``seed + i``."""
    model, card = load_model(run)
    codec = load_codec(run, card)
    sched = make_scheduler("ddpm", card.scheduler_config)
    xs = []
    for i in range(0, n, 16):
        gens = [torch.Generator().manual_seed(seed + j) for j in range(i, min(n, i + 16))]
        z = sample(model, sched, (len(gens), *card.sample_shape), gens, num_steps=25, clip=False)
        xs.append(codec.decode(z).clamp(-1, 1).cpu())
    return torch.cat(xs)


def save_strip(x: torch.Tensor, path: Path, k: int = 8) -> None:
    row = torch.cat(list(x[:k, 0]), dim=1)
    Image.fromarray(((row + 1) * 127.5).clamp(0, 255).byte().numpy()).save(path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="dataset at 256 px (the autoencoder's)")
    p.add_argument("--autoencoder", required=True)
    p.add_argument("--feature-net", required=True, help="evaluate's feature network, trained on the same data")
    p.add_argument("--variant", action="append", required=True, help="NAME:FLAG=VALUE,FLAG=VALUE (NAME: = defaults)")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default="bench_out/stage1_layout")
    p.add_argument("--reuse", action="store_true", help="score runs already trained under --work")
    p.add_argument("--name", default="stage1_layout", help="results file benchmarks/results/NAME.json")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
    Path(a.work).mkdir(parents=True, exist_ok=True)
    ds = Dataset(a.data)
    xtr = load_images(ds, ds.case_ids("train"), (a.size, a.size))
    xte = load_images(ds, ds.case_ids("test"), (a.size, a.size))
    net = FeatureNet.load(a.feature_net)
    rows = {}
    for spec in a.variant:
        name, _, flags = spec.partition(":")
        v = train_variant(a, name, [f for f in flags.split(",") if f], env)
        t = time.process_time()
        xs = unconditional(v.pop("run"), a.samples, a.seed)
        v["sample_cpu_s_per_image"] = round((time.process_time() - t) / a.samples, 3)
        save_strip(xs, Path(a.work) / f"{name}.png")
        r = realism(xtr, xte, xs, net.embed, "feature net", a.seed)
        feats = r["features"]
        v.update(fid=feats["synthetic"]["fid"], precision=feats["synthetic"]["precision"],
                 recall=feats["synthetic"]["recall"], spectrum_distance=r["power_spectrum"]["synthetic"])
        rows[name] = v
        print(f"{name}: {v}", flush=True)
        floor = feats["floor_real_test"]
        res = {"command": "python benchmarks/bench_stage1_layout.py " + " ".join(sys.argv[1:]),
               "threads": a.threads, "steps": a.steps, "samples": a.samples, "sampler": "ddpm 25",
               "floor_real_test": {"fid": floor["fid"], "precision": floor["precision"], "recall": floor["recall"],
                                   "spectrum_distance": r["power_spectrum"]["floor_real_test"]},
               "n_real_train": len(xtr), "n_real_test": len(xte), "variants": rows, "versions": versions(),
               "hardware": measure_peaks() if len(rows) == len(a.variant) else None}
        write_results(a.name, res)  # after every variant, so a cut-short run keeps what it measured
    strips = [Image.open(Path(a.work) / f"{spec.partition(':')[0]}.png") for spec in a.variant]
    figure = Image.new("L", (strips[0].width, sum(im.height for im in strips)))
    for i, im in enumerate(strips):
        figure.paste(im, (0, i * strips[0].height))
    figure.resize((figure.width // 2, figure.height // 2), Image.LANCZOS).save(Path(a.work) / "variants.png")
    print(f"wrote {Path(a.work) / 'variants.png'} (one row per --variant, in order)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
