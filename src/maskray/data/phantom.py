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

from maskray.config import option
from maskray.data.rng import case_rng
from maskray.errors import MaskrayError

KNOWN_LABELS = ("lung", "heart", "clavicle", "nodule")
MIN_SIZE, MAX_SIZE = 32, 1024

# Linear attenuation coefficients in 1/mm at an effective energy near 60 keV.
MU_TISSUE = 0.020
MU_LUNG = 0.005  # aerated lung: about a quarter of soft tissue
MU_CORTEX = 0.048
MU_MARROW = 0.027
FLUENCE = 8000.0  # detected photons per mm^2 through air, before the per-case exposure factor


@dataclass(frozen=True)
class PhantomConfig:
    """Options of ``maskray phantom``; the defaults live here and nowhere else."""

    out: Path | None = option(None, help="output folder (nnU-Net v2 raw layout)")
    n: int = option(200, help="number of cases")
    size: int = option(256, help=f"image side in pixels ({MIN_SIZE}..{MAX_SIZE})")
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
    overwrite: bool = option(False, help="replace an output folder that already holds files")

    def __post_init__(self) -> None:
        if not MIN_SIZE <= self.size <= MAX_SIZE:
            raise MaskrayError(f"--size {self.size}: image side must be {MIN_SIZE}..{MAX_SIZE} pixels")
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
        return self.fov_mm / self.size


# ------------------------------------------------------------------------------------- chord lengths
def _ellipse_chord(u: np.ndarray, v: np.ndarray, depth: float) -> np.ndarray:
    """Chord along the beam through a solid whose normalised in-plane radius is ``sqrt(u^2 + v^2)``.

    For an ellipsoid with semi-axes (a, b, c) and ``u = dx / a``, ``v = dy / b``, the chord is
    ``2 c sqrt(1 - u^2 - v^2)``; ``depth`` is ``2 c``.
    """
    return depth * np.sqrt(np.maximum(1.0 - u * u - v * v, 0.0))


def _box(x0: float, x1: float, y0: float, y1: float, g: "_Grid") -> tuple[slice, slice] | None:
    """Pixel rows/columns whose centres may lie in the mm box; None when it misses the image."""
    c0 = max(int((x0 - g.x_min) / g.s) - 1, 0)
    c1 = min(int((x1 - g.x_min) / g.s) + 2, g.n)
    r0 = max(int((y0 - g.x_min) / g.s) - 1, 0)
    r1 = min(int((y1 - g.x_min) / g.s) + 2, g.n)
    if c0 >= c1 or r0 >= r1:
        return None
    return slice(r0, r1), slice(c0, c1)


@dataclass
class _Grid:
    """Pixel-centre coordinates (mm) of an ``n x n`` detector, after the in-plane tilt of the patient."""

    n: int
    s: float
    x_min: float
    X: np.ndarray
    Y: np.ndarray

    @classmethod
    def make(cls, n: int, fov: float, tilt_deg: float) -> "_Grid":
        s = fov / n
        c = (np.arange(n, dtype=np.float32) + 0.5) * s - fov / 2
        x, y = np.meshgrid(c, c)
        t = math.radians(tilt_deg)
        # Tilting the patient by t is evaluating the upright patient on coordinates rotated by -t.
        X = (math.cos(t) * x + math.sin(t) * y).astype(np.float32)
        Y = (-math.sin(t) * x + math.cos(t) * y).astype(np.float32)
        return cls(n, s, -fov / 2, X, Y)


