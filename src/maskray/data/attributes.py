"""Patient attributes of a dataset's cases (sex, age band, finding, site, ...): read from ``cases.json`` and, at
import, from a CSV.

``cases.json`` holds ``{case: {..., "attributes": {name: value}}}``; values are strings, an age is a band such as
``60-70`` (``--attribute-bins age=10`` bins a numeric column at import). A case without an attribute simply lacks
the key; the networks read that as "not given".
"""

from __future__ import annotations

import math
import os

from maskray.data.io import stem_of
from maskray.data.schema import CASES_FILE, read_cases_file
from maskray.data.splits import read_csv
from maskray.errors import MaskrayError


def read_case_attributes(root: str | os.PathLike) -> dict[str, dict[str, str]]:
    """``{case: {attribute: value}}`` from ``ROOT/cases.json`` (empty when the dataset records none)."""
    out = {}
    for cid, rec in read_cases_file(root).items():
        attrs = rec.get("attributes")
        if attrs is None:
            continue
        if not isinstance(attrs, dict):
            raise MaskrayError(f"{root}/{CASES_FILE}: case {cid}: 'attributes' must be an object of name -> value")
        out[cid] = {str(k): str(v) for k, v in attrs.items()}
    return out


def parse_bins(text: str | None) -> dict[str, float]:
    """``"age=10"`` -> ``{"age": 10.0}``: numeric columns binned into bands of that width."""
    out = {}
    for part in [p.strip() for p in (text or "").split(",") if p.strip()]:
        name, _, width = part.partition("=")
        try:
            out[name.strip()] = float(width)
        except ValueError:
            raise MaskrayError(f"--attribute-bins: '{part}' is not NAME=WIDTH (e.g. age=10)") from None
        if not out[name.strip()] > 0:
            raise MaskrayError(f"--attribute-bins: width of '{name}' must be positive")
    return out


def band(value: float, width: float) -> str:
    """The band of ``value`` of width ``width``: 63 with width 10 -> ``60-70``."""
    lo = math.floor(value / width) * width
    fmt = (lambda v: str(int(v))) if float(width).is_integer() else (lambda v: f"{v:g}")
    return f"{fmt(lo)}-{fmt(lo + width)}"


def attributes_from_csv(path: str | os.PathLike, columns: tuple[str, ...], file_column: str,
                        stems: list[str], bins: dict[str, float] | None = None) -> dict[str, dict[str, str]]:
    """``{source stem: {column: value}}`` for the images named in ``path``'s ``file_column``.

    Every problem is a one-line error naming the file and the row: a missing column, a row naming no image of
    the import, two rows for one image, an empty value, a non-numeric value in a binned column."""
    bins = bins or {}
    if not columns:
        raise MaskrayError(f"{path}: --attribute-columns names no column")
    unbinnable = sorted(set(bins) - set(columns))
    if unbinnable:
        raise MaskrayError(f"--attribute-bins names {unbinnable}, which are not in --attribute-columns")
    rows = read_csv(path, (file_column, *columns))
    known = set(stems)
    out: dict[str, dict[str, str]] = {}
    for i, row in enumerate(rows, start=2):  # row 1 is the header
        stem = stem_of(str(row[file_column] or "").strip())
        if stem not in known:
            raise MaskrayError(f"{path}: row {i} names {row[file_column]!r}, which is not among the imported images")
        if stem in out:
            raise MaskrayError(f"{path}: row {i} repeats {row[file_column]!r} (one row per image)")
        rec = {}
        for col in columns:
            value = (row[col] or "").strip()
            if not value:
                raise MaskrayError(f"{path}: row {i} has no value in column '{col}'")
            if col in bins:
                try:
                    value = band(float(value), bins[col])
                except ValueError:
                    raise MaskrayError(f"{path}: row {i} column '{col}' has {value!r}; a number is needed to bin "
                                       f"it") from None
            rec[col] = value
        out[stem] = rec
    return out
