"""``medseg predict -i INPUT -o OUTPUT -m CHECKPOINT``: segment CT volumes, one label NIfTI per input.

INPUT is a ``.nii``/``.nii.gz`` file, a TransUNet ``.npy.h5`` volume, or a folder of them. OUTPUT is a file name
(``.nii.gz``/``.nii``, single input only) or a folder, where each prediction is named after its input
(``img0001.nii.gz`` -> ``img0001.nii.gz``; ``BTCV_01_0000.nii.gz`` -> ``BTCV_01.nii.gz``; ``case0001.npy.h5`` ->
``case0001.nii.gz``). Each prediction has exactly its input's shape and affine.

Every prediction records what made it inside the NIfTI file (a header extension, see
:func:`medseg.io.read_provenance`): the SHA-256 of the checkpoint and of the input file, and the settings that
change the labels (``--tta``, ``--resize``, amp, and the bare-state_dict options). Folder runs: a bad case is
reported and skipped, the others complete; an output that already exists is skipped only when its record matches
this run exactly, so an interrupted run can simply be restarted; an output made by another checkpoint, other
settings or another version of the input stops the run before anything is written, with a one-line error naming
``--overwrite``. ``--num-parts N --part-id K`` processes every N-th case of the sorted list from K (run the N parts
on N machines or GPUs; a part with no inputs says so and exits 0). A summary is printed and written to
``predict_summary.json`` (``predict_summary.partKofN.json`` for a part). Exit code 0 when every case was predicted
or already done, 1 when some cases failed (listed), 2 when nothing could be predicted.

Per case, next to the prediction:

* ``--statistics``: ``NAME_statistics.json`` with each organ's voxel count, volume (ml, voxel count x voxel volume
  from the affine) and mean HU of the input inside it.
* ``--save-probabilities``: ``NAME_probabilities.npz`` with ``probabilities`` float16 ``(i, j, k, C)`` on the input
  grid (softmax, class ``c`` = ``[..., c]``) and ``organs`` (class 1..C-1 names). Memory: C x 2 bytes per voxel.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)


def add_arguments(parser) -> None:
    parser.add_argument("-i", "--input", type=Path, required=True,
                        help=".nii/.nii.gz file, TransUNet .npy.h5 volume, or a folder of them")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="output .nii.gz file (single input) or folder")
    parser.add_argument("-m", "--checkpoint", type=Path, required=True,
                        help="medseg checkpoint (best.pt / last.pt) or a bare reference state_dict (with --model)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=16, help="slices per forward pass (default 16)")
    parser.add_argument("--tta", action="store_true", help="average over left-right and up-down flips")
    parser.add_argument("--amp", choices=["auto", "bf16", "off"], default="auto",
                        help="bf16 autocast (auto: on CUDA only)")
    parser.add_argument("--resize", choices=["torch", "scipy"], default="torch",
                        help="resize to the model size like training (torch, default) or like the reference "
                             "test loop (scipy cubic zoom per slice, slower)")
    parser.add_argument("--save-probabilities", action="store_true",
                        help="also write NAME_probabilities.npz (float16, (i, j, k, C))")
    parser.add_argument("--statistics", action="store_true",
                        help="also write NAME_statistics.json (organ volumes in ml, mean HU)")
    parser.add_argument("--model", help="architecture of a bare state_dict checkpoint (e.g. R50-ViT-B_16)")
    parser.add_argument("--labels", choices=["synapse8", "btcv13"],
                        help="label set of a bare state_dict (default synapse8)")
    parser.add_argument("--img-size", type=int, help="input size of a bare state_dict (default: the model's, 224)")
    parser.add_argument("--num-parts", type=int, default=1, help="split a folder into N parts (default 1)")
    parser.add_argument("--part-id", type=int, default=0, help="which part to run, 0..N-1 (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="predict again when the output already exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def output_name(path: Path) -> str:
    """The prediction file name of an input: suffix replaced by ``.nii.gz``, nnU-Net's ``_0000`` dropped."""
    name = path.name
    for suffix in (".nii.gz", ".nii", ".npy.h5", ".h5", ".hdf5"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    if len(name) > 5 and name[-5] == "_" and name[-4:].isdigit() and name[-4:] == "0000":
        name = name[:-5]
    return name + ".nii.gz"


def list_inputs(path: Path) -> list[Path]:
    """The input files: ``path`` itself, or the NIfTI / h5 files of a folder sorted by name.

    Raises:
        InputError: missing path, unsupported file type, or a folder without inputs.
    """
    from medseg.engine.inference import is_h5
    from medseg.errors import InputError
    from medseg.io import is_nifti

    if not path.exists():
        raise InputError(f"{path}: input not found")
    if path.is_file():
        if not (is_nifti(path) or is_h5(path)):
            raise InputError(f"{path}: not a NIfTI (.nii, .nii.gz) or TransUNet h5 (.npy.h5) file")
        return [path]
    files = sorted(p for p in path.iterdir()
                   if p.is_file() and not p.name.startswith(".") and (is_nifti(p) or is_h5(p)))
    if not files:
        raise InputError(f"{path}: no .nii, .nii.gz or .h5 files in the folder")
    return files


def plan_outputs(inputs: list[Path], output: Path, single: bool) -> list[tuple[Path, Path]]:
    """Pair each input with its output file; refuses to write onto an input or two outputs onto one file."""
    from medseg.errors import ConfigError
    from medseg.io import is_nifti

    if single and is_nifti(output):
        pairs = [(inputs[0], output)]
    else:
        if is_nifti(output):
            raise ConfigError(f"{output}: a folder input needs an output folder, not a file name")
        if output.exists() and not output.is_dir():
            raise ConfigError(f"{output}: exists and is not a folder")
        pairs = [(path, output / output_name(path)) for path in inputs]
    resolved_inputs = {p.resolve() for p in inputs}
    seen = {}
    for source, target in pairs:
        if target.resolve() in resolved_inputs:
            raise ConfigError(f"{target}: output would overwrite an input file; choose another output folder")
        if target in seen:
            raise ConfigError(f"{target}: both {seen[target].name} and {source.name} would be written there")
        seen[target] = source
    return pairs


def sidecar(output: Path, what: str, suffix: str) -> Path:
    """``out/img0001.nii.gz`` -> ``out/img0001_<what><suffix>``."""
    name = output.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    return output.with_name(f"{name}_{what}{suffix}")


def run_settings(args, checkpoint_sha256: str) -> dict:
    """The settings of this run that change the predicted labels (compared with each existing output's record)."""
    from medseg.engine.inference import resolve_amp, resolve_device

    return {"checkpoint_sha256": checkpoint_sha256, "tta": bool(args.tta), "resize": args.resize,
            "amp": resolve_amp(args.amp, resolve_device(args.device)), "model": args.model, "labels": args.labels,
            "img_size": args.img_size}


def predict_one(source: Path, target: Path, predictor, args, provenance: "dict | None" = None) -> dict:
    """Predict one input and write its outputs (extras first, the label NIfTI last, each atomically)."""
    import numpy as np

    from medseg.engine.inference import label_statistics, predict_volume, read_input
    from medseg.io import atomic_path, write_json, write_volume

    started = time.perf_counter()
    volume, h5_input = read_input(source)
    prediction = predict_volume(volume, predictor, batch_size=args.batch_size, tta=args.tta,
                                return_probabilities=args.save_probabilities, resize=args.resize,
                                scaled=h5_input, reorient=not h5_input, progress=not args.no_progress)
    probabilities = None
    if args.save_probabilities:
        prediction, probabilities = prediction
        path = sidecar(target, "probabilities", ".npz")
        with atomic_path(path, suffix=".npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, probabilities=probabilities,
                                    organs=np.array(["background", *predictor.label_set.organs]))
        del probabilities
    if args.statistics:
        stats = label_statistics(prediction, volume, predictor.label_set, hu=not h5_input)
        stats.update({"input": str(source), "prediction": str(target), "label_set": predictor.label_set.name,
                      "shape": list(prediction.shape), "geometry": "unknown (h5 input)" if h5_input else "affine"})
        write_json(sidecar(target, "statistics", ".json"), stats)
    write_volume(target, prediction, dtype=np.uint8, provenance=provenance)
    return {"status": "predicted", "seconds": round(time.perf_counter() - started, 3),
            "shape": list(prediction.shape)}


def run(args) -> int:
    from medseg import __version__
    from medseg.engine.inference import load_predictor
    from medseg.engine.provenance import checkpoint_sha256, expected_record, record_mismatch
    from medseg.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_SOME_FAILED, ConfigError, MedsegError, OutputError
    from medseg.io import check_output_path, is_nifti, remove_stale_temps, write_json

    if args.num_parts < 1:
        raise ConfigError(f"--num-parts: must be at least 1, got {args.num_parts}")
    if not 0 <= args.part_id < args.num_parts:
        raise ConfigError(f"--part-id: must be in 0..{args.num_parts - 1}, got {args.part_id}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size: must be at least 1, got {args.batch_size}")
    single = args.input.is_file()
    inputs = list_inputs(args.input)
    check_output_path(args.output, "output file" if single and is_nifti(args.output) else "output folder",
                      folder=not (single and is_nifti(args.output)))
    all_pairs = plan_outputs(inputs, args.output, single)
    pairs = all_pairs[args.part_id::args.num_parts]
    if not pairs:
        print(f"part {args.part_id} of {args.num_parts} has no inputs ({len(all_pairs)} input(s) in all): "
              "nothing to do")
        return EXIT_OK
    out_folder = args.output.parent if single and is_nifti(args.output) else args.output
    remove_stale_temps(out_folder)
    settings = run_settings(args, checkpoint_sha256(args.checkpoint))
    expected = {source: expected_record(settings, source) for source, _ in pairs}
    todo, records, conflicts = [], {}, []
    for source, target in pairs:
        if args.overwrite or not target.exists():
            todo.append((source, target))
            continue
        why = record_mismatch(target, expected[source])
        if why is None:
            records[source.name] = {"status": "exists", "output": str(target)}
        else:
            conflicts.append((target, why))
    if conflicts:
        target, why = conflicts[0]
        more = f" (and {len(conflicts) - 1} more output(s) in {out_folder})" if len(conflicts) > 1 else ""
        raise OutputError(f"{target}: exists and {why}{more}; pass --overwrite to replace it, or choose another "
                          "output folder")
    started = time.perf_counter()
    if todo:
        predictor = load_predictor(args.checkpoint, args.device, model_name=args.model, labels=args.labels,
                                   img_size=args.img_size, amp=args.amp)
        log.info("model %s (%s, %d classes, input %d px) on %s, amp %s; %d case(s) to predict",
                 predictor.model_name, predictor.label_set.name, predictor.num_classes, predictor.img_size,
                 predictor.device, predictor.amp, len(todo))
    for number, (source, target) in enumerate(todo, start=1):
        try:
            provenance = dict(expected[source], checkpoint=str(args.checkpoint), input=str(source),
                              medseg_version=__version__, model_name=predictor.model_name,
                              label_set=predictor.label_set.name, preprocessing=predictor.preprocessing.to_dict())
            record = predict_one(source, target, predictor, args, provenance)
        except MedsegError as exc:
            if single:
                raise
            record = {"status": "failed", "error": str(exc)}
            print(f"medseg predict: skipped {source.name}: {exc}", file=sys.stderr)
        else:
            log.info("[%d/%d] %s -> %s (%.1f s)", number, len(todo), source.name, target, record["seconds"])
        record["output"] = str(target)
        records[source.name] = record

    counts = {status: sum(r["status"] == status for r in records.values())
              for status in ("predicted", "exists", "failed")}
    elapsed = time.perf_counter() - started
    if not single:
        name = "predict_summary.json" if args.num_parts == 1 else \
            f"predict_summary.part{args.part_id}of{args.num_parts}.json"
        write_json(args.output / name, {
            "checkpoint": str(args.checkpoint), "checkpoint_sha256": settings["checkpoint_sha256"],
            "settings": settings, "input": str(args.input), "output": str(args.output),
            "num_parts": args.num_parts, "part_id": args.part_id, "counts": counts,
            "seconds": round(elapsed, 3), "cases": records,
        })
    print(f"predicted {counts['predicted']}, already done {counts['exists']}, failed {counts['failed']} "
          f"in {elapsed:.1f} s -> {args.output}")
    for name, record in records.items():
        if record["status"] == "failed":
            print(f"failed {name}: {record['error']}", file=sys.stderr)
    if not (counts["predicted"] or counts["exists"]):
        return EXIT_BAD_INPUT
    return EXIT_SOME_FAILED if counts["failed"] else EXIT_OK
