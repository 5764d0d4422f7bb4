"""A procedural, seedable digital phantom of posteroanterior (PA) chest radiographs, with exact masks.

The image is formed the way a radiograph is: a three-dimensional body made of simple solids
(elliptic cylinders, ellipsoids, tubes around curves, superellipsoid lungs) is projected along the
beam by *analytic line integrals* (closed-form chord lengths, as in the Shepp-Logan and XCAT family of
phantoms; no voxel volume is built), then passed through a detector model: Beer-Lambert attenuation,
Poisson quantum noise, scintillator blur, a log transform and a film-like display curve with the
unsharp masking of computed radiography. Bone is bright and aerated lung dark, as on a real film.

Coordinates are millimetres with the origin at the image centre: ``x`` to the image right (the
patient's left, as a PA film is viewed), ``y`` downwards (towards the feet), ``z`` along the beam.
Every case draws its own habitus, inspiration depth, heart size, rotation and exposure from a
generator seeded by ``numpy.random.SeedSequence(seed, spawn_key=(index,))``, so a case's files
depend only on ``(seed, index)`` and not on the number of workers.

Label priority where structures overlap on the film: nodule > heart > clavicle > lung. Nodules are
placed so that their whole footprint lies in the visible lung field and off the clavicles, so
``nodule`` always lies inside ``lung + nodule``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from maskray.config import option, overwrite_option
from maskray.data.phantom_attributes import sample_attributes, with_attributes
from maskray.data.phantom_body import (MU_LUNG, MU_TISSUE, Anatomy, Grid, Scene, ellipse_chord, pixel_box, project,
                                       sample_anatomy)
from maskray.data.rng import case_rng
from maskray.errors import MaskrayError

KNOWN_LABELS = ("lung", "heart", "clavicle", "nodule")
MIN_SIZE, MAX_SIZE = 32, 1024

FLUENCE = 8000.0  # detected photons per mm^2 through air, before the per-case exposure factor


@dataclass(frozen=True)
class PhantomConfig:
    """Options of ``maskray phantom``; the defaults live here and nowhere else."""

    out: Path | None = option(None, help="output folder (nnU-Net v2 raw layout)")
    n: int = option(200, help="number of cases")
    image_size: int = option(256, help=f"image side in pixels ({MIN_SIZE}..{MAX_SIZE})")
    seed: int = option(0, help="seed; the same seed gives byte-identical files")
    fov_mm: float = option(400.0, help="field of view in mm; pixel spacing = fov_mm / size")
    nodule_fraction: float = option(0.5, help="fraction of cases with at least one nodule (0..1)")
    max_nodules: int = option(3, help="most nodules in one case")
    nodule_median_mm: float = option(15.0, help="median nodule diameter (lognormal), mm")
    nodule_sigma: float = option(0.45, help="log-standard deviation of the nodule diameter")
    nodule_min_mm: float = option(5.0, help="smallest nodule diameter, mm")
    nodule_max_mm: float = option(35.0, help="largest nodule diameter, mm")
    labels: tuple[str, ...] = option(("lung", "heart", "nodule"),
                                     help=f"labels to write, in value order 1, 2, ... (from {','.join(KNOWN_LABELS)})")
    bit_depth: int = option(8, help="image bit depth (8 or 16)")
    val_fraction: float = option(0.1, help="fraction of patients in the validation split")
    test_fraction: float = option(0.1, help="fraction of patients in the test split")
    workers: int = option(1, help="parallel worker processes (0: one per CPU core)")
    overwrite: bool = overwrite_option()

    def __post_init__(self) -> None:
        if not MIN_SIZE <= self.image_size <= MAX_SIZE:
            raise MaskrayError(f"--image-size {self.image_size}: image side must be {MIN_SIZE}..{MAX_SIZE} pixels")
        if self.n < 0:
            raise MaskrayError(f"--n {self.n}: the number of cases may not be negative")
        if self.bit_depth not in (8, 16):
            raise MaskrayError(f"--bit-depth {self.bit_depth}: allowed 8 or 16")
        unknown = [x for x in self.labels if x not in KNOWN_LABELS]
        if unknown or len(set(self.labels)) != len(self.labels):
            what = f"unknown label {unknown[0]!r}" if unknown else "a label is named twice"
            raise MaskrayError(f"--labels {','.join(self.labels)}: {what} (allowed: {', '.join(KNOWN_LABELS)})")
        for name in ("nodule_fraction", "val_fraction", "test_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise MaskrayError(f"--{name.replace('_', '-')} {v}: must lie in 0..1")
        if self.val_fraction + self.test_fraction > 1.0:
            raise MaskrayError("--val-fraction plus --test-fraction exceeds 1")
        if self.max_nodules < 0 or self.workers < 0:
            raise MaskrayError("--max-nodules and --workers may not be negative")
        if not 0 < self.nodule_min_mm <= self.nodule_median_mm <= self.nodule_max_mm:
            raise MaskrayError("nodule diameters must satisfy 0 < min <= median <= max")
        if self.fov_mm <= 0 or self.nodule_sigma < 0:
            raise MaskrayError("--fov-mm must be positive and --nodule-sigma non-negative")

    @property
    def spacing(self) -> float:
        """Pixel spacing in mm (square pixels)."""
        return self.fov_mm / self.image_size


# ------------------------------------------------------------------------------------------- nodules
@dataclass(frozen=True)
class Nodule:
    """A soft-tissue ellipsoid in the lung: centre (mm), in-plane semi-axes, rotation and depth semi-axis."""

    x: float
    y: float
    a: float
    b: float
    angle: float
    c: float

    @property
    def diameter(self) -> float:
        """Equivalent diameter, mm: twice the geometric mean of the in-plane semi-axes."""
        return 2.0 * math.sqrt(self.a * self.b)

    def chord(self, g: Grid) -> tuple[tuple[slice, slice], np.ndarray] | None:
        r = max(self.a, self.b)
        box = pixel_box(self.x - r, self.x + r, self.y - r, self.y + r, g)
        if box is None:
            return None
        dx, dy = g.X[box] - self.x, g.Y[box] - self.y
        c, s = math.cos(self.angle), math.sin(self.angle)
        return box, ellipse_chord((dx * c + dy * s) / self.a, (-dx * s + dy * c) / self.b, 2 * self.c)


def sample_nodules(rng: np.random.Generator, cfg: PhantomConfig, g: Grid, scene: Scene) -> list[Nodule]:
    """Place 1..max_nodules nodules whose footprint lies in the visible lung field, off the clavicles,
    and which fit inside the lung's depth; sizes from a lognormal clipped to [min, max] mm."""
    if cfg.max_nodules == 0 or rng.random() >= cfg.nodule_fraction:
        return []
    weights = 0.45 ** np.arange(cfg.max_nodules)
    count = 1 + int(rng.choice(cfg.max_nodules, p=weights / weights.sum()))
    allowed = scene.lung & ~scene.clavicle
    rows, cols = np.nonzero(allowed)
    out: list[Nodule] = []
    if rows.size == 0:
        return out
    for _ in range(count):
        d = float(np.clip(cfg.nodule_median_mm * math.exp(cfg.nodule_sigma * rng.standard_normal()),
                          cfg.nodule_min_mm, cfg.nodule_max_mm))
        q = float(rng.uniform(0.8, 1.0))
        nod_r = d / 2
        angle = float(rng.uniform(0, math.pi))
        for _try in range(40):
            i = int(rng.integers(rows.size))
            # Jitter within the pixel so centres are continuous, then map back to tilted patient coordinates.
            cx = float(g.X[rows[i], cols[i]] + rng.uniform(-0.5, 0.5) * g.s)
            cy = float(g.Y[rows[i], cols[i]] + rng.uniform(-0.5, 0.5) * g.s)
            nod = Nodule(cx, cy, nod_r / math.sqrt(q), nod_r * math.sqrt(q), angle, nod_r * rng.uniform(0.85, 1.0))
            if scene.lung_depth[rows[i], cols[i]] < 2 * nod.c + 10:
                continue
            res = nod.chord(g)
            if res is None:
                continue
            box, ch = res
            # Whole footprint (grown by half a pixel) inside the allowed field.
            grown = ellipse_chord((g.X[box] - cx) / (max(nod.a, nod.b) + 0.7 * g.s), (g.Y[box] - cy) /
                                   (max(nod.a, nod.b) + 0.7 * g.s), 1.0) > 0
            if np.all(allowed[box][grown]) and not any(
                    math.hypot(cx - o.x, cy - o.y) < max(o.a, o.b) + max(nod.a, nod.b) + 3 for o in out):
                out.append(nod)
                break
    return out