def _tube(g: _Grid, out: np.ndarray, xs: np.ndarray, ys: np.ndarray, half_h: np.ndarray, half_d: float,
          cortex: float, gain: float = 1.0, footprint: np.ndarray | None = None, lateral: float | None = None,
          cx: float = 0.0) -> None:
    """Add the bone of a tube with a cortical rim, whose axis runs in the image plane along a curve.

    The curve is a polyline ``(xs, ys)`` monotone in x. A pixel's in-plane distance to the axis is
    ``|y - f(x)| cos(atan f'(x))``; the chord through an elliptic cross-section of half-height ``h`` and
    half-depth ``d`` is ``2 d sqrt(1 - (dist / h)^2)``. Cortex minus marrow gives the bright rim.
    ``lateral`` (mm): where the rib turns along the beam near the chest wall its chord grows as
    ``1 / sin`` of the angle; approximated by ``1 / sqrt(1 - (|x - cx| / lateral)^2)``, capped.
    """
    order = np.argsort(xs)
    xs, ys, half_h = xs[order], ys[order], half_h[order]
    hmax = float(half_h.max())
    box = _box(float(xs[0]), float(xs[-1]), float(ys.min()) - hmax, float(ys.max()) + hmax, g)
    if box is None:
        return
    X, Y = g.X[box], g.Y[box]
    inside = (X >= xs[0]) & (X <= xs[-1])
    f = np.interp(X, xs, ys)
    slope = np.gradient(ys, xs)
    cosang = 1.0 / np.sqrt(1.0 + np.interp(X, xs, slope) ** 2)
    h = np.interp(X, xs, half_h)
    dist = (Y - f) * cosang
    outer = _ellipse_chord(dist / h, 0.0, 2 * half_d)
    inner = _ellipse_chord(dist / np.maximum(h - cortex, 0.3), 0.0, 2 * max(half_d - cortex, 0.3))
    p = (MU_CORTEX - MU_TISSUE) * outer - (MU_CORTEX - MU_MARROW) * inner
    if lateral is not None:
        q = np.minimum(np.abs(X - cx) / lateral, 0.9)
        p = p / np.sqrt(1.0 - q * q)
    p = np.where(inside, p * gain, 0.0)
    out[box] += p
    if footprint is not None:
        footprint[box] |= (outer > 0) & inside


def _capsule(g: _Grid, out: np.ndarray, p0: np.ndarray, p1: np.ndarray, r: float) -> None:
    """Add the chord through a cylinder of radius ``r`` around segment p0-p1 (in the image plane)."""
    box = _box(min(p0[0], p1[0]) - r, max(p0[0], p1[0]) + r, min(p0[1], p1[1]) - r, max(p0[1], p1[1]) + r, g)
    if box is None:
        return
    X, Y = g.X[box], g.Y[box]
    d = p1 - p0
    L2 = float(d @ d) + 1e-9
    t = np.clip(((X - p0[0]) * d[0] + (Y - p0[1]) * d[1]) / L2, 0.0, 1.0)
    dx, dy = X - p0[0] - t * d[0], Y - p0[1] - t * d[1]
    out[box] += 2.0 * np.sqrt(np.maximum(r * r - dx * dx - dy * dy, 0.0))


