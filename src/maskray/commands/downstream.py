"""``maskray downstream``: segmenters trained on real / real+synthetic / synthetic pairs, scored on real test images."""

from __future__ import annotations

import argparse
from pathlib import Path

from maskray.cli import add_study_arguments
from maskray.config import add_arguments, from_args
from maskray.evaluation.downstream import DownstreamConfig, run_downstream


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "downstream", help="does synthetic data help a segmenter on real test images?",
        description="Train the same MONAI segmenter (fixed step budget, several seeds) on real cases at several "
                    "fractions with and without the synthetic pairs, and on synthetic pairs alone; score each on "
                    "the real test split (Dice per label as MSD reports it, lesion FROC/CPM, sensitivity and false "
                    "positives per image). Writes metrics.json, metrics.csv, runs.csv, dice_vs_fraction.png, "
                    "froc.png, report.html, run.json.")
    add_study_arguments(p)
    add_arguments(p, DownstreamConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = from_args(DownstreamConfig, args)
    m = run_downstream(Path(args.real), Path(args.synthetic), Path(args.out), cfg)
    for r in m["summary"]:
        if r["metric"].startswith("dice_") or r["metric"] in ("sensitivity", "cpm"):
            print(f"{r['condition']:>15} f={r['fraction']:<5g} {r['metric']:<16} {r['mean']:.3f} ± {r['std']:.3f}")
    print(f"maskray downstream: wrote {Path(args.out) / 'report.html'}")
    return 0
