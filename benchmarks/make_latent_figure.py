"""The README's 256 px picture: generated images (top) and the real phantom images of the same masks (bottom).

    python benchmarks/make_latent_figure.py WORK [--cases 6] [--out docs/img/latent_phantom_256.png]

WORK is a finished `bench_latent_path.py --data phantom` work folder (data/ and latent/gen/). Only for the phantom:
real images of internal data sets never go into the repository.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from maskray.data.dataset import Dataset
from maskray.training.validation import to_uint8


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("work", type=Path)
    p.add_argument("--cases", type=int, default=6)
    p.add_argument("--out", type=Path, default=Path("docs/img/latent_phantom_256.png"))
    a = p.parse_args()
    real, gen = Dataset(a.work / "data"), Dataset(a.work / "latent" / "gen")
    ids = gen.case_ids()[:a.cases]
    top = np.concatenate([to_uint8(gen.image(c)) for c in ids], axis=1)
    bottom = np.concatenate([to_uint8(real.image(c)) for c in ids], axis=1)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate([top, bottom], axis=0)).save(a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
