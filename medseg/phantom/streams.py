"""Random streams of the phantom: one numpy generator per purpose and case, so that e.g. the noise draw never
shifts the anatomy."""
from __future__ import annotations

import numpy as np

# Separate random streams, so that e.g. the noise draw never shifts the anatomy.
STREAM_ANATOMY, STREAM_GEOMETRY, STREAM_NOISE, STREAM_OMISSION, STREAM_CONTRAST = 1, 2, 3, 4, 5


def case_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """A numpy generator for one purpose (``stream``) of one case (or block of cases) of one seed."""
    return np.random.default_rng([int(seed), int(stream), int(index)])

