"""What a perfect latent sampler would score: the autoencoder's reconstructions of the real test images, evaluated
like generated images, beside the latent path's generated images (bench_latent_path.py's work folder).

    python benchmarks/bench_latent_ceiling.py --work /work/bench/latent-phantom4 --feature-net FN [--reuse]

A latent model can at best draw the decoder's image of a real radiograph's latent. So the autoencoder's
reconstruction of each real test image (posterior mean, encoded and decoded at 256 px) is written as a generated
set with WORK/latent/gen's layout (its manifest pairs each image with the same mask) and scored by `maskray
evaluate` with the settings of bench_latent_path.py (evaluate seeds its segmenter, so both sets are scored by the
same network). Where the reconstructions already fall short of the real images, the autoencoder is the cause;
where only the generated images do, the diffusion model is. Writes benchmarks/results/latent_ceiling_DATA.json
(DATA from the work folder's dataset) with one row for the reconstructions and one for WORK/latent/eval.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from bench_nodule_guidance import run_maskray, summary  # same directory
from results_file import write_results


def write_reconstructions(data: Path, ae: Path, template: Path, out: Path, batch_size: int = 8) -> float:
    """WORK/latent/gen's files with every image replaced by the reconstruction of its mask's real image; seconds."""
    from maskray.data.dataset import Dataset, image_path
    from maskray.data.io import write_image_file
    from maskray.diffusion.autoencoder import LatentCodec
    from maskray.pipelines.generate import SYNTHETIC_TEXT

    real = Dataset(data)
    codec = LatentCodec.load(ae / "autoencoder")  # the run folder of `maskray train autoencoder`
    cases = json.loads((template / "manifest.json").read_text())["cases"]
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    # the generated set's layout and mask pairing, not its provenance: no generate config or run record of the
    # ControlNet stays beside images it did not make, and each manifest entry names the autoencoder instead
    shutil.copytree(template, tmp, ignore=shutil.ignore_patterns("generate_config.json", "run.json"))
    cases = {c: {"source_case": e["source_case"], "mask_case": e["mask_case"], "sample": e["sample"],
                 "made_by": "autoencoder reconstruction of the real image", "autoencoder": str(ae)}
             for c, e in cases.items()}
    (tmp / "manifest.json").write_text(json.dumps({"cases": cases}, indent=2))
    ids = sorted(cases)
    t = time.time()
    with torch.no_grad():
        for i in range(0, len(ids), batch_size):
            chunk = ids[i:i + batch_size]
            x = torch.stack([real.image(cases[c]["mask_case"]) for c in chunk])
            rec = codec.decode(codec.encode(x))
            for c, img in zip(chunk, rec):
                write_image_file(image_path(tmp, c), (img[0].numpy() + 1) / 2, text=SYNTHETIC_TEXT)
    seconds = time.time() - t
    (tmp / "reconstruction.json").write_text(json.dumps({"autoencoder": str(ae), "of": "real test images",
                                                         "weights_sha256": codec.weights_hash()}, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", required=True, help="bench_latent_path.py's work folder (data/, latent/ae, latent/gen)")
    p.add_argument("--feature-net", default=None, help="evaluate's feature net trained on the same real data")
    p.add_argument("--eval-steps", type=int, default=300)
    p.add_argument("--reuse", action="store_true", help="keep the reconstructions and their evaluation if complete")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(a.threads)
    torch.set_num_threads(a.threads)
    work = Path(a.work)
    data, lat = work / "data", work / "latent"
    recon, ev = lat / "recon", lat / "eval_recon"
    for need in (data / "dataset.json", lat / "ae", lat / "gen" / "manifest.json", lat / "eval" / "metrics.json"):
        if not need.exists():
            raise SystemExit(f"{need}: missing; run bench_latent_path.py with --work {work} first")
    seconds = None
    if not (a.reuse and (recon / "reconstruction.json").is_file()):
        seconds = round(write_reconstructions(data, lat / "ae", lat / "gen", recon), 1)
    cost = run_maskray(["evaluate", "--real", str(data), "--synthetic", str(recon), "--out", str(ev), "--image-size",
                        "256", "--seg-steps", str(a.eval_steps), "--reg-steps", str(a.eval_steps), "--threads", "1",
                        "--overwrite", *(["--feature-net", a.feature_net] if a.feature_net else [])],
                       ev / "metrics.json", a.reuse)
    rows = {"reconstructions": summary(json.loads((ev / "metrics.json").read_text())),
            "generated": summary(json.loads((lat / "eval" / "metrics.json").read_text()))}
    name = "phantom" if (data / "phantom.json").is_file() else "cxr"
    res = {"command": "python benchmarks/bench_latent_ceiling.py " + " ".join(sys.argv[1:]), "threads": a.threads,
           "reconstruct_seconds": seconds, "evaluate_cost": cost,
           "autoencoder_sha256": json.loads((recon / "reconstruction.json").read_text())["weights_sha256"],
           "rows": rows}
    write_results(f"latent_ceiling_{name}", res)
    print(f"{'set':>16} {'lung Dice':>9} {'PSNR':>6} {'bound':>6} {'FID':>6} {'prec':>5} {'recall':>6} {'spectrum':>8}"
          f" {'found':>6} {'FP/img':>6}")
    for label, r in rows.items():
        f, d = r["realism"], r.get("detection")
        print(f"{label:>16} {r['dice'].get('lung', float('nan')):>9.3f} {r['paired_psnr']:>6.2f} "
              f"{r['perfect_sampler_bound_psnr']:>6.2f} {f['fid']:>6.2f} {f['precision']:>5.2f} {f['recall']:>6.2f} "
              f"{f['spectrum_distance']:>8.3f}" + (f" {d['sensitivity']:>6.2f} {d['fp_per_image']:>6.2f}" if d else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
