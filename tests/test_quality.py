"""Quality flags (medseg.quality) on constructed cases: a plausible abdomen, then one defect at a time."""
import numpy as np
import pytest

from medseg.labels import SYNAPSE8
from medseg.quality import VOLUME_RANGES_ML, flags_csv_text, quality_flags

ORGAN = {name: i + 1 for i, name in enumerate(SYNAPSE8.organs)}
SPACING = (4.0, 4.0, 5.0)  # 0.08 ml per voxel
# Voxel axes P, L, S: rows anterior -> posterior, columns patient right -> left, slices inferior -> superior.
AFFINE = np.array([[0, -SPACING[1], 0, 0], [-SPACING[0], 0, 0, 0], [0, 0, SPACING[2], 0], [0, 0, 0, 1]], float)


def abdomen() -> np.ndarray:
    """A plausible 8-organ label map, midline (aorta) at column 40, liver wholly inside the 40 slices."""
    labels = np.zeros((60, 80, 40), np.uint8)
    labels[35:38, 39:42, :] = ORGAN["aorta"]
    labels[10:35, 5:30, 20:35] = ORGAN["liver"]          # 750 ml, patient right
    labels[8:13, 20:28, 16:22] = ORGAN["gallbladder"]    # 19 ml
    labels[30:40, 15:25, 8:18] = ORGAN["kidney_right"]   # 80 ml
    labels[30:40, 55:65, 8:18] = ORGAN["kidney_left"]
    labels[25:40, 60:72, 22:32] = ORGAN["spleen"]        # 144 ml, patient left
    labels[20:25, 35:60, 15:19] = ORGAN["pancreas"]      # 40 ml
    labels[5:15, 45:60, 25:33] = ORGAN["stomach"]
    return labels


def _names(flags, organ=None):
    return {(f.organ, f.flag) for f in flags if organ is None or f.organ == organ}


def test_plausible_abdomen_has_no_flags():
    assert quality_flags(abdomen(), AFFINE, "synapse8") == []


def test_swapped_kidneys_are_on_the_wrong_side():
    labels = abdomen()
    right, left = labels == ORGAN["kidney_right"], labels == ORGAN["kidney_left"]
    labels[right], labels[left] = ORGAN["kidney_left"], ORGAN["kidney_right"]
    assert _names(quality_flags(labels, AFFINE, "synapse8")) == {("kidney_left", "wrong_side"),
                                                                 ("kidney_right", "wrong_side")}


def test_a_left_right_flip_in_the_header_flags_the_sided_organs():
    flipped = AFFINE.copy()
    flipped[:, 1] *= -1  # columns now run left -> right
    flipped[0, 3] = 79 * SPACING[1]
    flags = _names(quality_flags(abdomen(), flipped, "synapse8"))
    assert {("liver", "wrong_side"), ("spleen", "wrong_side"), ("kidney_left", "wrong_side"),
            ("kidney_right", "wrong_side")} <= flags


def test_the_same_case_in_another_voxel_order_gives_the_same_flags():
    labels = abdomen()
    labels[labels == ORGAN["pancreas"]] = 0
    # store as RAS: voxel axes (x right->, y anterior, z superior) = the P-L-S array with axes 0, 1 reversed/swapped
    ras = np.ascontiguousarray(labels[::-1, ::-1, :].transpose(1, 0, 2))
    affine = np.diag([SPACING[1], SPACING[0], SPACING[2], 1.0])
    assert quality_flags(ras, affine, "synapse8") == quality_flags(labels, AFFINE, "synapse8")


def test_island_gives_several_large_components():
    labels = abdomen()
    labels[45:55, 30:38, 2:12] = ORGAN["spleen"]  # 64 ml island below, near the midline
    flags = quality_flags(labels, AFFINE, "synapse8")
    assert _names(flags, "spleen") == {("spleen", "several_large_components")}
    detail = next(f.detail for f in flags if f.flag == "several_large_components")
    assert "largest 144 ml, next 64 ml" in detail


def test_small_specks_are_not_several_large_components():
    labels = abdomen()
    labels[50, 50, 5] = ORGAN["spleen"]  # 0.08 ml
    assert quality_flags(labels, AFFINE, "synapse8") == []


def test_missing_organ_expected_within_the_scan():
    labels = abdomen()
    labels[labels == ORGAN["pancreas"]] = 0
    assert _names(quality_flags(labels, AFFINE, "synapse8")) == {("pancreas", "expected_not_found")}


def test_missing_organ_is_not_expected_when_the_liver_is_cut_by_the_scan():
    labels = abdomen()[:, :, 22:]  # the scan starts inside the liver: kidneys, pancreas may lie below it
    labels[labels == ORGAN["pancreas"]] = 0
    labels[labels == ORGAN["kidney_left"]] = 0
    assert ("pancreas", "expected_not_found") not in _names(quality_flags(labels, AFFINE, "synapse8"))


