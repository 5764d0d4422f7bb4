"""The speed tables of docs/speed.md (and the README's speed section), printed as Markdown from the results files.

    python benchmarks/speed_tables.py [steps|peer|levers ...]

Reads benchmarks/results/steps.json (bench_steps.py), peer.json (bench_peer.py) and speed_levers.json
(bench_speed.py --levers); a missing file is named, not guessed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def _load(name: str) -> dict | None:
    path = RESULTS / name
    if not path.is_file():
        print(f"({path} not found: run the benchmark that writes it)\n")
        return None
    return json.loads(path.read_text())


def _nodules(r: dict) -> str:
    """``found/of, contrast`` with whatever the row measured (rows without a segmenter have no detection)."""
    n = r.get("nodules") or {}
    parts = [f"{n['found']}/{n['of']}" if "found" in n else "", f"{n['contrast_mean']:+.3f}" if "contrast_mean" in n
             else ""]
    return ", ".join(p for p in parts if p)


def steps_table() -> None:
    d = _load("steps.json")
    if d is None:
        return
    labels = list(d["real_test_images"]["dice"])
    print(f"{d['test_masks']} held-out masks, {d['image_size']} px, {d['threads']} thread; perfect-sampler bound "
          f"{d['perfect_sampler_bound_psnr']:.2f} dB; real test images: Dice "
          + ", ".join(f"{k} {v:.3f}" for k, v in d["real_test_images"]["dice"].items())
          + f", nodules {_nodules(d['real_test_images'])}\n")
    print("| model | sampler | steps | PSNR dB | - bound | Dice " + " / ".join(labels)
          + " | nodules found, contrast | texture distance | s / image |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in d["rows"]:
        print(f"| {r['model']} | {r['scheduler']} | {r['steps']} | {r['psnr']:.2f} | {r['psnr_minus_bound']:+.2f} | "
              + (" / ".join(f"{r['dice'][k]:.3f}" for k in labels) if "dice" in r else "not measured")
              + f" | {_nodules(r)} | {r['spectrum_distance']:.3f} | {r['seconds_per_image']:.3f} |")
    print(f"\n`{'`; `'.join(d.get('commands', []))}` (figure: `benchmarks/results/steps.png`)\n")


def peer_table() -> None:
    d = _load("peer.json")
    if d is None:
        return
    labels = list(d["real_test_images"]["dice"])
    print(f"Budget {d['budget_s'][0] / 60:.0f} + {d['budget_s'][1] / 60:.0f} min, {d['threads']} thread, "
          f"{d['test_masks']} held-out masks; perfect-sampler bound {d['perfect_sampler_bound_psnr']:.2f} dB\n")
    print("| | parameters (UNet + ControlNet) | steps (base + CN) | train img/s (base / CN) | sampler | s / image | "
          "PSNR dB | Dice " + " / ".join(labels) + " | texture distance |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in ("peer", "maskray"):
        e = d[name]
        p = e["parameters"]
        print(f"| {name} | {p['unet'] / 1e6:.2f} M + {p['controlnet'] / 1e6:.2f} M | {e['base']['steps']} + "
              f"{e['controlnet']['steps']} | {e['train_images_per_s']['base']:.1f} / "
              f"{e['train_images_per_s']['controlnet']:.1f} | {e['sampler']} | {e['seconds_per_image']:.2f} | "
              f"{e['psnr']:.2f} | " + " / ".join(f"{e['dice'][k]:.3f}" for k in labels)
              + f" | {e['spectrum_distance']:.3f} |")
    print(f"\n`{d['command']}`\n")


def levers_table() -> None:
    d = _load("speed_levers.json")
    if d is None:
        return
    print(f"{d['size']} px, {d['threads']} thread, {d['gflop_per_image_per_denoising_step']:.2f} GFLOP per "
          f"image-step, bf16 matmul peak {d['bf16_matmul_peak_gflops']:.0f} GFLOP/s\n")
    print("| batch | channels_last | torch.compile | stage-2 train img/s | % of peak | sampling img-steps/s | % of peak |")
    print("|---|---|---|---|---|---|---|")
    for r in d["rows"]:
        print(f"| {r['batch']} | {r['channels_last']} | {r['compile']} | {r['train_images_per_s']:.1f} | "
              f"{100 * r['train_fraction_of_peak']:.0f}% | {r['sample_image_steps_per_s']:.1f} | "
              f"{100 * r['sample_fraction_of_peak']:.0f}% |")
    print(f"\n`python benchmarks/{d['command']}`\n")


def main(argv: list[str]) -> int:
    tables = {"steps": steps_table, "peer": peer_table, "levers": levers_table}
    for name in argv or list(tables):
        if name not in tables:
            print(f"unknown table '{name}' (allowed: {', '.join(tables)})", file=sys.stderr)
            return 2
        tables[name]()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
