"""One random generator per case, shared by every command that draws cases (phantom, masks).

``case_rng(seed, index)`` depends only on the run seed and the case index, never on how many cases come
before it or which worker draws it, so one case re-runs alone to the same result. It is
``numpy.random.default_rng(SeedSequence(seed, spawn_key=(index,)))``: the ``index``-th child that
``SeedSequence(seed).spawn`` would give, a stream independent of every other case's (NumPy's documented way
to seed parallel streams).
"""

from __future__ import annotations

import numpy as np


def case_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of case ``index`` of a run seeded with ``seed``."""
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(index),)))