# ------------------------------------------------------------------------------------------- anatomy
@dataclass
class Anatomy:
    """Per-case anatomy, all lengths in mm; drawn by :func:`sample_anatomy`."""

    width: float  # half-width of the rib cage
    depth: float  # half-depth of the torso
    fat: float
    x0: float  # patient centre
    y_top: float  # lung apex
    height: float  # apex to costophrenic angles
    insp: float  # inspiration, 0 (shallow) .. 1 (deep)
    ctr: float  # cardiothoracic ratio
    heart_tilt: float  # degrees
    rot: float  # axial rotation, degrees
    tilt: float  # in-plane tilt, degrees
    exposure: float
    window: float
    dome_r: float
    dome_l: float
    gastric: bool
    vessels: list  # (p0, p1, radius) segments


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    insp = float(rng.uniform(0.0, 1.0))
    a = Anatomy(
        width=float(150 * rng.uniform(0.9, 1.1)), depth=float(105 * rng.uniform(0.88, 1.15)),
        fat=float(rng.uniform(0.0, 25.0)), x0=float(rng.normal(0, 5)),
        y_top=float(-163 + rng.normal(0, 6) + 12 * (1 - insp)), height=float(232 + 48 * insp + rng.normal(0, 8)),
        insp=insp, ctr=float(rng.uniform(0.40, 0.52)), heart_tilt=float(rng.uniform(28, 42)),
        rot=float(rng.uniform(-4, 4)), tilt=float(rng.uniform(-2, 2)), exposure=float(rng.lognormal(0, 0.3)),
        window=float(rng.normal(0, 0.05)), dome_r=float(44 - 16 * insp + rng.normal(0, 4)),
        dome_l=float(40 - 16 * insp + rng.normal(0, 4)), gastric=bool(rng.random() < 0.6), vessels=[],
    )
    for side in (-1, 1):
        hilum = np.array([a.x0 + side * 58, a.y_top + (0.42 if side < 0 else 0.38) * a.height])
        for ang in np.linspace(-115, 105, 5) + rng.normal(0, 8, 5):
            theta = math.radians(ang)
            d = np.array([side * math.cos(theta), math.sin(theta)])
            _branch(rng, a.vessels, hilum, d, 40.0 * rng.uniform(0.8, 1.2), 4.2, 3)
    return a


def _branch(rng, segs: list, p: np.ndarray, d: np.ndarray, length: float, r: float, gen: int) -> None:
    """Grow a pulmonary vessel tree: each segment forks in two, shorter and thinner."""
    q = p + d * length
    segs.append((p, q, r))
    if gen == 0:
        return
    for sign in (-1, 1):
        ang = math.radians(sign * rng.uniform(18, 36))
        c, s = math.cos(ang), math.sin(ang)
        nd = np.array([c * d[0] - s * d[1], s * d[0] + c * d[1]])
        _branch(rng, segs, q, nd, length * rng.uniform(0.62, 0.8), r * 0.66, gen - 1)


@dataclass
class Scene:
    """One case projected on one grid: line integral ``P`` (no nodules) and the structures' footprints."""

    P: np.ndarray
    lung_depth: np.ndarray  # remaining aerated lung chord, mm
    lung: np.ndarray  # visible lung field, bool
    heart: np.ndarray
    clavicle: np.ndarray
    rib: np.ndarray


