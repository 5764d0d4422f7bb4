"""New conditioning masks made from existing label maps: add, move or remove pulmonary nodules.

A nodule is drawn as a star-shaped region whose radius is modulated by a few low-order harmonics,
``r(t) = r0 * (1 + sum_k a_k cos(k t + phi_k))``, k = 2..1+H: ``a_k = 0`` gives a disc, larger ``a_k`` a
lobulated outline. Diameters are sampled in millimetres from a clipped log-normal distribution (default
median 15 mm, clipped to 5..35 mm, the range of the nodules annotated in JSRT and NODE21) and converted to
pixels with the dataset's ``spacing``. A centre is drawn uniformly among the lung pixels whose Euclidean
distance (``scipy.ndimage.distance_transform_edt``, in mm) to the lung border is at least the nodule's outer
radius plus a margin, and to every other nodule at least its outer radius plus a gap.

Anatomy labels stay as they are: a nodule is painted only over lung pixels, and a removed nodule is filled
with the nearest lung label. Every random choice comes from :func:`maskray.data.rng.case_rng` ``(seed, case index)``, so a case is
reproducible on its own. ``masks.json`` records, for each new case,
its source case and every change (centres in pixels and mm, diameters in mm).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from maskray.config import option, overwrite_option
from maskray.data.dataset import Dataset, label_path
from maskray.data.io import write_label_file
from maskray.data.schema import DatasetInfo, write_dataset_info
from maskray.data.rng import case_rng
from maskray.errors import MaskrayError
from maskray.files import staged_output, write_json
from maskray.provenance import to_jsonable, write_run_info

MANIFEST = "masks.json"
Mode = Literal["add", "move", "remove", "copy"]


@dataclass(frozen=True)
class MaskSynthConfig:
    """How ``maskray masks`` makes new label maps. Lengths are in millimetres."""

    mode: Mode = option("add", help="add nodules, move or remove the existing ones, or copy the masks as they are")
    n: int | None = option(None, help="number of new cases (default: one per source case); sources are cycled")
    seed: int = option(0, help="seed; case i draws from case_rng(seed, i)")
    source_split: Literal["train", "val", "test", "all"] = option(
        "train", help="which split of the source to draw masks from (splits.json, else imagesTr/labelsTr)")
    min_nodules: int = option(1, help="fewest nodules added per case (mode add)")
    max_nodules: int = option(3, help="most nodules added per case (mode add)")
    diameter_median_mm: float = option(15.0, help="median nodule diameter (log-normal)")
    diameter_sigma: float = option(0.45, help="standard deviation of the log diameter")
    diameter_min_mm: float = option(5.0, help="smallest diameter (the distribution is clipped)")
    diameter_max_mm: float = option(35.0, help="largest diameter (the distribution is clipped)")
    lobulation: float = option(0.12, help="largest relative amplitude of each radial harmonic; 0 = round")
    harmonics: int = option(3, help="number of radial harmonics (orders 2..1+harmonics)")
    border_margin_mm: float = option(2.0, help="least distance from a nodule's edge to the lung border")
    min_gap_mm: float = option(5.0, help="least distance between the edges of two nodules")
    lung_labels: tuple[str, ...] = option(("lung", "left_lung", "right_lung", "lung_left", "lung_right"),
                                          help="label names that make up the lung fields (those present are used)")
    nodule_label: str = option("nodule", help="label name of nodules; added to dataset.json if missing")
    spacing_mm: float | None = option(None, help="pixel spacing to use when dataset.json has no 'spacing'")
    case_prefix: str = option("mask", help="new case identifiers are PREFIX_00000, PREFIX_00001, ...")
    overwrite: bool = overwrite_option()

    def check(self) -> None:
        """Refuse values no run could satisfy; names the option."""
        def bad(name: str, why: str) -> MaskrayError:
            return MaskrayError(f"option --{name.replace('_', '-')}: {why}")

        if self.n is not None and self.n < 1:
            raise bad("n", f"is {self.n}; must be at least 1")
        if not 0 <= self.min_nodules <= self.max_nodules or self.max_nodules < 1:
            raise bad("min_nodules", f"{self.min_nodules}..{self.max_nodules} is not a range with 0 <= min <= max, max >= 1")
        if not 0 < self.diameter_min_mm <= self.diameter_max_mm:
            raise bad("diameter_min_mm", f"{self.diameter_min_mm}..{self.diameter_max_mm} mm is not a positive range")
        if self.diameter_median_mm <= 0 or self.diameter_sigma < 0:
            raise bad("diameter_median_mm", "median must be > 0 and sigma >= 0")
        if not 0 <= self.lobulation < 0.5:
            raise bad("lobulation", f"is {self.lobulation}; allowed 0 <= lobulation < 0.5")
        if self.harmonics < 0 or self.border_margin_mm < 0 or self.min_gap_mm < 0:
            raise bad("harmonics", "harmonics, border margin and gap must be >= 0")
        if self.spacing_mm is not None and self.spacing_mm <= 0:
            raise bad("spacing_mm", f"is {self.spacing_mm}; must be > 0")
        if not self.case_prefix or any(c in self.case_prefix for c in "/\\. "):
            raise bad("case_prefix", f"{self.case_prefix!r} must be non-empty, without '/', '\\\\', '.', or spaces")


# ------------------------------------------------------------------------------------------- geometry
def sample_diameters_mm(rng: np.random.Generator, k: int, cfg: MaskSynthConfig) -> np.ndarray:
    """``k`` diameters (mm) from a log-normal with the configured median and sigma, clipped to [min, max]."""
    d = rng.lognormal(np.log(cfg.diameter_median_mm), cfg.diameter_sigma, size=k)
    return np.clip(d, cfg.diameter_min_mm, cfg.diameter_max_mm)


@dataclass(frozen=True)
class NoduleShape:
    """A star-shaped outline: ``r(t) = radius_mm * (1 + sum_k amp[k] cos(order[k] t + phase[k]))``."""

    radius_mm: float
    orders: tuple[int, ...] = ()
    amps: tuple[float, ...] = ()
    phases: tuple[float, ...] = ()

    @property
    def outer_radius_mm(self) -> float:
        return self.radius_mm * (1.0 + float(sum(self.amps)))

    def radius_at(self, theta: np.ndarray) -> np.ndarray:
        r = np.ones_like(theta)
        for k, a, p in zip(self.orders, self.amps, self.phases):
            r = r + a * np.cos(k * theta + p)
        return self.radius_mm * r


def random_shape(rng: np.random.Generator, diameter_mm: float, cfg: MaskSynthConfig) -> NoduleShape:
    orders = tuple(range(2, 2 + cfg.harmonics))
    amps = tuple(float(rng.uniform(0.0, cfg.lobulation)) for _ in orders)
    phases = tuple(float(rng.uniform(0.0, 2 * np.pi)) for _ in orders)
    return NoduleShape(diameter_mm / 2.0, orders, amps, phases)


def rasterize(shape: NoduleShape, centre: tuple[int, int], size: tuple[int, int], spacing: tuple[float, float]) -> np.ndarray:
    """bool ``(H, W)``: pixels whose centre lies inside the outline; the centre pixel always does."""
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]]
    dy, dx = (yy - centre[0]) * spacing[0], (xx - centre[1]) * spacing[1]
    inside = np.hypot(dy, dx) <= shape.radius_at(np.arctan2(dy, dx))
    inside[centre] = True
    return inside


def distance_mm(mask: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """Distance (mm) of every pixel to the nearest pixel outside ``mask`` (0 outside it)."""
    if not mask.any():
        return np.zeros(mask.shape)
    if mask.all():  # no outside pixel: distance to the image border instead
        padded = np.pad(mask, 1, constant_values=False)
        return ndimage.distance_transform_edt(padded, sampling=spacing)[1:-1, 1:-1]
    return ndimage.distance_transform_edt(mask, sampling=spacing)


@dataclass
class MaskCase:
    """Working state of one label map: values, which values are lung, and the nodule value."""

    label: np.ndarray  # int64 (H, W)
    lung_values: tuple[int, ...]
    nodule_value: int
    spacing: tuple[float, float]

    @property
    def lung(self) -> np.ndarray:
        return np.isin(self.label, self.lung_values)

    @property
    def nodules(self) -> np.ndarray:
        return self.label == self.nodule_value

    def field(self) -> np.ndarray:
        """The lung fields including the nodules inside them."""
        return self.lung | self.nodules

    def feasible(self, outer_mm: float, cfg: MaskSynthConfig) -> np.ndarray:
        """bool ``(H, W)``: centres where a nodule of outer radius ``outer_mm`` keeps margin and gap."""
        ok = distance_mm(self.field(), self.spacing) >= outer_mm + cfg.border_margin_mm
        nod = self.nodules
        if nod.any():
            ok &= ndimage.distance_transform_edt(~nod, sampling=self.spacing) >= outer_mm + cfg.min_gap_mm
        return ok

    def paint(self, region: np.ndarray) -> int:
        """Paint ``region`` as nodule over lung pixels only; returns the number of pixels painted."""
        region = region & self.lung
        self.label[region] = self.nodule_value
        return int(region.sum())

    def erase(self, region: np.ndarray) -> None:
        """Give nodule pixels in ``region`` the value of the nearest lung pixel (left/right lungs stay apart)."""
        lung = self.lung
        if not lung.any():
            raise MaskrayError("cannot remove a nodule from a case with no lung pixels")
        _, (iy, ix) = ndimage.distance_transform_edt(~lung, sampling=self.spacing, return_indices=True)
        region = region & self.nodules
        self.label[region] = self.label[iy[region], ix[region]]


def _centre_record(c: tuple[int, int], spacing: tuple[float, float]) -> dict:
    return {"centre_px": [int(c[0]), int(c[1])], "centre_mm": [round(c[0] * spacing[0], 3), round(c[1] * spacing[1], 3)]}


def _equivalent_diameter_mm(n_pixels: int, spacing: tuple[float, float]) -> float:
    return float(2.0 * np.sqrt(n_pixels * spacing[0] * spacing[1] / np.pi))


def _pick(rng: np.random.Generator, ok: np.ndarray) -> tuple[int, int]:
    idx = np.flatnonzero(ok)
    flat = int(idx[rng.integers(len(idx))])
    return divmod(flat, ok.shape[1])


def add_nodules(case: MaskCase, rng: np.random.Generator, cfg: MaskSynthConfig, where: str,
                restarts: int = 20) -> list[dict]:
    """Add ``min..max`` new nodules; raises :class:`MaskrayError` if one is larger than the lung or they cannot fit.

    Sizes and shapes are drawn once; if the random placement of one leaves no room for the next, placement
    starts again (up to ``restarts`` times) before the request is called impossible.
    """
    k = int(rng.integers(cfg.min_nodules, cfg.max_nodules + 1))
    # Largest first: the hardest one to place goes while the lung is emptiest.
    diameters = np.sort(sample_diameters_mm(rng, k, cfg))[::-1]
    shapes = [random_shape(rng, float(d), cfg) for d in diameters]
    largest_fit = 2.0 * max(float(distance_mm(case.field(), case.spacing).max()) - cfg.border_margin_mm, 0.0)
    for d, shape in zip(diameters, shapes):
        if 2 * shape.outer_radius_mm > largest_fit:
            raise MaskrayError(
                f"{where}: a nodule of {d:.1f} mm (outer {2 * shape.outer_radius_mm:.1f} mm) is larger than the lung "
                f"allows (at most {largest_fit:.1f} mm with --border-margin-mm {cfg.border_margin_mm}); "
                f"lower --diameter-max-mm / --lobulation or check dataset.json 'spacing'")
    original = case.label.copy()
    placed = 0
    for _ in range(restarts):
        case.label[...] = original
        changes = []
        for d, shape in zip(diameters, shapes):
            ok = case.feasible(shape.outer_radius_mm, cfg)
            if not ok.any():
                break
            c = _pick(rng, ok)
            n_px = case.paint(rasterize(shape, c, case.label.shape, case.spacing))
            changes.append({"action": "add", **_centre_record(c, case.spacing), "diameter_mm": round(float(d), 3),
                            "equivalent_diameter_mm": round(_equivalent_diameter_mm(n_px, case.spacing), 3),
                            "area_px": n_px, "lobulation": [round(a, 4) for a in shape.amps]})
        if len(changes) == k:
            return changes
        placed = max(placed, len(changes))
    case.label[...] = original
    raise MaskrayError(
        f"{where}: at most {placed} of {k} nodules ({', '.join(f'{d:.1f}' for d in diameters)} mm) fit with "
        f"--min-gap-mm {cfg.min_gap_mm} and --border-margin-mm {cfg.border_margin_mm} ({restarts} tries); "
        f"ask for fewer (--max-nodules) or smaller (--diameter-max-mm) nodules")


def _components(case: MaskCase) -> list[np.ndarray]:
    lab, n = ndimage.label(case.nodules)
    return [lab == i for i in range(1, n + 1)]


def remove_nodules(case: MaskCase, where: str) -> list[dict]:
    changes = []
    for comp in _components(case):
        c = tuple(int(round(v)) for v in ndimage.center_of_mass(comp))
        n_px = int(comp.sum())
        case.erase(comp)
        changes.append({"action": "remove", **_centre_record(c, case.spacing), "area_px": n_px,
                        "equivalent_diameter_mm": round(_equivalent_diameter_mm(n_px, case.spacing), 3)})
    return changes


def move_nodules(case: MaskCase, rng: np.random.Generator, cfg: MaskSynthConfig, where: str) -> list[dict]:
    """Lift every nodule out, then put each back, same shape, at a new feasible place."""
    comps = _components(case)
    lifted = []
    for comp in comps:
        ys, xs = np.nonzero(comp)
        cy, cx = int(round(ys.mean())), int(round(xs.mean()))
        offsets = np.stack([ys - cy, xs - cx], 1)
        # Outer radius in mm, plus half a pixel diagonal so the margin holds for the pixel's full extent.
        outer = float(np.max(np.hypot(offsets[:, 0] * case.spacing[0], offsets[:, 1] * case.spacing[1])))
        outer += 0.5 * float(np.hypot(*case.spacing))
        lifted.append(((cy, cx), offsets, outer))
        case.erase(comp)
    changes = []
    h, w = case.label.shape
    for j, (old, offsets, outer) in enumerate(sorted(lifted, key=lambda t: -t[2])):
        ok = case.feasible(outer, cfg)
        if not ok.any():
            raise MaskrayError(f"{where}: nodule {j + 1} of {len(lifted)} (outer diameter {2 * outer:.1f} mm) has "
                               f"no place left that keeps --border-margin-mm and --min-gap-mm")
        c = _pick(rng, ok)
        region = np.zeros_like(case.label, dtype=bool)
        yy, xx = offsets[:, 0] + c[0], offsets[:, 1] + c[1]
        inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        region[yy[inside], xx[inside]] = True
        n_px = case.paint(region)
        changes.append({"action": "move", "from": _centre_record(old, case.spacing), "to": _centre_record(c, case.spacing),
                        "area_px": n_px,
                        "equivalent_diameter_mm": round(_equivalent_diameter_mm(n_px, case.spacing), 3)})
    return changes


# ------------------------------------------------------------------------------------------- dataset
def resolve_labels(info: DatasetInfo, cfg: MaskSynthConfig, where: Path) -> tuple[dict[str, int], tuple[int, ...], int, str | None]:
    """Output labels, lung values, nodule value, and a note when the nodule label had to be added."""
    labels = dict(info.labels)
    lung_values = tuple(v for name, v in labels.items() if name in cfg.lung_labels)
    if not lung_values:
        raise MaskrayError(f"{where}/dataset.json: no lung label (looked for {', '.join(cfg.lung_labels)}; "
                           f"labels are {', '.join(labels)}); name the lung labels with --lung-labels")
    note = None
    if cfg.nodule_label in labels:
        nodule_value = labels[cfg.nodule_label]
        if nodule_value in lung_values or nodule_value == 0:
            raise MaskrayError(f"--nodule-label {cfg.nodule_label!r} is a lung or background label in {where}/dataset.json")
    else:
        nodule_value = max(labels.values()) + 1
        if nodule_value > 255:
            raise MaskrayError(f"{where}/dataset.json: no free label value left for '{cfg.nodule_label}'")
        labels[cfg.nodule_label] = nodule_value
        note = f"dataset.json had no label '{cfg.nodule_label}'; added it with value {nodule_value}"
    return labels, lung_values, nodule_value, note


def pixel_spacing(info: DatasetInfo, cfg: MaskSynthConfig, where: Path) -> tuple[float, float]:
    if info.spacing is not None:
        sp = tuple(float(s) for s in info.spacing)
        if len(sp) == 1:
            sp = (sp[0], sp[0])
        if min(sp) <= 0:
            raise MaskrayError(f"{where}/dataset.json: 'spacing' {list(info.spacing)} must be positive (mm)")
        return sp  # type: ignore[return-value]
    if cfg.spacing_mm is None:
        raise MaskrayError(f"{where}/dataset.json: no 'spacing' (mm per pixel); add it or pass --spacing-mm")
    return (cfg.spacing_mm, cfg.spacing_mm)


def synthesize_case(label: np.ndarray, rng: np.random.Generator, cfg: MaskSynthConfig, lung_values: tuple[int, ...],
                    nodule_value: int, spacing: tuple[float, float], where: str = "case") -> tuple[np.ndarray, list[dict]]:
    """One new label map (int64 ``(H, W)``) from ``label`` and the list of changes made; ``label`` is not modified."""
    case = MaskCase(np.array(label, dtype=np.int64, copy=True), lung_values, nodule_value, spacing)
    if cfg.mode != "copy" and not case.lung.any():
        raise MaskrayError(f"{where}: no lung pixels (lung values {list(lung_values)}); nodules need a lung field")
    if cfg.mode == "add":
        changes = add_nodules(case, rng, cfg, where)
    elif cfg.mode == "move":
        changes = move_nodules(case, rng, cfg, where)
    elif cfg.mode == "remove":
        changes = remove_nodules(case, where)
    else:
        changes = []
    return case.label, changes


def synthesize_masks(src: str | os.PathLike, out: str | os.PathLike, cfg: MaskSynthConfig | None = None) -> Path:
    """Write a mask-only dataset (``labelsTr/`` + ``dataset.json`` + ``masks.json`` + ``run.json``) to ``out``.

    Source cases (labelled cases of ``cfg.source_split``; for ``move``/``remove`` only those with nodules)
    are cycled to make ``cfg.n`` new cases. The output appears complete or not at all: it is built in a
    temporary sibling folder and renamed into place.
    """
    cfg = cfg or MaskSynthConfig()
    cfg.check()
    src, out = Path(src), Path(out)
    ds = Dataset(src)
    if cfg.mode == "copy":  # nothing is drawn: the source's labels and spacing stay as they are, none required
        labels, lung_values, nodule_value, note, spacing = dict(ds.info.labels), (), None, None, ds.info.spacing
    else:
        labels, lung_values, nodule_value, note = resolve_labels(ds.info, cfg, src)
        spacing = pixel_spacing(ds.info, cfg, src)
    ids = ds.case_ids(None if cfg.source_split == "all" else cfg.source_split, labelled=True)
    if not ids:
        raise MaskrayError(f"{src}: no labelled cases in split '{cfg.source_split}' (choose another --source-split)")
    if cfg.mode in ("move", "remove"):
        ids = [c for c in ids if (ds.label(c).numpy() == nodule_value).any()]
        if not ids:
            raise MaskrayError(f"{src}: no case in split '{cfg.source_split}' has a '{cfg.nodule_label}' to {cfg.mode}")
    n = cfg.n or len(ids)

    manifest: dict = {"source": str(src.resolve()), "mode": cfg.mode, "seed": cfg.seed, "spacing_mm": list(spacing) if spacing else None,
                      "nodule_label": cfg.nodule_label, "nodule_value": nodule_value, "notes": [note] if note else [],
                      "cases": {}}
    with staged_output(out, cfg.overwrite) as tmp:
        cache: dict[str, np.ndarray] = {}
        for i in tqdm(range(n), desc=f"masks ({cfg.mode})", unit="case", disable=None):
            sid = ids[i % len(ids)]
            if sid not in cache:
                cache[sid] = ds.label(sid).numpy()
            new_id = f"{cfg.case_prefix}_{i:05d}"
            lab, changes = synthesize_case(cache[sid], case_rng(cfg.seed, i), cfg, lung_values, nodule_value,
                                           spacing, where=f"{ds.cases[sid].label_path} (case {sid})")
            write_label_file(label_path(tmp, new_id, "Tr", ".png"), lab)
            manifest["cases"][new_id] = {"source_case": sid, "seed": [cfg.seed, i], "changes": changes}
        info = replace(ds.info, labels=labels, file_ending=".png", spacing=spacing,
                       extra={**ds.info.extra, "mask_only": True})
        write_dataset_info(tmp, info, n)
        write_json(tmp / MANIFEST, to_jsonable(manifest))
        write_run_info(tmp, "masks", cfg, seed=cfg.seed, extra={"source": str(src.resolve()), "notes": manifest["notes"]})
    out = Path(out).resolve()
    if note:
        print(f"maskray masks: {note}")
    return out
