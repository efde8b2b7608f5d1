"""Paths written relative to the repository root that also work from ``notebooks/`` (Jupyter's working directory)."""
from __future__ import annotations

from pathlib import Path


def repository_root(start: "str | Path | None" = None) -> Path:
    """The nearest folder at or above ``start`` (default: the working directory) holding ``pipelines/`` and
    ``notebooks/``; the working directory itself when there is none (an installed medseg used elsewhere)."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pipelines").is_dir() and (folder / "notebooks").is_dir():
            return folder
    return here


def repo_path(path: "str | Path") -> Path:
    """``path`` as given when it is absolute or exists from the working directory; otherwise taken relative to
    :func:`repository_root`, so ``runs/demo`` means the same folder from the repository root and from
    ``notebooks/``."""
    path = Path(path).expanduser()
    if path.is_absolute() or path.exists():
        return path
    return repository_root() / path
