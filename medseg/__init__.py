"""medseg: multi-organ segmentation of abdominal CT (TransUNet, DS-TransUNet and friends on Synapse/BTCV).

The public API is re-exported here; the command line and the YAML pipelines call the same functions.
"""
from __future__ import annotations

__version__ = "0.1.0"

from medseg.errors import CheckpointError, ConfigError, InputError, MedsegError  # noqa: E402
from medseg.io import Volume, read_volume, write_volume  # noqa: E402
from medseg.labels import BTCV13, SYNAPSE8, LabelSet, get_label_set  # noqa: E402

# The rest of the public API is imported on first use, so that `import medseg` (and the command line) stays fast
# and does not load torch for commands that do not need it.
_LAZY = {
    "discover_cases": "medseg.data.cohort",
    "make_split": "medseg.data.cohort",
    "prepare_cohort": "medseg.data.slice_cache",
    "SliceDataset": "medseg.data.dataset",
    "write_cohort": "medseg.phantom",
    "generate_case": "medseg.phantom",
    "create_model": ("medseg.models.registry", "create"),
    "list_models": "medseg.models.registry",
    "save_checkpoint": "medseg.models.checkpoint",
    "load_checkpoint": "medseg.models.checkpoint",
    "TrainConfig": "medseg.engine.config",
    "load_config": "medseg.engine.config",
    "train": "medseg.engine.train",
    "predict_volume": "medseg.engine.inference",
    "load_predictor": "medseg.engine.inference",
    "evaluate_case": "medseg.evaluation",
    "evaluate_folders": "medseg.evaluation",
    "write_reports": "medseg.evaluation",
    "find_series": "medseg.dicom",
    "read_series": "medseg.dicom",
    "read_dicom": "medseg.dicom",
    "write_series": "medseg.dicom",
    "write_dicom_seg": "medseg.dicom",
    "write_rtstruct": "medseg.dicom",
    "write_label_map": "medseg.prediction.outputs",
    "write_preview": "medseg.prediction.outputs",
    "organ_statistics": "medseg.prediction.outputs",
    "predict_cases": "medseg.prediction",
    "PredictSummary": "medseg.prediction",
    "PredictRequest": "medseg.schema",
    "load_pipeline": "medseg.pipeline",
    "run_pipeline": "medseg.pipeline",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'medseg' has no attribute {name!r}")
    import importlib

    module_name, attribute = _LAZY[name] if isinstance(_LAZY[name], tuple) else (_LAZY[name], name)
    value = getattr(importlib.import_module(module_name), attribute)
    globals()[name] = value
    return value


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
    *_LAZY,
]
