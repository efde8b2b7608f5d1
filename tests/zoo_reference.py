"""Helpers for the zoo parity tests: the official weights regenerated from a key list, and the comparison rule.

The fixtures in ``tests/data/zoo`` (copied from the reference set; see ``tests/data/zoo/README.md``) hold, for each
official implementation, its ``state_dict`` layout (``key<TAB>shape<TAB>dtype`` in order) and its eval-mode outputs
for a fixed input. The weights themselves are not stored: one generator, consumed in key order, regenerates them
bit for bit (:func:`official_weights`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from helpers import DATA_DIR

ZOO = DATA_DIR / "zoo"
SEED = 20261201


def read_layout(path: Path) -> list[tuple[str, tuple[int, ...], str]]:
    """``(key, shape, dtype)`` rows of a state_dict TSV (shape ``()`` for 0-d)."""
    rows = []
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        key, shape, dtype = line.split("\t")
        dims = () if shape == "()" else tuple(int(d) for d in shape.split("x"))
        rows.append((key, dims, dtype))
    return rows


def official_weights(path: Path) -> dict[str, torch.Tensor]:
    """The reference model's weights, drawn in TSV order by the fixture's rule (see the fixture README).

    Integer entries are not drawn: ``num_batches_tracked`` is 0, other integer buffers (Swin's
    ``relative_position_index``) are returned as zeros of their shape and must be taken from the model.
    """
    return weights_for_layout(read_layout(path))


def weights_for_layout(rows: list[tuple[str, tuple[int, ...], str]]) -> dict[str, torch.Tensor]:
    """Tensors for ``(key, shape, dtype)`` rows by the fixture's weight rule (see :func:`official_weights`); also
    for a layout whose shapes a test has narrowed."""
    rng = np.random.default_rng(SEED)
    weights = {}
    for key, shape, dtype in rows:
        if dtype.startswith("int"):
            weights[key] = torch.zeros(shape, dtype=torch.int64)
            continue
        if key.endswith("running_var"):
            value = rng.uniform(0.5, 1.5, shape)
        elif len(shape) >= 2:
            value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
        elif len(shape) == 1 and key.endswith(".weight"):
            value = 1 + 0.1 * rng.standard_normal(shape)
        else:
            value = 0.1 * rng.standard_normal(shape)
        weights[key] = torch.from_numpy(np.asarray(value, dtype=np.float32))
    return weights


def official_shapes(path: Path) -> dict[str, torch.Tensor]:
    """The layout as meta tensors (shapes only): for strict-load checks of the published sizes at no cost."""
    return {key: torch.empty(shape, device="meta") for key, shape, _ in read_layout(path)}


def parity_io(name: str) -> dict[str, torch.Tensor]:
    """The fixture's ``input`` and reference outputs as tensors."""
    with np.load(ZOO / f"{name}_parity_io.npz") as data:
        return {key: torch.from_numpy(data[key]) for key in data.files}


def errors(actual: torch.Tensor, expected: torch.Tensor) -> tuple[float, float]:
    """(max absolute error, relative L2 error ``||a - e|| / ||e||``)."""
    difference = (actual.double() - expected.double())
    return difference.abs().max().item(), (difference.norm() / expected.double().norm()).item()


#: Largest relative L2 error ``||a - e|| / ||e||`` any parity output may have (the figure the README quotes). The
#: measured ones are at most 2.7e-6 (benchmarks/RESULTS.md); SegFormer with transformers' LayerNorm eps (1e-5
#: instead of the official 1e-6) gave 6.2e-6 on the reduced MiT fixture.
MAX_RELATIVE_L2 = 5e-6


def parity_tolerance(expected: torch.Tensor) -> float:
    """The fixture README's rule for the largest absolute error: ``1e-4 * max(1, max|e|)``."""
    return 1e-4 * max(1.0, expected.abs().max().item())


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """The fixture README's rule ``max|a - e| <= 1e-4 * max(1, max|e|)``, and relative L2 <= ``MAX_RELATIVE_L2``."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    max_abs, relative = errors(actual, expected)
    tolerance = parity_tolerance(expected)
    assert max_abs <= tolerance, f"{what}: max abs error {max_abs:.3g} > {tolerance:.3g} (rel L2 {relative:.3g})"
    assert relative <= MAX_RELATIVE_L2, f"{what}: relative L2 error {relative:.3g} > {MAX_RELATIVE_L2:.0e}"
