"""The phantom's body: per-case anatomy drawn from a seeded generator, and its projection through a detector grid
by analytic line integrals (closed-form chord lengths through ellipsoids, elliptic cylinders, tubes around curves
and superellipsoid lungs). See :mod:`maskray.data.phantom` for the whole model, the nodules and the detector.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Linear attenuation coefficients in 1/mm at an effective energy near 60 keV.
MU_TISSUE = 0.020
MU_LUNG = 0.005  # aerated lung: about a quarter of soft tissue
MU_CORTEX = 0.048
MU_MARROW = 0.027


# ------------------------------------------------------------------------------------- chord lengths
def ellipse_chord(u: np.ndarray, v: np.ndarray, depth: float) -> np.ndarray:
    """Chord along the beam through a solid whose normalised in-plane radius is ``sqrt(u^2 + v^2)``.

    For an ellipsoid with semi-axes (a, b, c) and ``u = dx / a``, ``v = dy / b``, the chord is
    ``2 c sqrt(1 - u^2 - v^2)``; ``depth`` is ``2 c``.
    """
    return depth * np.sqrt(np.maximum(1.0 - u * u - v * v, 0.0))


def pixel_box(x0: float, x1: float, y0: float, y1: float, g: "Grid") -> tuple[slice, slice] | None:
    """Pixel rows/columns whose centres may lie in the mm box; None when it misses the image."""
    c0 = max(int((x0 - g.x_min) / g.s) - 1, 0)
    c1 = min(int((x1 - g.x_min) / g.s) + 2, g.n)
    r0 = max(int((y0 - g.x_min) / g.s) - 1, 0)
    r1 = min(int((y1 - g.x_min) / g.s) + 2, g.n)
    if c0 >= c1 or r0 >= r1:
        return None
    return slice(r0, r1), slice(c0, c1)


@dataclass
class Grid:
    """Pixel-centre coordinates (mm) of an ``n x n`` detector, after the in-plane tilt of the patient."""

    n: int
    s: float
    x_min: float
    X: np.ndarray
    Y: np.ndarray

    @classmethod
    def make(cls, n: int, fov: float, tilt_deg: float) -> "Grid":
        s = fov / n
        c = (np.arange(n, dtype=np.float32) + 0.5) * s - fov / 2
        x, y = np.meshgrid(c, c)
        t = math.radians(tilt_deg)
        # Tilting the patient by t is evaluating the upright patient on coordinates rotated by -t.
        X = (math.cos(t) * x + math.sin(t) * y).astype(np.float32)
        Y = (-math.sin(t) * x + math.cos(t) * y).astype(np.float32)
        return cls(n, s, -fov / 2, X, Y)


def _tube(g: Grid, out: np.ndarray, xs: np.ndarray, ys: np.ndarray, half_h: np.ndarray, half_d: float,
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
    box = pixel_box(float(xs[0]), float(xs[-1]), float(ys.min()) - hmax, float(ys.max()) + hmax, g)
    if box is None:
        return
    X, Y = g.X[box], g.Y[box]
    inside = (X >= xs[0]) & (X <= xs[-1])
    f = np.interp(X, xs, ys)
    slope = np.gradient(ys, xs)
    cosang = 1.0 / np.sqrt(1.0 + np.interp(X, xs, slope) ** 2)
    h = np.interp(X, xs, half_h)
    dist = (Y - f) * cosang
    outer = ellipse_chord(dist / h, 0.0, 2 * half_d)
    inner = ellipse_chord(dist / np.maximum(h - cortex, 0.3), 0.0, 2 * max(half_d - cortex, 0.3))
    p = (MU_CORTEX - MU_TISSUE) * outer - (MU_CORTEX - MU_MARROW) * inner
    if lateral is not None:
        q = np.minimum(np.abs(X - cx) / lateral, 0.9)
        p = p / np.sqrt(1.0 - q * q)
    p = np.where(inside, p * gain, 0.0)
    out[box] += p
    if footprint is not None:
        footprint[box] |= (outer > 0) & inside


def _capsule(g: Grid, out: np.ndarray, p0: np.ndarray, p1: np.ndarray, r: float) -> None:
    """Add the chord through a cylinder of radius ``r`` around segment p0-p1 (in the image plane)."""
    box = pixel_box(min(p0[0], p1[0]) - r, max(p0[0], p1[0]) + r, min(p0[1], p1[1]) - r, max(p0[1], p1[1]) + r, g)
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


def project(a: Anatomy, g: Grid) -> Scene:
    """Line integrals (dimensionless, ``sum mu * chord``) of the anatomy through every pixel of ``g``."""
    X, Y = g.X, g.Y
    sh = math.sin(math.radians(a.rot))  # axial rotation: x shifts by z sin(rot) at depth z
    P = _body(a, X, Y)
    lung, dome = _lungs(a, X, Y)
    heart, hy = _heart(a, X, Y, sh)
    # Mediastinum (great vessels, oesophagus): a band from the neck down to the heart; aortic knob.
    top, H = a.y_top, a.height
    mx = a.x0 + 4 - 20 * sh
    mw = 30 + 14 * np.clip((Y - top) / H, 0.0, 1.0)
    med = np.where(Y < hy, ellipse_chord((X - mx) / mw, 0.0, 2 * 0.6 * a.depth), 0.0)
    med = np.maximum(med, ellipse_chord((X - mx - 32) / 17, (Y - top - 58) / 16, 40))
    lung_depth = np.maximum(lung - heart - med, 0.0)
    lung_field = (lung_depth > 0) & (heart <= 0) & (med <= 0)
    P -= (MU_TISSUE - MU_LUNG) * lung_depth
    _air_and_vessels(a, g, P, sh, lung_depth)
    spx, pitch, y_t1 = _spine(a, g, P, sh)
    rib_fp = _ribs(a, g, P, sh, spx, pitch, y_t1)
    clav_fp = _clavicles(a, g, P, sh)
    # The heart's silhouette ends at the diaphragm, as drawn on films.
    return Scene(P=P.astype(np.float32), lung_depth=lung_depth, lung=lung_field, heart=(heart > 0) & (Y <= dome + 4),
                 clavicle=clav_fp, rib=rib_fp)


def _body(a: Anatomy, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Soft tissue: an elliptic cylinder along y, narrowing to the neck above the shoulders; shoulders as
    ellipsoids."""
    x0, top, W = a.x0, a.y_top, a.width
    rows = Y[:, :1] if a.tilt == 0 else Y
    t = np.clip((rows - (top - 45)) / 60.0, 0.0, 1.0)
    half_w = 58 + (W + 24 + 0.6 * a.fat - 58) * t * t * (3 - 2 * t)
    body = ellipse_chord((X - x0) / half_w, 0.0, 2 * (a.depth + 0.5 * a.fat))
    for side in (-1, 1):
        sx = x0 + side * (W + 12)
        body = np.maximum(body, ellipse_chord((X - sx) / 62, (Y - top - 20) / 80, 110))
    return MU_TISSUE * body


