"""``medseg predict -i INPUT -o OUTPUT -m CHECKPOINT``: segment CT volumes, one label NIfTI per input.

INPUT is a ``.nii``/``.nii.gz`` file, a TransUNet ``.npy.h5`` volume, or a folder of them; or DICOM: a folder
holding one or several CT series (at any depth; one case per SeriesInstanceUID, named
``PatientID_StudyDate_SeriesNumber`` or by the UID when those are missing or repeated), or a ``.zip`` of such a
folder (see :mod:`medseg.dicom`). OUTPUT is a file name
(``.nii.gz``/``.nii``, single input only) or a folder, where each prediction is named after its input
(``img0001.nii.gz`` -> ``img0001.nii.gz``; ``BTCV_01_0000.nii.gz`` -> ``BTCV_01.nii.gz``; ``case0001.npy.h5`` ->
``case0001.nii.gz``). Each prediction has exactly its input's shape and affine.

The command is argument parsing plus one call of :func:`medseg.prediction.predict_cases` (one flag per field of
:class:`medseg.schema.PredictRequest`, with the field's name): the pipeline's predict stage and notebooks make the
same call. Every case records what made it: inside each NIfTI (a header extension, see
:func:`medseg.io.read_provenance`: the SHA-256 of the checkpoint and of the input, and the settings that change the
labels: ``--tta``, ``--resize``, amp, ``--organs``, the bare-state_dict options) and in ``NAME_record.json`` (the
same, plus every file the case wrote with its size and SHA-256; see :mod:`medseg.prediction.record`). Folder runs: a
bad case is reported and skipped, the others complete; an existing case is reused only when its record matches this
run exactly, it has every output this run asks for and every file is whole, so an interrupted run can simply be
restarted; an output made by another checkpoint, other settings or another version of the input (or one without a
record) stops the run before anything is written, with a one-line error naming ``--overwrite``. ``--num-parts N
--part-id K`` processes every N-th case of the sorted list from K (run the N parts on N machines or GPUs; a part
with no inputs says so and exits 0). A summary is printed and written to ``predict_summary.json``
(``predict_summary.partKofN.json`` for a part). Exit code 0 when every case was predicted or already done, 1 when
some cases failed (listed), 2 when nothing could be predicted.

Outputs a viewer understands (see :mod:`medseg.prediction.outputs`): ``--output-type nifti dicom-seg rtstruct``
(one or several, also as ``nifti,dicom-seg``; DICOM outputs need a DICOM input), ``labels.json`` in every output
folder (and the label set named in each NIfTI header), ``--viewer-tables`` (3D Slicer and ITK-SNAP label tables),
``--split-masks`` (``NAME/<organ>.nii.gz``), ``--organs liver,spleen`` (keep a subset; the other organs become background in every output), ``--preview``
(``NAME_preview.png``).

Per case, next to the prediction:

* ``--statistics``: ``NAME_statistics.json`` with each organ's voxel count, volume (ml, voxel count x voxel volume
  from the affine) and mean and std (population, ddof=0) HU of the input inside it; a folder run also writes
  ``statistics.csv`` with one row per case and organ.
* ``--save-probabilities``: ``NAME_probabilities.npz`` with ``probabilities`` float16 ``(i, j, k, C)`` on the input
  grid (softmax, class ``c`` = ``[..., c]``) and ``organs`` (class 1..C-1 names). Memory: C x 2 bytes per voxel.
"""
from __future__ import annotations

import sys

from medseg import schema


def add_arguments(parser) -> None:
    """The options of :class:`medseg.schema.PredictRequest`, one per field, with the field's name."""
    schema.add_arguments(parser, schema.PredictRequest)


def run(args) -> int:
    """Build the request from the options, predict, print the summary lines; returns the exit code."""
    from medseg.prediction import predict_cases

    values = schema.check_flags(args, schema.PredictRequest)  # messages name the flag: --batch-size, --organs
    summary = predict_cases(schema.PredictRequest(**values))
    print_summary(summary)
    return summary.exit_code


def print_summary(summary) -> None:
    """The closing lines: counts and output (stdout), each failed case with its error (stderr)."""
    if not summary.cases:
        print(f"part {summary_part(summary)} has no inputs ({summary.total_inputs} input(s) in all): nothing to do")
        return
    counts = summary.counts
    print(f"predicted {counts['predicted']}, already done {counts['exists']}, failed {counts['failed']} "
          f"in {summary.seconds:.1f} s -> {summary.output}")
    if summary.mixed_checkpoints:
        print(f"warning: {summary.output} holds predictions of {len(summary.folder_checkpoints)} checkpoints "
              "(see predict_summary.json)", file=sys.stderr)
    for name, error in summary.failed.items():
        print(f"medseg predict: skipped {name}: {error}", file=sys.stderr)


def summary_part(summary) -> str:
    return f"{summary.request.part_id} of {summary.request.num_parts}"
