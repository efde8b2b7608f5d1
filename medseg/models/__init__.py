"""The model zoo: one architecture per file, all built by name with :func:`create`."""
from medseg.models.registry import ModelSpec, OfficialCount, create, get_spec, list_models, register_model

__all__ = ["ModelSpec", "OfficialCount", "create", "get_spec", "list_models", "register_model"]
