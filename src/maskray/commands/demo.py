"""``maskray demo``: the whole path on the embedded phantom."""

from __future__ import annotations

from maskray.cli import add_config_argument
from maskray.config import add_arguments, from_args
from maskray.demo import DemoConfig, run_demo


def register(sub) -> None:
    p = sub.add_parser("demo", help="run everything on the embedded phantom (CPU, minutes)",
                       description="Make a phantom dataset, train both stages, generate for held-out masks, "
                                   "write report.html and metrics.json.")
    add_config_argument(p)
    add_arguments(p, DemoConfig)
    p.set_defaults(func=_run)


def _run(args) -> int:
    m = run_demo(from_args(DemoConfig, args))
    s = m["scores"]["generated (true mask)"]
    sh = m["scores"]["generated vs other case (shuffled mask)"]
    print(f"PSNR {s['psnr']['mean']:.2f} dB, SSIM {s['ssim']['mean']:.3f} (shuffled masks: SSIM "
          f"{sh['ssim']['mean']:.3f}); lung darker in {s.get('lung_darker_rate', float('nan')):.0%}; "
          f"total {sum(m['times_s'].values()):.0f} s")
    print(f"report: {m['config']['out']}/report.html")
    return 0