def project(a: Anatomy, g: _Grid) -> Scene:
    """Line integrals (dimensionless, ``sum mu * chord``) of the anatomy through every pixel of ``g``."""
    X, Y = g.X, g.Y
    sh = math.sin(math.radians(a.rot))  # axial rotation: x shifts by z sin(rot) at depth z
    x0, top, H, W = a.x0, a.y_top, a.height, a.width
    ycp = top + H  # costophrenic angles
    # Body: an elliptic cylinder along y, narrowing to the neck above the shoulders; shoulders as ellipsoids.
    rows = Y[:, :1] if a.tilt == 0 else Y
    t = np.clip((rows - (top - 45)) / 60.0, 0.0, 1.0)
    half_w = 58 + (W + 24 + 0.6 * a.fat - 58) * t * t * (3 - 2 * t)
    body = _ellipse_chord((X - x0) / half_w, 0.0, 2 * (a.depth + 0.5 * a.fat))
    for side in (-1, 1):
        sx = x0 + side * (W + 12)
        body = np.maximum(body, _ellipse_chord((X - sx) / 62, (Y - top - 20) / 80, 110))
    P = MU_TISSUE * body
    bone_fp = np.zeros(X.shape, bool)
    # Lungs: superellipsoids whose footprint tapers to the apex; cut below by the diaphragm domes.
    lung = np.zeros(X.shape, np.float32)
    dome = np.full(X.shape, np.inf, np.float32)
    for side, dh in ((-1, a.dome_r), (1, a.dome_l)):
        med, lat = x0 + side * (30 if side < 0 else 34), x0 + side * (W - 10)
        frac = np.clip((Y - top) / H, 0.0, 1.2)
        half = 0.5 * abs(lat - med) * (0.72 + 0.28 * np.sqrt(frac))
        cx = 0.5 * (med + lat) + side * 0.5 * abs(lat - med) * (1 - (0.72 + 0.28 * np.sqrt(frac))) * 0.3
        b = 0.64 * H
        u = np.abs(X - cx) / half
        v = np.abs(Y - (top + b)) / b
        r = (u ** 2.6 + v ** 2.6) ** (1 / 2.6)
        on_side = (X - x0) * side > 0
        lung += np.where(on_side, _ellipse_chord(r, 0.0, 1.6 * a.depth), 0.0)
        # Dome: a half-ellipse in x over the lung; lateral end at the costophrenic angle.
        xc = 0.5 * (med + lat) - side * 8
        wd = abs(lat - xc) + 2
        ytop = ycp + (12 if side > 0 else 0)
        yd = ytop - dh * np.sqrt(np.clip(1 - ((X - xc) / wd) ** 2, 0.0, 1.0))
        dome = np.where(on_side, yd, dome)
    below = Y > dome
    lung[below] = 0.0
    # Heart: a tilted ellipsoid, left of the midline, sitting on the left dome.
    ah = a.ctr * W * 1.12
    bh = ah * 0.74
    th = math.radians(a.heart_tilt)
    ext_x = math.hypot(ah * math.cos(th), bh * math.sin(th))
    ext_y = math.hypot(ah * math.sin(th), bh * math.cos(th))
    hx = x0 - 42 - 60 * (a.ctr - 0.4) + ext_x - 35 * sh
    hy = ycp + 12 - a.dome_l - 0.62 * ext_y
    dx, dy = X - hx, Y - hy
    hu = (dx * math.cos(th) + dy * math.sin(th)) / ah
    hv = (-dx * math.sin(th) + dy * math.cos(th)) / bh
    heart = _ellipse_chord(hu, hv, 2 * 0.8 * a.depth)
    # Mediastinum (great vessels, oesophagus): a band from the neck down to the heart; aortic knob.
    mx = x0 + 4 - 20 * sh
    mw = 30 + 14 * np.clip((Y - top) / H, 0.0, 1.0)
    med = np.where(Y < hy, _ellipse_chord((X - mx) / mw, 0.0, 2 * 0.6 * a.depth), 0.0)
    med = np.maximum(med, _ellipse_chord((X - mx - 32) / 17, (Y - top - 58) / 16, 40))
    lung_depth = np.maximum(lung - heart - med, 0.0)
    lung_field = (lung_depth > 0) & (heart <= 0) & (med <= 0)
    P -= (MU_TISSUE - MU_LUNG) * lung_depth
    # Trachea: an air column down to the carina.
    tx = x0 - 15 * sh
    P -= MU_TISSUE * np.where(Y < top + 78, _ellipse_chord((X - tx) / 8.5, 0.0, 17), 0.0)
    # Gastric air under the left dome.
    if a.gastric:
        gx, gy = x0 + 0.55 * W, ycp + 12 - a.dome_l * 0.6 + 24
        P -= MU_TISSUE * _ellipse_chord((X - gx) / 26, (Y - gy) / 16, 30)
    # Pulmonary vessels: blood (soft tissue) in place of aerated lung, only within the lungs.
    ves = np.zeros(X.shape, np.float32)
    for p0, p1, r in a.vessels:
        _capsule(g, ves, p0, p1, r)
    P += (MU_TISSUE - MU_LUNG) * np.minimum(ves, lung_depth)
    # Spine: vertebral bodies (denser plates, lighter discs) with pedicle rings, posterior, so rotation shifts it.
    spx = x0 + 70 * sh
    pitch = (H + 55) / 11.5
    y_t1 = top - 12
    phase = np.mod((Y - y_t1) / pitch, 1.0)
    plate = np.where(phase < 0.8, 1.0, 0.6)
    vw = 19 + 6 * np.clip((Y - top) / H, 0.0, 1.0)
    body_ch = _ellipse_chord((X - spx) / vw, 0.0, 26)
    P += plate * (MU_MARROW + 0.004 - MU_TISSUE) * body_ch
    P += np.where(phase < 0.8, (MU_CORTEX - MU_MARROW) * 0.25, 0.0) * _ellipse_chord((X - spx) / vw, 0.0, 12) * (
        np.abs(X - spx) > vw - 3)
    hfoot = np.zeros(X.shape, np.float32)
    for k in range(13):
        yv = y_t1 + (k + 0.4) * pitch
        for side in (-1, 1):
            px = spx + side * (14 + 0.4 * k)
            box = _box(px - 8, px + 8, yv - 9, yv + 9, g)
            if box is None:
                continue
            u, v = (g.X[box] - px) / 5.5, (g.Y[box] - yv) / 7.5
            ring = _ellipse_chord(u, v, 14) - _ellipse_chord(u * 5.5 / 3.8, v * 7.5 / 5.8, 10)
            hfoot[box] += ring
    P += (MU_CORTEX - MU_TISSUE) * hfoot
    # Ribs: 12 a side; posterior arcs from the spine, anterior ones sloping down to the cartilage.
    rib_fp = np.zeros(X.shape, bool)
    slope = math.tan(math.radians(38 - 12 * a.insp))
    for k in range(12):
        yk = y_t1 + (k + 0.55) * pitch
        reach = (W - 2) * min(1.0, 0.6 + 0.4 * math.sqrt((k + 1) / 5))
        drop = 14 + 12 * (1 - a.insp) + 1.5 * k
        hh = 4.2 + 0.12 * k
        for side in (-1, 1):
            xa = spx + side * 12
            xb = x0 + side * reach
            xs = np.linspace(xa, xb, 24)
            uu = np.linspace(0, 1, 24)
            ys = yk - 9 * np.sin(np.pi * uu * 0.9) + drop * uu ** 2
            _tube(g, P, xs, ys, np.full(24, hh), 3.8, 1.3, footprint=rib_fp, lateral=reach + 10, cx=x0)
            xe = x0 + side * (48 + 2.5 * k) - 40 * sh
            xs2 = np.linspace(xb, xe, 16)
            vv = np.linspace(0, 1, 16)
            ys2 = ys[-1] + slope * abs(xb - xe) * (vv - 0.22 * vv * (1 - vv))
            _tube(g, P, xs2, ys2, np.full(16, 5.2), 2.6, 1.0, gain=0.85, footprint=rib_fp, lateral=reach + 10, cx=x0)
    bone_fp |= rib_fp
    # Clavicles: S-shaped tubes from the manubrium, anterior (shift opposite to the spine), up to the shoulders.
    clav_fp = np.zeros(X.shape, bool)
    for side in (-1, 1):
        xa, xb = x0 + side * 16 - 60 * sh, x0 + side * (W + 20)
        uu = np.linspace(0, 1, 24)
        xs = xa + (xb - xa) * uu
        ys = top + 22 - 36 * uu + 7 * np.sin(2 * np.pi * uu)
        _tube(g, P, xs, ys, 7.5 - 1.5 * uu, 9.0, 1.8, gain=1.3, footprint=clav_fp)
        # Humeral head.
        hxh, hyh = x0 + side * (W + 34), top - 4
        P += (MU_MARROW - MU_TISSUE + 0.006) * _ellipse_chord((X - hxh) / 26, (Y - hyh) / 26, 52)
    # The heart's silhouette ends at the diaphragm, as drawn on films.
    return Scene(P=P.astype(np.float32), lung_depth=lung_depth, lung=lung_field, heart=(heart > 0) & (Y <= dome + 4),
                 clavicle=clav_fp, rib=rib_fp)


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

    def chord(self, g: _Grid) -> tuple[tuple[slice, slice], np.ndarray] | None:
        r = max(self.a, self.b)
        box = _box(self.x - r, self.x + r, self.y - r, self.y + r, g)
        if box is None:
            return None
        dx, dy = g.X[box] - self.x, g.Y[box] - self.y
        c, s = math.cos(self.angle), math.sin(self.angle)
        return box, _ellipse_chord((dx * c + dy * s) / self.a, (-dx * s + dy * c) / self.b, 2 * self.c)


