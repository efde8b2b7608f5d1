"""Outputs a viewer understands: labels.json, NIfTI header, viewer tables, split masks, --organs, previews and the
statistics CSV, through ``medseg predict`` on NIfTI input."""
from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest

from helpers import tiny_case
from medseg.prediction import outputs
from medseg.schema import parse_output_types
from medseg.cli import main
from medseg.errors import ConfigError
from medseg.io import Volume, write_volume
from medseg.labels import SYNAPSE8
from test_predict_cli import checkpoint  # noqa: F401  (the tiny TransUNet checkpoint fixture)


def test_label_map_and_viewer_tables(tmp_path):
    table = outputs.label_map(SYNAPSE8, ["liver", "spleen"])
    assert table["label_set"] == "synapse8" and set(table["labels"]) == {"0", "5", "7"}
    assert table["labels"]["5"] == {"key": "liver", "name": "Liver", "colour": [221, 130, 101],
                                    "snomed_ct": {"code": "10200004", "meaning": "Liver"}}
    slicer = outputs.slicer_colour_table(SYNAPSE8).splitlines()
    assert slicer[2] == "0 Background 0 0 0 0" and slicer[3] == "1 aorta 220 20 60 255" and len(slicer) == 3 + 8
    snap = outputs.itksnap_label_file(SYNAPSE8).splitlines()
    assert snap[2].split()[:7] == ["0", "0", "0", "0", "0", "0", "0"]
    assert snap[3].split()[:7] == ["1", "220", "20", "60", "1", "1", "1"] and snap[3].endswith('"Aorta"')
    with pytest.raises(ConfigError, match="'lung' is not an organ of label set synapse8"):
        outputs.check_organs(["liver", "lung"], SYNAPSE8)
    with pytest.raises(ConfigError, match="--output-type: unknown type 'stl'"):
        parse_output_types(["nifti,stl"], "--output-type")
    assert parse_output_types(["rtstruct", "nifti,rtstruct"], "-") == ["rtstruct", "nifti"]
    assert parse_output_types(["dicom-seg", "rtstruct"], "-") == ["dicom-seg", "rtstruct"]


def test_preview_views_follow_spacing_and_orientation():
    from medseg.visualize import preview_views

    array = np.zeros((10, 12, 4), dtype=np.int16)
    labels = np.zeros_like(array, dtype=np.uint8)
    labels[2:5, 3:6, 1:3] = 5
    affine = np.diag([-0.5, -0.8, 3.0, 1.0])  # LPS storage: i runs right -> left, j anterior -> posterior
    axial, coronal, sagittal = preview_views(Volume(array, affine), Volume(labels, affine))
    assert axial.title == "axial" and axial.labels.shape == (12, 10)  # rows anterior -> posterior (j), columns R -> L
    assert axial.aspect == pytest.approx(0.8 / 0.5) and coronal.aspect == pytest.approx(3.0 / 0.5)
    assert sagittal.aspect == pytest.approx(3.0 / 0.8) and coronal.image.shape == (4, 10)


def test_statistics_with_std():
    affine = np.diag([2.0, 1.0, 5.0, 1.0])
    labels = np.zeros((4, 4, 2), dtype=np.uint8)
    labels[:2, :2, 0] = 5
    image = np.zeros((4, 4, 2))
    image[:2, :2, 0] = [[50.0, 70.0], [60.0, 60.0]]
    stats = outputs.organ_statistics(Volume(labels, affine), Volume(image, affine), SYNAPSE8)
    values = np.array([50.0, 70.0, 60.0, 60.0])
    assert stats["organs"]["liver"]["std_hu"] == pytest.approx(values.std(ddof=0), abs=1e-3)


def _predict(*args) -> int:
    return main(["predict", *map(str, args), "--no-progress", "--device", "cpu"])


def test_predict_writes_every_extra(checkpoint, tmp_path):  # noqa: F811
    for n in (1, 2):
        image, _ = tiny_case(n, shape=(20, 18, 6))
        write_volume(tmp_path / "in" / f"img{n:04d}.nii.gz", image)
    out = tmp_path / "out"
    assert _predict("-i", tmp_path / "in", "-o", out, "-m", checkpoint, "--statistics", "--preview",
                    "--split-masks", "--viewer-tables", "--organs", "liver,aorta,spleen,stomach") == 0
    assert json.loads((out / "labels.json").read_text())["organs_kept"] == ["liver", "aorta", "spleen", "stomach"]
    assert (out / "labels.ctbl").is_file() and (out / "labels_itksnap.txt").is_file()
    rows = list(csv.DictReader((out / "statistics.csv").open()))
    assert [(r["case"], r["organ"]) for r in rows[:4]] == [("img0001", o) for o in ("aorta", "liver", "spleen",
                                                                                     "stomach")]
    assert len(rows) == 8
    for n in (1, 2):
        labels = nib.load(out / f"img{n:04d}.nii.gz")
        assert labels.header.get_intent() == ("label", (), "synapse8")
        assert labels.header["descrip"].tobytes().startswith(b"medseg labels synapse8")
        array = np.asarray(labels.dataobj)
        assert set(np.unique(array)) <= {0, 1, 5, 7, 8}
        masks = sorted(p.name for p in (out / f"img{n:04d}").iterdir())
        assert masks == ["aorta.nii.gz", "liver.nii.gz", "spleen.nii.gz", "stomach.nii.gz"]
        liver = np.asarray(nib.load(out / f"img{n:04d}" / "liver.nii.gz").dataobj)
        np.testing.assert_array_equal(liver, (array == 5).astype(np.uint8))
        assert (out / f"img{n:04d}_preview.png").read_bytes().startswith(b"\x89PNG")
        row = next(r for r in rows if r["case"] == f"img{n:04d}" and r["organ"] == "liver")
        assert int(row["voxels"]) == int((array == 5).sum())
