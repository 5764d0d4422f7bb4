"""``maskray evaluate``: fidelity, realism, mask adherence, diversity and memorisation of a synthetic dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from maskray.cli import add_study_arguments
from maskray.config import add_arguments, from_args
from maskray.evaluation.evaluate import EvaluateConfig, evaluate


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate", help="score a synthetic dataset against the real one (fidelity, realism, adherence, ...)",
        description="Score a synthetic dataset (native layout, manifest.json pairing each case with its real source "
                    "mask) against the real dataset and its test split: paired PSNR/SSIM/MS-SSIM beside baselines "
                    "and the perfect-sampler bound; realism (power-spectrum distance, FID/KID/precision/recall in the "
                    "space of a self-supervised feature network) beside the real-vs-real floor; mask adherence "
                    "(Dice as MSD reports it, nodule FROC/CPM); diversity and memorisation. Writes metrics.json, "
                    "metrics.csv, report.html, figures, feature_net/, run.json.")
    add_study_arguments(p)
    add_arguments(p, EvaluateConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = from_args(EvaluateConfig, args)
    m = evaluate(Path(args.real), Path(args.synthetic), Path(args.out), cfg)
    f = m["fidelity"]
    if "synthetic" in f:
        s, b = f["synthetic"], f["baselines"]["regression_posterior_mean"]
        print(f"paired PSNR {s['psnr']['mean']:.2f} dB (regression baseline {b['psnr']['mean']:.2f}, perfect-sampler "
              f"bound {f['perfect_sampler_bound']['psnr']['mean']:.2f}); SSIM {s['ssim']['mean']:.3f}")
    r = m["realism"]["power_spectrum"]
    print(f"power-spectrum distance to real train: synthetic {r['synthetic']:.3f}, real test floor "
          f"{r['floor_real_test']:.3f}, blurred real {r['blurred_real_test']:.3f}")
    print(f"maskray evaluate: wrote {Path(args.out) / 'report.html'}")
    return 0
