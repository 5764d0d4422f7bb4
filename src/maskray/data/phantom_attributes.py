"""Sex- and age-like variation of the phantom, recorded as the attributes ``sex`` (F/M) and ``age`` (a band).

Sex scales the chest's width and depth (and with them lungs and heart); age changes the heart's size (the
cardiothoracic ratio) and the bone density (how strongly ribs, spine and clavicles attenuate). The attributes are
drawn from a generator of their own, so the other anatomy draws of a case are the same as without them.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

SEXES = ("F", "M")
AGE_BANDS = ("20-40", "40-60", "60-80")
# sex: chest width and depth (and with them the heart); age: heart size (cardiothoracic ratio) and bone density
SEX_SCALE = {"F": 0.9, "M": 1.07}
AGE_CTR = {"20-40": -0.03, "40-60": 0.0, "60-80": 0.05}
AGE_BONE = {"20-40": 1.15, "40-60": 0.95, "60-80": 0.7}


def sample_attributes(seed: int, index: int) -> dict[str, str]:
    """Sex and age band of case ``index``, from a generator of their own (so the anatomy draws do not shift)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index, 1)))
    return {"sex": SEXES[int(rng.integers(len(SEXES)))], "age": AGE_BANDS[int(rng.integers(len(AGE_BANDS)))]}


def with_attributes(a, attributes: dict[str, str]):
    """``a`` with the body size of its sex and the heart size and bone density of its age band."""
    k = SEX_SCALE[attributes["sex"]]
    age = attributes["age"]
    return replace(a, width=a.width * k, depth=a.depth * k, ctr=a.ctr + AGE_CTR[age],
                   bone=AGE_BONE[age])
