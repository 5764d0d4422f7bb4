"""Draw docs/img/phantom_grid.png: a grid of phantom cases with their mask outlines.

Usage: python benchmarks/make_phantom_figure.py [--size 256] [--n 12] [--seed 0] [--out docs/img/phantom_grid.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from maskray.data.phantom import PhantomConfig, render_case  # noqa: E402

COLOURS = {"lung": "tab:cyan", "heart": "tab:red", "clavicle": "tab:orange", "nodule": "yellow"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cols", type=int, default=4)
    ap.add_argument("--labels", default="lung,heart,clavicle,nodule")
    ap.add_argument("--no-outlines", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("docs/img/phantom_grid.png"))
    args = ap.parse_args()
    labels = tuple(args.labels.split(","))
    cfg = PhantomConfig(n=args.n, image_size=args.size, seed=args.seed, labels=labels, nodule_fraction=0.75)
    rows = -(-args.n // args.cols)
    fig, axes = plt.subplots(rows, args.cols, figsize=(3 * args.cols, 3 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= args.n:
            continue
        case = render_case(cfg, i)
        ax.imshow(case.image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        if not args.no_outlines:
            for v, name in enumerate(labels, start=1):
                m = (case.label == v).astype(float)
                if m.any():
                    ax.contour(m, levels=[0.5], colors=COLOURS.get(name, "white"), linewidths=0.8)
        nod = case.meta["nodules"]
        ax.set_title(f"case {i}: {len(nod)} nodule(s)" + (", " + ", ".join(f"{x['diameter_mm']:.0f}" for x in nod) + " mm" if nod else ""),
                     fontsize=8)
    handles = [plt.Line2D([], [], color=COLOURS[n], label=n) for n in labels if n in COLOURS]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