def test_kidney_above_the_liver_dome():
    labels = abdomen()
    labels[labels == ORGAN["kidney_right"]] = 0
    labels[30:40, 15:25, 30:38] = ORGAN["kidney_right"]
    flags = quality_flags(labels, AFFINE, "synapse8")
    assert ("kidney_right", "above_liver_dome") in _names(flags)
    detail = next(f.detail for f in flags if f.flag == "above_liver_dome")
    assert detail == "reaches 15 mm above the liver's dome"  # top slice 37 vs 34, 5 mm slices


def test_volume_out_of_range_and_cut_organs():
    labels = abdomen()
    labels[labels == ORGAN["spleen"]] = 0
    labels[20:50, 55:78, 15:35] = ORGAN["spleen"]  # 1104 ml
    flags = quality_flags(labels, AFFINE, "synapse8")
    assert ("spleen", "volume_out_of_range") in _names(flags)
    assert VOLUME_RANGES_ML["spleen"] == (32.5, 375.0)
    # a small kidney is flagged when wholly inside the scan, not when the scan cuts it
    labels = abdomen()
    labels[labels == ORGAN["kidney_left"]] = 0
    labels[30:33, 55:58, 8:10] = ORGAN["kidney_left"]  # 1.4 ml
    assert ("kidney_left", "volume_out_of_range") in _names(quality_flags(labels, AFFINE, "synapse8"))
    labels[labels == ORGAN["kidney_left"]] = 0
    labels[30:33, 55:58, 0:2] = ORGAN["kidney_left"]
    assert ("kidney_left", "volume_out_of_range") not in _names(quality_flags(labels, AFFINE, "synapse8"))


def test_body_midline_from_the_image():
    labels = abdomen()
    image = np.full(labels.shape, -1000.0)
    image[:, 60:80, :] = 40.0  # a body whose centre is column 69.5: the liver and right kidney are right of it
    flags = _names(quality_flags(labels, AFFINE, "synapse8", image=image))
    assert ("spleen", "wrong_side") in flags and ("liver", "wrong_side") not in flags


def test_flags_csv():
    labels = abdomen()
    labels[labels == ORGAN["pancreas"]] = 0
    text = flags_csv_text({"case2": quality_flags(labels, AFFINE, "synapse8"), "case1": []})
    assert text.splitlines() == ["case_id,organ,flag,detail",
                                 "case2,pancreas,expected_not_found,absent although the liver lies wholly inside "
                                 "the scan"]


@pytest.mark.parametrize("organ", ["liver", "spleen"])
def test_missing_liver_is_expected_when_the_spleen_is_found(organ):
    labels = abdomen()
    labels[labels == ORGAN[organ]] = 0
    flags = _names(quality_flags(labels, AFFINE, "synapse8"))
    if organ == "liver":
        assert ("liver", "expected_not_found") in flags
    else:  # the spleen is expected because the liver lies wholly inside the scan
        assert ("spleen", "expected_not_found") in flags


def test_evaluate_shows_flags_beside_the_scores(tmp_path, caplog):
    """A swapped-kidney prediction and a correct one: the summary flags the first, its Dice is lower, the CLI
    logs it and the report's worst cases name the flag."""
    import logging

    from medseg.cli import main
    from medseg.io import Volume, read_json, write_volume

    refs, preds = tmp_path / "refs", tmp_path / "preds"
    raw = {value: raw for raw, value in SYNAPSE8.raw_to_class.items()}  # class -> raw BTCV value
    reference = abdomen()
    raw_reference = np.vectorize(lambda v: raw.get(int(v), 0))(reference).astype(np.uint8)
    swapped = reference.copy()
    swapped[reference == ORGAN["kidney_right"]] = ORGAN["kidney_left"]
    swapped[reference == ORGAN["kidney_left"]] = ORGAN["kidney_right"]
    for case, prediction in (("case0001", reference), ("case0002", swapped)):
        write_volume(refs / f"{case}.nii.gz", Volume(raw_reference, AFFINE), dtype=np.uint8)
        write_volume(preds / f"{case}.nii.gz", Volume(prediction, AFFINE), dtype=np.uint8)
    caplog.set_level(logging.INFO)
    code = main(["evaluate", str(refs), str(preds), "-o", str(tmp_path / "out"), "--reference-format", "raw",
                 "--workers", "1", "--thumbnails", "0"])
    assert code == 0
    summary = read_json(tmp_path / "out" / "summary.json")
    assert summary["flags"]["case0001"] == []
    assert {f["organ"] for f in summary["flags"]["case0002"]} == {"kidney_left", "kidney_right"}
    comparison = summary["flag_comparison"]["organ_results"]
    assert comparison["flagged"] == {"n": 2, "mean_dice": 0.0} and comparison["unflagged"]["mean_dice"] == 1.0
    assert "flagged case0002 (mean DSC 75.00 %): kidney_left wrong_side" in caplog.text
    assert "flagged organ results mean Dice 0.000 (n=2), unflagged 1.000 (n=14)" in caplog.text
    assert (tmp_path / "out" / "quality_flags.csv").read_text().count("wrong_side") == 2
    assert "| wrong_side |" in (tmp_path / "out" / "report.md").read_text()
