"""The README's demo table, from one run of ``maskray demo`` (or from a finished demo folder).

    python benchmarks/bench_demo.py --out bench_out/demo            # the full demo (about 12 min on 2 cores)
    python benchmarks/bench_demo.py --quick --out bench_out/demo-q  # --quick (about 3 min)
    python benchmarks/bench_demo.py --latent --out bench_out/demo-l # --latent: the 256 px path
    python benchmarks/bench_demo.py --from-folder maskray-demo      # only tabulate a finished demo
    python benchmarks/bench_demo.py --quick --out D --name demo_quick_avx2   # another machine: its own file

Writes ``benchmarks/results/demo.json`` (or ``demo_quick.json``, ``demo_latent.json``): the demo's metrics.json
(headline, times, measured matmul peak, config, versions) plus the Markdown table the README shows, and prints the
table.
Every number in the table is read from the demo's own metrics.json, which ``maskray evaluate`` computed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from results_file import write_results  # noqa: E402  (benchmarks/ is the script's own folder on sys.path)

HERE = Path(__file__).resolve().parent


def _ms(e: dict, key: str, digits: int, std: bool = True) -> str:
    v = e.get(key)
    if not isinstance(v, dict):
        return ""
    return f"{v['mean']:.{digits}f} ± {v['std']:.{digits}f}" if std else f"{v['mean']:.{digits}f}"


def table(m: dict) -> str:
    """The README's demo table as Markdown."""
    s = m["scores"]
    rows = [("generated from the true mask", s["generated (true mask)"], True),
            ("the same images against another case (shuffled masks)", s["generated vs other case (shuffled mask)"], False),
            ("mean training image", s["mean training image"], False),
            ("per-label mean painted into the mask", s["per-label mean painted into mask"], False),
            ("mask-to-image regression (posterior mean)", s.get("regression (posterior mean)", {}), False),
            ("a real image of another case", s.get("real image of another case", {}), False)]
    lines = ["| images scored against the real test image | PSNR dB | SSIM | nodule brighter than lung around it |",
             "|---|---|---|---|"]
    for name, e, std in rows:
        rate = e.get("lesion_brighter_rate")
        n = e.get("lesion_contrast", {}).get("n", 0)
        lines.append(f"| {name} | {_ms(e, 'psnr', 2, std)} | {_ms(e, 'ssim', 3, std)} | "
                     f"{'' if rate is None else f'{rate:.0%} of {n} nodules'} |")
    r = m["real_test_images"]
    if "lesion_brighter_rate" in r:
        lines.append(f"| real test images themselves | | | {r['lesion_brighter_rate']:.0%} of "
                     f"{r['lesion_contrast']['n']} nodules |")
    mg, rz, hw = m["ssim_true_minus_shuffled"], m["realism"], m["hardware"]
    lines += ["", f"SSIM margin true vs shuffled masks: {mg['mean']:.3f} (standard error {mg['standard_error']:.3f}, "
                  f"{'clear' if mg['clear'] else 'NOT clear'}).", "",
              "| realism, against real training images | power-spectrum distance (decades) | FID (feature net) "
              "| precision |", "|---|---|---|---|"]
    for k, name in (("floor_real_test", "real test images (floor)"), ("synthetic", "generated"),
                    ("blurred_real_test", "real test images blurred (sigma 1 px)")):
        lines.append(f"| {name} | {rz['power_spectrum'][k]:.3f} | {rz['fid'][k]:.4g} | {rz['precision'][k]:.2f} |")
    if "nodule_cpm" in m:
        c = m["nodule_cpm"]
        lines += ["", f"Nodule detection by a segmenter trained on real images (CPM, FROC mean at 1/8..8 FP/image): "
                      f"generated {c['synthetic']:.3f}, real test {c['real_test_reference']:.3f}."]
    times = ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in m["times_s"].items())
    lines += ["", f"Wall time {m['total_s'] / 60:.1f} min ({times}) on a machine with a measured matmul peak of "
                  f"{hw['bf16_gflops']:.0f} GFLOP/s bf16 and {hw['fp32_gflops']:.0f} fp32 ({hw['threads']} threads)."]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench_out/demo", help="demo output folder")
    p.add_argument("--quick", action="store_true", help="maskray demo --quick")
    p.add_argument("--latent", action="store_true", help="maskray demo --latent (the 256 px latent path)")
    p.add_argument("--from-folder", default=None, help="tabulate a finished demo folder instead of running one")
    p.add_argument("--name", default=None, help="results file name (default demo, demo_quick or demo_latent; "
                                                "another machine's run gets its own, e.g. demo_quick_avx2)")
    a = p.parse_args()
    if a.from_folder:
        folder = Path(a.from_folder)
        m = json.loads((folder / "metrics.json").read_text())
        quick, latent = bool(m["config"].get("quick")), bool(m["config"].get("latent"))
    else:
        from maskray.cli import main as cli

        argv = ["demo", "--out", a.out, "--overwrite", *(["--quick"] if a.quick else []),
                *(["--latent"] if a.latent else [])]
        if cli(argv) != 0:
            return 1
        m = json.loads((Path(a.out) / "metrics.json").read_text())
        quick, latent = a.quick, a.latent
    md = table(m)
    print(md)
    res = {"command": " ".join(["python benchmarks/bench_demo.py", *sys.argv[1:]]), "markdown": md, "metrics": m}
    write_results(a.name or "demo" + ("_latent" if latent else "") + ("_quick" if quick else ""), res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
