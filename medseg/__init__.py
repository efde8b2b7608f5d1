"""medseg: multi-organ segmentation of abdominal CT (TransUNet, DS-TransUNet and friends on Synapse/BTCV).

The public API is re-exported here; the command line and the YAML pipelines call the same functions.
"""
from __future__ import annotations

__version__ = "0.1.0"

from medseg.errors import CheckpointError, ConfigError, InputError, MedsegError  # noqa: E402
from medseg.io import Volume, read_volume, write_volume  # noqa: E402
from medseg.labels import BTCV13, SYNAPSE8, LabelSet, get_label_set  # noqa: E402

__all__ = [
    "__version__",
    "MedsegError",
    "InputError",
    "ConfigError",
    "CheckpointError",
    "Volume",
    "read_volume",
    "write_volume",
    "LabelSet",
    "SYNAPSE8",
    "BTCV13",
    "get_label_set",
]
