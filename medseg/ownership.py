"""Which folders and files are medseg's, and one writer per folder.

* **Lock** (:func:`folder_lock`): a run folder, training folder or export folder has one writer at a time. The lock
  is a file ``.medseg-lock`` created with ``O_CREAT | O_EXCL`` holding the writer's pid, host and start time; a
  second writer is refused with a one-line :class:`~medseg.errors.OutputError` naming the holder. A lock left by a
  process that is gone (same host, pid no longer alive) is stale and taken over. Advisory: it keeps medseg
  processes apart, nothing else.
* **Ownership record** (:func:`read_owned` / :func:`write_owned`): ``.medseg-owned.json`` in a folder lists the
  files (relative paths) medseg wrote there. medseg replaces or deletes only files that record lists; anything
  else in the folder is the user's and is left alone, or the operation is refused when such a file would be taken
  for medseg's output.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import socket
import time
from pathlib import Path
from typing import Iterator

from medseg.errors import OutputError
from medseg.io import process_alive, write_json

LOCK_FILE = ".medseg-lock"
OWNED_FILE = ".medseg-owned.json"


def _lock_content() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}


def _read_lock(path: Path) -> "dict | None":
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _held_here(holder: "dict | None") -> bool:
    """True when a lock's content names this process on this host."""
    return isinstance(holder, dict) and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname()


def lock_is_stale(holder: "dict | None") -> bool:
    """True when a lock's holder is a process of this host that is no longer alive (or the lock is unreadable
    garbage: a writer killed between creating and filling it)."""
    if not isinstance(holder, dict) or not isinstance(holder.get("pid"), int):
        return True
    return holder.get("host") == socket.gethostname() and not process_alive(holder["pid"])


def acquire_lock(folder: "str | Path", what: str = "folder") -> Path:
    """Create ``folder/.medseg-lock`` for this process (the folder is created when missing).

    Raises:
        OutputError: another live medseg process holds the lock (named with its pid, host and start time).
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{folder}: cannot create the {what} ({exc.strerror or type(exc).__name__})") from None
    path = folder / LOCK_FILE
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read_lock(path)
            if _held_here(holder):
                return path  # this process already holds it (a pipeline stage inside a locked run)
            if lock_is_stale(holder):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            raise OutputError(
                f"{folder}: {what} in use by another medseg process (pid {holder.get('pid')} on "
                f"{holder.get('host')}, since {holder.get('started')}); wait for it to finish, or delete {path} "
                "if that process is gone") from None
        except OSError as exc:
            raise OutputError(f"{path}: cannot create the lock file ({exc.strerror or type(exc).__name__})") from None
        with os.fdopen(fd, "w") as f:
            json.dump(_lock_content(), f)
        return path
    raise OutputError(f"{path}: could not take the lock (another process keeps replacing it)")


def release_lock(path: Path) -> None:
    """Remove a lock this process holds (a lock another process took over is left alone)."""
    if _held_here(_read_lock(path)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def folder_lock(folder: "str | Path", what: str = "folder") -> Iterator[Path]:
    """Hold ``folder``'s lock for the ``with`` block (re-entrant within one process: the outer holder releases)."""
    path = Path(folder) / LOCK_FILE
    already = _held_here(_read_lock(path))
    acquire_lock(folder, what)
    try:
        yield path
    finally:
        if not already:
            release_lock(path)


def read_owned(folder: "str | Path") -> "set[str] | None":
    """The relative paths medseg's record says it wrote in ``folder``, or None when the folder has no record."""
    path = Path(folder) / OWNED_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        return set(data["files"])
    except (OSError, ValueError, KeyError, TypeError):
        raise OutputError(f"{path}: unreadable medseg ownership record; delete it only if you know what wrote "
                          "the folder") from None


def write_owned(folder: "str | Path", files, kind: str) -> None:
    """Record (atomically) that medseg wrote ``files`` (relative paths) in ``folder`` as a ``kind`` output."""
    write_json(Path(folder) / OWNED_FILE, {"owner": "medseg", "kind": kind, "files": sorted(set(files))})


def files_under(folder: "str | Path", names) -> list[str]:
    """Relative paths (posix) of the regular files and links under ``folder/name`` for each of ``names``."""
    folder = Path(folder)
    found = []
    for name in names:
        top = folder / name
        if top.is_file() or top.is_symlink():
            found.append(Path(name).as_posix())
        elif top.is_dir():
            found += [p.relative_to(folder).as_posix() for p in sorted(top.rglob("*")) if not p.is_dir()]
    return found


def remove_owned(folder: "str | Path", files) -> None:
    """Delete the listed files of ``folder`` (relative paths) and the folders they leave empty; never others."""
    folder = Path(folder)
    parents = set()
    for name in files:
        path = folder / name
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        parents.update(p for p in path.parents if folder in p.parents)
    for parent in sorted(parents, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):  # not empty (a user's file) or already gone: kept
            parent.rmdir()


def disk_full(exc: BaseException) -> bool:
    """True when an OSError means the disk (or a file-size limit, or a quota) is full: ENOSPC, EFBIG, EDQUOT, or
    numpy's short write without an errno (``"4800 requested and 480 written"``)."""
    if not isinstance(exc, OSError):
        return False
    if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return True
    return exc.errno is None and re.search(r"\d+ requested and \d+ written", str(exc)) is not None


def write_failure(exc: BaseException) -> str:
    """Why a write failed, in words a user acts on: ``disk full or file-size limit reached (...)`` for ENOSPC,
    EFBIG and EDQUOT; for a RuntimeError (how torch.save reports any failed write, without an errno) the write
    failed and the disk or a file-size limit is named as the likely cause; else the error's first line."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if disk_full(exc):
        return f"disk full or file-size limit reached ({exc.strerror or text})"
    if isinstance(exc, RuntimeError):
        return f"the write failed: disk full or a file-size limit reached? ({text})"
    return text
