"""``maskray demo``: the whole path on the embedded phantom."""

from __future__ import annotations

from maskray.cli import add_config_argument
from maskray.config import add_arguments, from_args
from maskray.demo import DemoConfig, run_demo


def register(sub) -> None:
    p = sub.add_parser("demo", help="run everything on the embedded phantom (CPU, minutes)",
                       description="Make a phantom dataset, train both stages, generate for held-out masks, "
                                   "score them with maskray evaluate, write report.html and metrics.json "
                                   "(with each stage's time and this machine's matmul peak).")
    add_config_argument(p)
    add_arguments(p, DemoConfig)
    p.set_defaults(func=_run)


def _run(args) -> int:
    m = run_demo(from_args(DemoConfig, args))
    s = m["scores"]["generated (true mask)"]
    sh = m["scores"]["generated vs other case (shuffled mask)"]
    mg, hw = m["ssim_true_minus_shuffled"], m["hardware"]
    print(f"PSNR {s['psnr']['mean']:.2f} dB, SSIM {s['ssim']['mean']:.3f} (shuffled masks: SSIM "
          f"{sh['ssim']['mean']:.3f}; margin {mg['mean']:.3f}, {'clear' if mg['clear'] else 'NOT clear'}); "
          f"lung darker in {s.get('lung_darker_rate', float('nan')):.0%}; total {m['total_s']:.0f} s "
          f"(matmul peak {hw['bf16_gflops']:.0f} GFLOP/s bf16, {hw['fp32_gflops']:.0f} fp32)")
    print(f"report: {m['config']['out']}/report.html")
    return 0