def sample_nodules(rng: np.random.Generator, cfg: PhantomConfig, g: _Grid, scene: Scene) -> list[Nodule]:
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
            grown = _ellipse_chord((g.X[box] - cx) / (max(nod.a, nod.b) + 0.7 * g.s), (g.Y[box] - cy) /
                                   (max(nod.a, nod.b) + 0.7 * g.s), 1.0) > 0
            if np.all(allowed[box][grown]) and not any(
                    math.hypot(cx - o.x, cy - o.y) < max(o.a, o.b) + max(nod.a, nod.b) + 3 for o in out):
                out.append(nod)
                break
    return out


def nodule_mask(nodules: list[Nodule], g: _Grid) -> np.ndarray:
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


def _pixel_of(nod: Nodule, g: _Grid) -> tuple[int, int]:
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
    n = cfg.size
    g = _Grid.make(n, cfg.fov_mm, a.tilt)
    scene = project(a, g)
    nodules = sample_nodules(rng, cfg, g, scene)
    # Small images are projected on a finer grid and binned, so thin ribs and vessels are not aliased.
    k = max(1, math.ceil(128 / n))
    if k > 1:
        gf = _Grid.make(n * k, cfg.fov_mm, a.tilt)
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
        "anatomy": {"inspiration": round(a.insp, 3), "cardiothoracic_ratio": round(a.ctr, 3),
                    "rotation_deg": round(a.rot, 2), "tilt_deg": round(a.tilt, 2),
                    "exposure": round(a.exposure, 3), "chest_half_width_mm": round(a.width, 1)},
    }
    return PhantomCase(image=image, label=label, meta=meta)