def _lungs(a: Anatomy, X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lung chords (superellipsoids whose footprint tapers to the apex, cut below by the diaphragm domes) and
    the domes' height per pixel."""
    x0, top, H, W = a.x0, a.y_top, a.height, a.width
    ycp = top + H  # costophrenic angles
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
        lung += np.where(on_side, ellipse_chord(r, 0.0, 1.6 * a.depth), 0.0)
        # Dome: a half-ellipse in x over the lung; lateral end at the costophrenic angle.
        xc = 0.5 * (med + lat) - side * 8
        wd = abs(lat - xc) + 2
        ytop = ycp + (12 if side > 0 else 0)
        yd = ytop - dh * np.sqrt(np.clip(1 - ((X - xc) / wd) ** 2, 0.0, 1.0))
        dome = np.where(on_side, yd, dome)
    below = Y > dome
    lung[below] = 0.0
    return lung, dome


def _heart(a: Anatomy, X: np.ndarray, Y: np.ndarray, sh: float) -> tuple[np.ndarray, float]:
    """Heart chords (a tilted ellipsoid left of the midline, sitting on the left dome) and its centre's y."""
    x0, W = a.x0, a.width
    ycp = a.y_top + a.height
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
    return ellipse_chord(hu, hv, 2 * 0.8 * a.depth), hy


def _air_and_vessels(a: Anatomy, g: Grid, P: np.ndarray, sh: float, lung_depth: np.ndarray) -> None:
    """Trachea (an air column down to the carina), gastric air under the left dome, and pulmonary vessels
    (blood in place of aerated lung, only within the lungs); added to ``P`` in place."""
    X, Y = g.X, g.Y
    x0, top, W = a.x0, a.y_top, a.width
    ycp = top + a.height
    tx = x0 - 15 * sh
    P -= MU_TISSUE * np.where(Y < top + 78, ellipse_chord((X - tx) / 8.5, 0.0, 17), 0.0)
    if a.gastric:
        gx, gy = x0 + 0.55 * W, ycp + 12 - a.dome_l * 0.6 + 24
        P -= MU_TISSUE * ellipse_chord((X - gx) / 26, (Y - gy) / 16, 30)
    ves = np.zeros(X.shape, np.float32)
    for p0, p1, r in a.vessels:
        _capsule(g, ves, p0, p1, r)
    P += (MU_TISSUE - MU_LUNG) * np.minimum(ves, lung_depth)


def _spine(a: Anatomy, g: Grid, P: np.ndarray, sh: float) -> tuple[float, float, float]:
    """Vertebral bodies (denser plates, lighter discs) with pedicle rings, posterior, so rotation shifts them;
    added to ``P`` in place. Returns the spine's x, the vertebral pitch and the y of T1."""
    X, Y = g.X, g.Y
    x0, top, H = a.x0, a.y_top, a.height
    spx = x0 + 70 * sh
    pitch = (H + 55) / 11.5
    y_t1 = top - 12
    phase = np.mod((Y - y_t1) / pitch, 1.0)
    plate = np.where(phase < 0.8, 1.0, 0.6)
    vw = 19 + 6 * np.clip((Y - top) / H, 0.0, 1.0)
    body_ch = ellipse_chord((X - spx) / vw, 0.0, 26)
    P += plate * (MU_MARROW + 0.004 - MU_TISSUE) * body_ch
    P += np.where(phase < 0.8, (MU_CORTEX - MU_MARROW) * 0.25, 0.0) * ellipse_chord((X - spx) / vw, 0.0, 12) * (
        np.abs(X - spx) > vw - 3)
    hfoot = np.zeros(X.shape, np.float32)
    for k in range(13):
        yv = y_t1 + (k + 0.4) * pitch
        for side in (-1, 1):
            px = spx + side * (14 + 0.4 * k)
            box = pixel_box(px - 8, px + 8, yv - 9, yv + 9, g)
            if box is None:
                continue
            u, v = (g.X[box] - px) / 5.5, (g.Y[box] - yv) / 7.5
            ring = ellipse_chord(u, v, 14) - ellipse_chord(u * 5.5 / 3.8, v * 7.5 / 5.8, 10)
            hfoot[box] += ring
    P += (MU_CORTEX - MU_TISSUE) * hfoot
    return spx, pitch, y_t1


def _ribs(a: Anatomy, g: Grid, P: np.ndarray, sh: float, spx: float, pitch: float, y_t1: float) -> np.ndarray:
    """12 ribs a side: posterior arcs from the spine, anterior ones sloping down to the cartilage; added to
    ``P`` in place. Returns their footprint."""
    x0, W = a.x0, a.width
    rib_fp = np.zeros(g.X.shape, bool)
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
    return rib_fp


def _clavicles(a: Anatomy, g: Grid, P: np.ndarray, sh: float) -> np.ndarray:
    """S-shaped clavicles from the manubrium, anterior (shifting opposite to the spine), up to the shoulders,
    and the humeral heads; added to ``P`` in place. Returns the clavicles' footprint."""
    X, Y = g.X, g.Y
    x0, top, W = a.x0, a.y_top, a.width
    clav_fp = np.zeros(X.shape, bool)
    for side in (-1, 1):
        xa, xb = x0 + side * 16 - 60 * sh, x0 + side * (W + 20)
        uu = np.linspace(0, 1, 24)
        xs = xa + (xb - xa) * uu
        ys = top + 22 - 36 * uu + 7 * np.sin(2 * np.pi * uu)
        _tube(g, P, xs, ys, 7.5 - 1.5 * uu, 9.0, 1.8, gain=1.3, footprint=clav_fp)
        hxh, hyh = x0 + side * (W + 34), top - 4
        P += (MU_MARROW - MU_TISSUE + 0.006) * ellipse_chord((X - hxh) / 26, (Y - hyh) / 26, 52)
    return clav_fp
