"""Does the realism measure see texture? Real phantom test images against the real training images (the
floor), the same test images blurred or with noise added, and (given a demo folder) the demo's generated
images, in the power spectrum and in the feature space of the self-supervised feature network, trained and,
for comparison, untrained (random weights: what the training buys).

    python benchmarks/bench_realism.py --demo bench_out/demo-quick [--steps 400]
    python benchmarks/bench_realism.py --n 200 --size 64            # phantom only, no generated images

Writes ``benchmarks/results/realism.json`` and prints a table. Pass: every degraded set and the generated set
score behind the floor in every measure.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from maskray.data.dataset import Dataset
from maskray.measures.distributions import distances
from maskray.evaluation.pairs import load_images
from maskray.evaluation.realism import blur
from maskray.hardware import measure_peaks
from maskray.measures.features import train_feature_net
from maskray.measures.image import spectrum_distance

HERE = Path(__file__).resolve().parent


def _sets(real: Dataset, size: tuple[int, int], demo: Path | None, seed: int) -> tuple[torch.Tensor, dict]:
    xtr = load_images(real, real.case_ids("train"), size)
    xte = load_images(real, real.case_ids("test"), size)
    g = torch.Generator().manual_seed(seed)
    sets = {"real test (floor)": xte, "blurred sigma 0.5 px": blur(xte, 0.5), "blurred sigma 1 px": blur(xte, 1.0),
            "blurred sigma 2 px": blur(xte, 2.0),
            "noise std 0.05 added": (xte + 0.05 * torch.randn(xte.shape, generator=g)).clamp(-1, 1)}
    if demo is not None:
        syn = Dataset(demo / "generated")
        sets["demo's generated images"] = load_images(syn, syn.case_ids(), size)
    return xtr, sets


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo", default=None, help="a finished demo folder (its phantom/ and generated/)")
    p.add_argument("--n", type=int, default=200, help="phantom cases when no --demo is given")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=400, help="feature network training steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    demo = Path(a.demo) if a.demo else None
    tmp = None
    if demo is not None:
        real = Dataset(demo / "phantom")
    else:
        from maskray.data.phantom import PhantomConfig, make_phantom

        tmp = tempfile.TemporaryDirectory()
        real = Dataset(make_phantom(PhantomConfig(out=Path(tmp.name) / "p", n=a.n, size=a.size, seed=a.seed),
                                    progress=False))
    size = (a.size, a.size)
    xtr, sets = _sets(real, size, demo, a.seed)
    t = time.perf_counter()
    nets = {"trained": train_feature_net(xtr, steps=a.steps, seed=a.seed),
            "untrained (random weights)": train_feature_net(xtr, steps=0, seed=a.seed, progress=False)}
    t_train = time.perf_counter() - t
    rows = []
    for space, net in nets.items():
        ftr = net.embed(xtr).numpy()
        for name, x in sets.items():
            d = distances(ftr, net.embed(x).numpy(), a.seed)
            rows.append({"feature_net": space, "set": name, "fid": d["fid"], "kid": d["kid"]["mean"],
                         "precision": d["precision"], "recall": d["recall"],
                         "spectrum_distance": spectrum_distance(xtr, x), "n": d["n_query"]})
    for space in nets:
        mine = [r for r in rows if r["feature_net"] == space]
        floor = mine[0]
        for r in mine[1:]:
            r["behind_floor"] = {k: (r[k] > floor[k]) if k in ("fid", "kid", "spectrum_distance") else r[k] < floor[k]
                                 for k in ("fid", "kid", "precision", "spectrum_distance")}
            r["fid_over_floor"] = r["fid"] / floor["fid"] if floor["fid"] > 0 else float("inf")
    print(f"{'feature net':28} {'set':26} {'FID':>9} {'x floor':>8} {'KID':>9} {'prec':>5} {'recall':>6} {'spectrum':>8}")
    for r in rows:
        print(f"{r['feature_net']:28} {r['set']:26} {r['fid']:9.4g} {r.get('fid_over_floor', 1.0):8.1f} "
              f"{r['kid']:9.3g} {r['precision']:5.2f} {r['recall']:6.2f} {r['spectrum_distance']:8.3f}")
    res = {"command": " ".join(["python benchmarks/bench_realism.py", *sys.argv[1:]]), "real": str(real.root),
           "n_train": int(xtr.shape[0]), "size": a.size, "feature_steps": a.steps, "train_s": round(t_train, 1),
           "threads": a.threads, "hardware": measure_peaks(), "rows": rows}
    out = HERE / "results" / "realism.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=float))
    print(f"wrote {out}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
