"""Slice cache size per case: version 2 (float32 images in [0, 1]) against version 3 (int16 HU, windowed when read).

For each case the script prepares the cohort once with the current medseg (version 3) and measures its files; the
version-2 size is measured by writing the image stack that version 2 stored (the windowed float32 values, which
version 3 gives back bit for bit when read) with ``np.save`` next to it. Cases: the real CT of tests/data/realct
(TotalSegmentator's example CT), small phantom cases and Synapse-sized phantom cases (``medseg synth``).

    python benchmarks/cache_size.py --small 2 --full 1 --write benchmarks/RESULTS.md
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from medseg.data.slice_cache import LABEL_FILE, load_case_arrays, load_manifest, prepare_cohort
from results_file import cpu_name, publish  # benchmarks/results_file.py

HEADING = "## Slice cache size per case (benchmarks/cache_size.py)"
REAL_CT = Path(__file__).resolve().parent.parent / "tests" / "data" / "realct"


def folder_bytes(paths) -> int:
    """Total size in bytes of the given files."""
    return sum(Path(p).stat().st_size for p in paths)


def measure_cache(raw_dir: Path, out_dir: Path, label: str) -> list[dict]:
    """Prepare ``raw_dir`` into ``out_dir``; one row per case: source, version-2 and version-3 sizes (bytes)."""
    prepare_cohort(raw_dir, out_dir, split="all-train", progress=False)
    rows = []
    for entry in load_manifest(out_dir)["cases"]:
        folder = out_dir / "cases" / entry["case_id"]
        image_record = entry["arrays"]["image"]
        windowed, _ = load_case_arrays(out_dir, entry["case_id"], mmap=False, entry=entry)
        v2_image = folder.parent / f"{entry['case_id']}_v2_image.npy"
        np.save(v2_image, windowed.astype(np.float32))
        label_bytes = (folder / LABEL_FILE).stat().st_size
        rows.append({
            "case": f"{label} {entry['case_id']}",
            "shape": "x".join(str(s) for s in entry["oriented_shape"]),
            "source": folder_bytes([entry["source_image"], entry["source_label"]]),
            "v2": v2_image.stat().st_size + label_bytes,
            "v3": image_record["bytes"] + label_bytes,
            "dtype": image_record["dtype"],
        })
        v2_image.unlink()
    return rows


def synth(out_dir: Path, cases: int, size: str) -> Path:
    """``medseg synth`` a phantom cohort (seed 0) into ``out_dir``."""
    subprocess.run([sys.executable, "-m", "medseg", "synth", str(out_dir), "--cases", str(cases), "--seed", "0",
                    "--size", size, "--no-preview"], check=True)
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=2, help="small phantom cases (128 x 128 in-plane)")
    parser.add_argument("--full", type=int, default=1, help="Synapse-sized phantom cases (512 x 512 in-plane)")
    parser.add_argument("--write", help="write the section into this RESULTS.md")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows += measure_cache(REAL_CT, tmp / "real_cache", "real CT")
        if args.small:
            rows += measure_cache(synth(tmp / "small", args.small, "small"), tmp / "small_cache", "phantom small")
        if args.full:
            rows += measure_cache(synth(tmp / "full", args.full, "full"), tmp / "full_cache", "phantom full")
    mb = 1e6
    lines = [HEADING, "",
             f"Command: `python benchmarks/cache_size.py --small {args.small} --full {args.full} --write "
             f"benchmarks/RESULTS.md`. Machine: {cpu_name()}. Sizes are bytes on disk of each case's arrays "
             "(image + label `.npy`; `case.json` is a few kB more); the source is the NIfTI image + label "
             "(gzip-compressed). Version 2 stored the image as float32 in [0, 1]; version 3 stores int16 HU "
             "(float32 HU where the values are not whole numbers) and windows each slice when it is read, giving the "
             "same float32 values bit for bit (tests/test_compact_cache.py).", "",
             "| case | oriented shape (H x W x D) | source NIfTI (MB) | cache v2 (MB) | cache v3 (MB) | v3 image dtype "
             "| v2 / source | v3 / source | v3 / v2 |",
             "|---|---|---:|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['shape']} | {r['source'] / mb:.2f} | {r['v2'] / mb:.2f} | "
                     f"{r['v3'] / mb:.2f} | {r['dtype']} | {r['v2'] / r['source']:.1f} | {r['v3'] / r['source']:.1f} "
                     f"| {r['v3'] / r['v2']:.2f} |")
    publish("\n".join(lines) + "\n", HEADING, args.write)


if __name__ == "__main__":
    main()