def _single(nod: Nodule, g: _Grid) -> np.ndarray:
    return nodule_mask([nod], g)


# ------------------------------------------------------------------------------------------- dataset
def case_id(index: int, n: int) -> str:
    return f"phantom_{index:0{max(5, len(str(max(n - 1, 0))))}d}"


def _work(job: tuple[PhantomConfig, str, int]) -> tuple[str, dict]:
    from maskray.data.layout import write_case

    cfg, root, index = job
    case = render_case(cfg, index)
    cid = case_id(index, cfg.n)
    write_case(root, cid, case.image, case.label, bit_depth=cfg.bit_depth)
    return cid, case.meta


def make_phantom(cfg: PhantomConfig, progress: bool = True) -> Path:
    """Write ``cfg.n`` phantom cases to ``cfg.out`` in the native layout; return the folder.

    Writes ``imagesTr/``, ``labelsTr/``, ``dataset.json`` (labels, spacing), ``splits.json``
    (patient = case: one image per patient), ``phantom.json`` (per case: nodules and anatomy) and
    ``run.json``. Files other than ``run.json`` are byte-identical for the same config.
    """
    from tqdm import tqdm

    from maskray.data.layout import DatasetInfo, prepare_output_dir, write_dataset_info, write_splits
    from maskray.provenance import atomic_write_text, write_run_info

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
    atomic_write_text(root / "phantom.json", json.dumps({
        "spacing_mm": cfg.spacing, "size": cfg.size, "seed": cfg.seed,
        "note": "center_px is (row, column); center_mm is (y, x) from the top-left corner",
        "cases": {c: results[c] for c in ids}}, indent=1))
    write_run_info(root, "phantom", cfg, seed=cfg.seed)
    return root
