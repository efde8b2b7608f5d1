"""``medseg models``: list the model zoo (names, parameter counts, input size, what each variant is for).

Parameter counts are those of ``create(name, num_classes=9, img_size=<default size>)``. The models are built on
PyTorch's ``meta`` device, where tensors have shapes but no memory, so listing the 300M-parameter variants takes
milliseconds.

Counting needs torch and MONAI (seconds to import), so the full table is kept in a small cache,
``$MEDSEG_CACHE_DIR/models-table.json`` (default ``~/.cache/medseg``), together with what made it: a hash of the
model files' source and the medseg, torch and MONAI versions. A listing whose record matches is printed without
importing torch (well under a second); any change to a model file or a version rebuilds it. ``--refresh`` rebuilds
it always.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

#: Classes used for the parameter counts (Synapse 8 organs + background, as in the TransUNet paper).
TABLE_NUM_CLASSES = 9


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--family", help="only this architecture family (e.g. transunet, ds_transunet)")
    parser.add_argument("--json", action="store_true", help="print the table as JSON")
    parser.add_argument("--refresh", action="store_true", help="count the parameters again (ignore the cache)")


def count_parameters(name: str, num_classes: int = TABLE_NUM_CLASSES, img_size: "int | None" = None) -> "int | None":
    """Parameters of ``create(name, num_classes, img_size)`` (default size of the variant) without allocating them.

    The model is built on the ``meta`` device; an architecture that cannot be built there is built on the CPU.
    Returns ``None`` when the model cannot be built at all.
    """
    import torch

    from medseg.models.registry import create, get_spec

    size = img_size or get_spec(name).default_img_size
    for device in ("meta", "cpu"):
        try:
            with torch.device(device), torch.no_grad():
                model = create(name, num_classes=num_classes, img_size=size)
            return sum(parameter.numel() for parameter in model.parameters())
        except Exception as exc:  # report "?" rather than fail the whole listing
            logger.debug("counting parameters of %s on %s failed: %s", name, device, exc)
    return None


def official_comparison(name: str) -> "dict | None":
    """The variant's count in its official implementation beside medseg's at the same configuration, or None.

    medseg's count is taken at the official configuration (classes, channels, input size), restricted to the
    backbone where only the official backbone was counted; ``not_built`` is what the official model has and medseg
    builds no counterpart for (see :class:`medseg.models.registry.OfficialCount`).
    """
    import torch

    from medseg.models.registry import create, get_spec

    official = get_spec(name).official
    if official is None:
        return None
    with torch.device("meta"), torch.no_grad():
        model = create(name, num_classes=official.num_classes, img_size=official.img_size,
                       in_channels=official.in_channels)
    ours = sum(p.numel() for key, p in model.named_parameters()
               if not official.counted or key.startswith(official.counted))
    return {"parameters": official.parameters, "medseg": ours, "not_built": official.not_built,
            "equal": ours + official.not_built == official.parameters, "scope": official.scope,
            "num_classes": official.num_classes, "in_channels": official.in_channels,
            "img_size": official.img_size, "source": official.source}


def model_rows(family: "str | None" = None) -> list[dict]:
    """One dict per registered variant (optionally of one family), in the registry's order."""
    from medseg.models.registry import list_models

    rows = []
    for spec in list_models():
        if family is not None and spec.family != family:
            continue
        rows.append({
            "name": spec.name,
            "family": spec.family,
            "parameters": count_parameters(spec.name),
            "img_size": spec.default_img_size,
            "img_size_multiple": spec.img_size_multiple,
            "published": spec.published,
            "official": official_comparison(spec.name),
            "description": spec.description,
        })
    return rows


def format_table(rows: list[dict]) -> str:
    """The rows as an aligned text table."""
    header = ["name", "family", "parameters", "official code", "input", "kind", "description"]
    lines = [header]
    for row in rows:
        parameters = f"{row['parameters']:,}" if row["parameters"] is not None else "?"
        official = row.get("official")
        official_text = "-"
        if official:
            official_text = (f"{official['parameters']:,} {'=' if official['equal'] else '!='} "
                             f"({official['num_classes']} cls, {official['in_channels']} ch"
                             f"{', backbone' if official['scope'] == 'backbone' else ''})")
        lines.append([
            row["name"],
            row["family"],
            parameters,
            official_text,
            f"{row['img_size']}x{row['img_size']}",
            "published" if row["published"] else "small",
            row["description"],
        ])
    widths = [max(len(line[column]) for line in lines) for column in range(len(header) - 1)]
    right_aligned = {2}
    text = []
    for line in lines:
        cells = [cell.rjust(width) if column in right_aligned else cell.ljust(width)
                 for column, (cell, width) in enumerate(zip(line, widths))]
        text.append("  ".join(cells + [line[-1]]).rstrip())
    return "\n".join(text)


def cache_path() -> Path:
    """Where the table is cached: ``$MEDSEG_CACHE_DIR`` or ``$XDG_CACHE_HOME/medseg`` or ``~/.cache/medseg``."""
    root = os.environ.get("MEDSEG_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") \
        / "medseg"
    return Path(root) / "models-table.json"


def zoo_record() -> dict:
    """What the table depends on: sha256 of every model file's source, and the medseg / torch / MONAI versions."""
    from importlib import metadata

    from medseg import __version__

    digest = hashlib.sha256()
    for path in sorted((Path(__file__).resolve().parent.parent / "models").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    versions = {"medseg": __version__}
    for package in ("torch", "monai"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"models_source_sha256": digest.hexdigest(), "versions": versions, "num_classes": TABLE_NUM_CLASSES}


def all_rows(refresh: bool = False) -> list[dict]:
    """Every variant's row, from the cache when its record matches, else counted (and cached)."""
    from medseg.io import read_json, write_json

    record = zoo_record()
    path = cache_path()
    if not refresh and path.is_file():
        try:
            cached = read_json(path)
            if cached.get("record") == record:
                return cached["rows"]
        except Exception as exc:  # a damaged cache is rebuilt, never trusted
            logger.debug("ignoring the models cache %s: %s", path, exc)
    rows = model_rows()
    try:
        write_json(path, {"record": record, "rows": rows})
    except OSError as exc:  # a read-only home: list without caching
        logger.debug("cannot write the models cache %s: %s", path, exc)
    return rows


def run(args: argparse.Namespace) -> int:
    from medseg.errors import ConfigError

    rows = all_rows(refresh=getattr(args, "refresh", False))
    family = args.family
    if family is not None:
        families = sorted({row["family"] for row in rows})
        if family not in families:
            raise ConfigError(f"--family: unknown family {family!r} (known: {', '.join(families)})")
        rows = [row for row in rows if row["family"] == family]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows))
        print(f"\nparameters at the listed input size with {TABLE_NUM_CLASSES} classes; "
              "any multiple of the variant's size step works as input (img_size).\n"
              "official code: the official implementation's count at its published configuration (classes, "
              "channels); '=' means medseg built the same way has exactly that many,\nplus the official "
              "parameters medseg does not build (unused mmseg conv_seg heads, conv biases folded into BatchNorm).")
    return 0