def nodule_mask(nodules: list[Nodule], g: Grid) -> np.ndarray:
    """Footprint of the nodules on ``g``; a nodule smaller than a pixel still marks the pixel of its centre."""
    m = np.zeros((g.n, g.n), bool)
    for nod in nodules:
        res = nod.chord(g)
        if res is not None:
            box, ch = res
            m[box] |= ch > 0
        r, c = _pixel_of(nod, g)
        m[r, c] = True
    return m


def _pixel_of(nod: Nodule, g: Grid) -> tuple[int, int]:
    d = (g.X - nod.x) ** 2 + (g.Y - nod.y) ** 2
    r, c = np.unravel_index(int(np.argmin(d)), d.shape)
    return int(r), int(c)


# ------------------------------------------------------------------------------------------- detector
def _detector(P: np.ndarray, a: Anatomy, s: float, rng: np.random.Generator, lung: np.ndarray,
              dense: np.ndarray) -> np.ndarray:
    """Line integrals ``(H, W)`` -> displayed image in ``[0, 1]``: quantum noise, blur, log, film curve."""
    n0 = FLUENCE * a.exposure * s * s
    counts = rng.poisson(n0 * np.exp(-P.astype(np.float64))).astype(np.float32)
    counts = ndimage.gaussian_filter(counts, sigma=max(0.45 / s, 0.35), mode="nearest")
    est = -np.log(np.maximum(counts, 0.5) / n0)
    # Automatic windowing, as a CR reader does: anchor the film curve between lung and mediastinum.
    lo = float(np.median(est[lung])) if lung.any() else float(np.percentile(est, 30))
    hi = float(np.median(est[dense])) if dense.any() else float(np.percentile(est, 95))
    hi = max(hi, lo + 0.5)
    centre = lo + (0.38 + a.window) * (hi - lo)
    width = (hi - lo) / 2.3
    img = 1.0 / (1.0 + np.exp(-(est - centre) / width))
    # Unsharp masking (CR edge enhancement) makes ribs and vessels crisper.
    img = img + 0.6 * (img - ndimage.gaussian_filter(img, sigma=5.0 / s, mode="nearest"))
    return np.clip(img, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------- a case
@dataclass
class PhantomCase:
    """One generated case: image ``(H, W)`` float32 in ``[0, 1]``, label map ``(H, W)`` uint8, metadata."""

    image: np.ndarray
    label: np.ndarray
    meta: dict


def render_case(cfg: PhantomConfig, index: int) -> PhantomCase:
    """Draw and render case ``index`` of ``cfg`` (pure function of ``cfg.seed`` and ``index``)."""
    rng = case_rng(cfg.seed, index)
    a = sample_anatomy(rng)
    attributes = sample_attributes(cfg.seed, index)
    a = with_attributes(a, attributes)
    n = cfg.image_size
    g = Grid.make(n, cfg.fov_mm, a.tilt)
    scene = project(a, g)
    nodules = sample_nodules(rng, cfg, g, scene)
    # Small images are projected on a finer grid and binned, so thin ribs and vessels are not aliased.
    k = max(1, math.ceil(128 / n))
    if k > 1:
        gf = Grid.make(n * k, cfg.fov_mm, a.tilt)
        P = project(a, gf).P
    else:
        gf, P = g, scene.P
    for nod in nodules:
        res = nod.chord(gf)
        if res is not None:
            box, ch = res
            P[box] += (MU_TISSUE - MU_LUNG) * ch
    if k > 1:
        P = -np.log(np.exp(-P).reshape(n, k, n, k).mean(axis=(1, 3)))
    nod_fp = nodule_mask(nodules, g)
    dense = scene.heart & ~scene.lung
    image = _detector(P, a, g.s, rng, scene.lung & ~nod_fp, dense)
    label = np.zeros((n, n), np.uint8)
    value = {name: i + 1 for i, name in enumerate(cfg.labels)}
    for name, fp in (("lung", scene.lung), ("clavicle", scene.clavicle), ("heart", scene.heart),
                     ("nodule", nod_fp)):
        if name in value:
            label[fp] = value[name]
    meta = {
        "nodules": [{
            "center_px": list(_pixel_of(nod, g)),
            "center_mm": [round(nod.y + cfg.fov_mm / 2, 2), round(nod.x + cfg.fov_mm / 2, 2)],
            "diameter_mm": round(nod.diameter, 2),
            "axes_mm": [round(2 * nod.a, 2), round(2 * nod.b, 2)],
            "rib_overlap": round(float((scene.rib & _single(nod, g)).sum() / _single(nod, g).sum()), 3),
        } for nod in nodules],
        "attributes": attributes,
        "anatomy": {"inspiration": round(a.insp, 3), "cardiothoracic_ratio": round(a.ctr, 3),
                    "rotation_deg": round(a.rot, 2), "tilt_deg": round(a.tilt, 2),
                    "exposure": round(a.exposure, 3), "chest_half_width_mm": round(a.width, 1)},
    }
    return PhantomCase(image=image, label=label, meta=meta)


def _single(nod: Nodule, g: Grid) -> np.ndarray:
    return nodule_mask([nod], g)


# ------------------------------------------------------------------------------------------- dataset
def case_id(index: int, n: int) -> str:
    return f"phantom_{index:0{max(5, len(str(max(n - 1, 0))))}d}"


def _work(job: tuple[PhantomConfig, str, int]) -> tuple[str, dict]:
    from maskray.data.dataset import write_case

    cfg, root, index = job
    case = render_case(cfg, index)
    cid = case_id(index, cfg.n)
    write_case(root, cid, case.image, case.label, bit_depth=cfg.bit_depth)
    return cid, case.meta


def make_phantom(cfg: PhantomConfig, progress: bool = True) -> Path:
    """Write ``cfg.n`` phantom cases to ``cfg.out`` in the native layout; return the folder.

    Writes ``imagesTr/``, ``labelsTr/``, ``dataset.json`` (labels, spacing), ``splits.json``
    (patient = case: one image per patient), ``cases.json`` (per case: patient, spacing and the attributes sex and
    age band), ``phantom.json`` (per case: nodules, attributes and anatomy) and
    ``run.json``. Files other than ``run.json`` are byte-identical for the same config.
    """
    from tqdm import tqdm

    from maskray.data.schema import DatasetInfo, write_dataset_info, write_splits
    from maskray.files import prepare_output_dir
    from maskray.provenance import write_run_info
    from maskray.files import atomic_write

    if cfg.out is None:
        raise MaskrayError("--out is required (the folder to write the phantom dataset into)")
    if cfg.n == 0:
        raise MaskrayError("--n 0: at least one case is needed")
    root = prepare_output_dir(cfg.out, overwrite=cfg.overwrite)
    jobs = [(cfg, str(root), i) for i in range(cfg.n)]
    workers = cfg.workers or os.cpu_count() or 1
    workers = min(workers, cfg.n)
    results: dict[str, dict] = {}
    bar = tqdm(total=cfg.n, desc="phantom", unit="case", disable=not progress)
    if workers == 1:
        for job in jobs:
            cid, meta = _work(job)
            results[cid] = meta
            bar.update()
    else:
        import multiprocessing as mp

        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        with mp.get_context(method).Pool(workers) as pool:
            for cid, meta in pool.imap_unordered(_work, jobs, chunksize=max(1, min(16, cfg.n // (4 * workers)))):
                results[cid] = meta
                bar.update()
    bar.close()
    ids = [case_id(i, cfg.n) for i in range(cfg.n)]
    labels = {"background": 0, **{name: i + 1 for i, name in enumerate(cfg.labels)}}
    info = DatasetInfo(labels=labels, spacing=(cfg.spacing, cfg.spacing), extra={
        "name": "maskray phantom", "description": "Synthetic PA chest radiographs (maskray phantom); exact masks.",
        "phantom_file": "phantom.json"})
    write_dataset_info(root, info, cfg.n)
    perm = case_rng(cfg.seed, 2**31 - 1).permutation(cfg.n)
    n_test, n_val = round(cfg.n * cfg.test_fraction), round(cfg.n * cfg.val_fraction)
    test = [ids[i] for i in perm[:n_test]]
    val = [ids[i] for i in perm[n_test:n_test + n_val]]
    train = [ids[i] for i in perm[n_test + n_val:]]
    write_splits(root, {"train": train, "val": val, "test": test}, patients={c: c for c in ids}, seed=cfg.seed)
    atomic_write(root / "cases.json", json.dumps(  # the import record: patient, spacing, attributes
        {c: {"patient": c, "spacing": [cfg.spacing, cfg.spacing], "attributes": results[c]["attributes"]}
         for c in ids}, indent=1))
    atomic_write(root / "phantom.json", json.dumps({
        "spacing_mm": cfg.spacing, "size": cfg.image_size, "seed": cfg.seed,
        "note": "center_px is (row, column); center_mm is (y, x) from the top-left corner",
        "cases": {c: results[c] for c in ids}}, indent=1))
    write_run_info(root, "phantom", cfg, seed=cfg.seed)
    return root
