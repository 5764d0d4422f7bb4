"""The utility study on real radiographs: does adding maskray's pairs make a lung segmenter better on real
cxr-lungs test images (256 px, latent path)?

    python benchmarks/bench_cxr_utility.py --work /work/bench/cxr256 [--steps 200] [--seeds 3]
        [--fractions 0.1,1] [--cxr ../shared/data/cxr-lungs] [--workers 1] [--no-synthetic-alone]
        [--name cxr_utility]

cxr-lungs is internal development data (../shared/data/cxr-lungs; skipped with a message when absent); WORK must
lie outside the repository, since the imported images are copies of it. Steps (each reused when WORK holds it):
import at 256 px (10% val, 10% test, seed 0); autoencoder, stage 1 and stage 2 with configs/cxr-256; one
generated image for every training mask (`generate --split train`, its default sampler); then
`maskray downstream --synthetic-sources fraction`: beside each real fraction only the synthetic images drawn for
that fraction's own masks, so the synthetic pairs add no label the real fraction lacks. The masks hold lungs
only (no nodule is annotated in cxr-lungs, so no nodule can be asked for: the nodule study is the phantom's,
docs/nodules.md). Writes results/NAME.json: the downstream summary and intervals (lung Dice, bootstrapped over
the real test images, paired against real-only) and the wall and CPU seconds of each step.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench_nodule_utility import maskray
from results_file import write_results

ROOT = Path(__file__).resolve().parent.parent
CXR = ROOT.parent / "shared" / "data" / "cxr-lungs"
RECIPE = ROOT / "configs" / "cxr-256"


def build(work: Path, cxr: Path, times: dict) -> Path:
    """The imported data, the three trained stages and the synthetic set under WORK; returns the synthetic set."""
    data, ae, base, cn = (str(work / k) for k in ("data", "ae", "base", "cn"))
    steps = [
        ("data", work / "data" / "dataset.json",
         ["data", "import", "--out", data, "--images", str(cxr / "images"), "--masks", str(cxr / "masks"),
          "--threshold", "127", "--label-name", "lung", "--image-size", "256", "--val-fraction", "0.1",
          "--test-fraction", "0.1", "--seed", "0", "--overwrite"]),
        ("train_autoencoder", work / "ae" / "autoencoder",
         ["train", "autoencoder", "--config", str(RECIPE / "autoencoder.yaml"), "--data", data, "--out", ae,
          "--overwrite"]),
        ("train_base", work / "base" / "model",
         ["train", "base", "--config", str(RECIPE / "base.yaml"), "--data", data, "--out", base, "--autoencoder", ae,
          "--overwrite"]),
        ("train_controlnet", work / "cn" / "model",
         ["train", "controlnet", "--config", str(RECIPE / "controlnet.yaml"), "--data", data, "--out", cn, "--base",
          base, "--overwrite"]),
        ("generate", work / "synthetic" / "manifest.json",
         ["generate", "--model", cn, "--masks", data, "--split", "train", "--out", str(work / "synthetic"),
          "--seed", "1", "--overwrite"]),
    ]
    for name, done, argv in steps:
        if not done.exists():
            maskray(times, name, *argv)
    return work / "synthetic"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", required=True, help="a folder outside the repository")
    p.add_argument("--cxr", default=str(CXR))
    p.add_argument("--steps", type=int, default=200, help="segmenter steps per downstream run")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--fractions", default="0.1,1")
    p.add_argument("--synthetic-alone", action=argparse.BooleanOptionalAction, default=True,
                   help="also train on the synthetic pairs alone, once per seed")
    p.add_argument("--workers", type=int, default=1, help="downstream --workers: single-thread segmenter processes")
    p.add_argument("--name", default="cxr_utility")
    a = p.parse_args()
    cxr, work = Path(a.cxr), Path(a.work).resolve()
    if not (cxr / "images").is_dir():
        print(f"skipped: {cxr} not found (internal development data)")
        return
    if ROOT in work.parents or work == ROOT:
        raise SystemExit(f"bench_cxr_utility: --work {work} is inside the repository; cxr-lungs must not be copied "
                         f"there")
    times: dict = {}
    synthetic = build(work, cxr, times)
    out = work / "downstream"
    if not (out / "metrics.json").is_file():
        maskray(times, "downstream", "downstream", "--synthetic-sources", "fraction", "--real", str(work / "data"),
                "--synthetic", str(synthetic), "--out", str(out), "--fractions", a.fractions, "--seeds",
                str(a.seeds), "--steps", str(a.steps), "--threads", "1", "--workers", str(a.workers), "--overwrite",
                *([] if a.synthetic_alone else ["--no-synthetic-alone"]))
    m = json.loads((out / "metrics.json").read_text())
    res = {"data": "cxr-lungs (704 PA radiographs, lung masks), 256 px", "n_synthetic_used": m["n_synthetic_used"],
           "n_synthetic_by_fraction": {str(r["fraction"]): r["n_synthetic"] for r in m["runs"]
                                       if r["condition"] == "real+synthetic"},
           "n_real_test": m["n_real_test"], "fractions": m["fractions"], "seeds": m["seeds"], "steps": m["steps"],
           "summary": m["summary"], "intervals": m["intervals"], "times": times,
           "command": "python benchmarks/bench_cxr_utility.py " + " ".join(sys.argv[1:])}
    write_results(a.name, res)
    for row in sorted(m["intervals"], key=lambda x: (x["fraction"], x["condition"])):
        d = row.get("dice_lung", {})
        vs = d.get("vs_real")
        print(f"{row['condition']:>15} f={row['fraction']:<5g} lung Dice {d.get('mean', float('nan')):.4f}"
              + (f"  vs real {vs['mean']:+.4f} [{vs['ci95'][0]:+.4f}, {vs['ci95'][1]:+.4f}]" if vs else ""))


if __name__ == "__main__":
    main()
