"""The synthetic phantom cohort: determinism, geometry, organ statistics, anatomical sides, the synth command."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from medseg.cli import main
from medseg import phantom
from medseg.phantom.contrast import PHASE_HU, PHASES
from medseg.data.orientation import reorient
from medseg.errors import ConfigError
from medseg.io import read_volume, spacing_from_affine
from medseg.labels import BTCV_ORGANS

SEED = 1
N_CASES = 5
RAW = {key: value for value, (key, _) in BTCV_ORGANS.items()}


@pytest.fixture(scope="module")
def cases():
    """Cases 1..5 of SEED (small), each generated on its own: {index: (image, label)}."""
    return {k: phantom.generate_case(k, SEED, "small") for k in range(1, N_CASES + 1)}


@pytest.fixture(scope="module")
def oriented(cases):
    """The same cases in medseg's slice orientation (P, L, S): {index: (hu, label, spacing)}."""
    out = {}
    for k, (image, label) in cases.items():
        hu, affine = reorient(image.array, image.affine)
        lab, _ = reorient(label.array, label.affine)
        out[k] = (hu, lab, np.asarray(spacing_from_affine(affine)))
    return out


def _volume_ml(label: np.ndarray, spacing, key: str) -> float:
    return float((label == RAW[key]).sum() * np.prod(spacing) / 1000.0)


# ---------------------------------------------------------------------------------------------------- determinism


def test_same_seed_and_case_give_identical_volumes(cases):
    image, label = phantom.generate_case(3, SEED, "small")
    assert np.array_equal(image.array, cases[3][0].array)
    assert np.array_equal(label.array, cases[3][1].array)
    assert np.array_equal(image.affine, cases[3][0].affine)


def test_different_seed_or_case_differs(cases):
    other_seed, _ = phantom.generate_case(1, SEED + 1, "small")
    assert other_seed.shape != cases[1][0].shape or not np.array_equal(other_seed.array, cases[1][0].array)
    assert not np.array_equal(cases[1][1].array, cases[2][1].array)


def test_cohort_cases_do_not_depend_on_cohort_size_or_workers(cases, tmp_path):
    out = tmp_path / "cohort"
    phantom.write_cohort(out, cases=3, seed=SEED, workers=1, progress=False, preview=False)
    assert (out / "img" / "img0003.nii.gz").exists()
    summary = phantom.write_cohort(out, cases=2, seed=SEED, workers=2, progress=False, preview=False)
    assert summary["cases"] == 2 and summary["preview"] is None
    # The earlier third case is removed, the first two equal the stand-alone cases.
    assert not (out / "img" / "img0003.nii.gz").exists() and not (out / "label" / "label0003.nii.gz").exists()
    for k in (1, 2):
        image = read_volume(out / "img" / f"img{k:04d}.nii.gz")
        label = read_volume(out / "label" / f"label{k:04d}.nii.gz")
        assert image.array.dtype == np.int16 and label.array.dtype == np.uint8
        assert np.array_equal(image.array, cases[k][0].array)
        assert np.array_equal(label.array, cases[k][1].array)
        np.testing.assert_allclose(image.affine, cases[k][0].affine, atol=1e-4)


# ---------------------------------------------------------------------------------------------------- geometry


def test_types_values_shapes_and_spacing(cases):
    for image, label in cases.values():
        assert image.array.dtype == np.int16 and label.array.dtype == np.uint8
        assert image.shape == label.shape
        assert np.array_equal(image.affine, label.affine)
        assert set(np.unique(label.array)) <= set(range(0, 14))
        assert image.array.min() >= -1024 and image.array.max() <= 3071
        spacing = np.array(image.spacing)
        slice_axis = int(np.argmax(spacing))
        inplane = [a for a in range(3) if a != slice_axis]
        assert [image.shape[a] for a in inplane] == [128, 128]
        assert 44 <= image.shape[slice_axis] <= 56
        assert 2.5 <= spacing[slice_axis] <= 5.0
        assert all(2.5 <= spacing[a] <= 3.05 for a in inplane)


def test_affines_are_not_identity_and_vary(cases):
    codes = set()
    for image, _ in cases.values():
        assert not np.allclose(image.affine, np.eye(4))
        codes.add(nib.aff2axcodes(image.affine))
    assert len(codes) >= 3
    assert any(nib.aff2axcodes(image.affine)[2] not in ("S", "I") for image, _ in cases.values())


def test_full_size_geometry_is_synapse_like():
    for k in range(1, 5):
        geometry = phantom.case_geometry(SEED, k, "full")
        assert geometry.shape[:2] == (512, 512)
        assert 85 <= geometry.shape[2] <= 198
        assert 0.6 <= geometry.spacing[0] <= 0.9 and geometry.spacing[0] == geometry.spacing[1]
        assert geometry.spacing[2] in (2.5, 3.0, 5.0)


def test_varied_geometry_spans_fields_of_view_slices_and_coverages():
    from medseg.phantom.geometry import COVERAGES, VARIED_MAX_SLICES, coverage_of

    geometries = [phantom.case_geometry(SEED, k, "varied") for k in range(1, 21)]
    assert [coverage_of(k) for k in range(1, 11)] == list(COVERAGES) * 2
    for geometry in geometries:
        assert geometry.shape[:2] == (512, 512) and geometry.spacing[0] == geometry.spacing[1]
        assert 0.6 <= geometry.spacing[0] <= 1.0
        assert geometry.shape[2] <= VARIED_MAX_SLICES
    fovs = [512 * g.spacing[0] for g in geometries]
    slices_mm = [g.spacing[2] for g in geometries]
    assert min(fovs) < 340 and max(fovs) > 440, fovs             # tight and wide fields of view
    assert min(slices_mm) <= 1.5 and max(slices_mm) >= 2.5, slices_mm   # thin and thick slices


def _z_range(geometry) -> tuple[float, float]:
    z = geometry.coordinates()[2]
    return float(z[0]), float(z[-1])


@pytest.mark.parametrize("k", range(1, 11))
def test_varied_coverage_holds_what_its_name_says(k):
    from medseg.phantom.geometry import coverage_of

    anatomy = phantom.make_anatomy(SEED, k)
    low, top = _z_range(phantom.case_geometry(SEED, k, "varied", anatomy))
    dome = float(anatomy.dome_right[2])
    kidneys = [anatomy.organs[key].bounds() for key in ("kidney_left", "kidney_right") if key in anatomy.organs]
    kidney_top = max(float(hi[2]) for _, hi in kidneys)
    kidney_low = min(float(lo[2]) for lo, _ in kidneys)
    bladder_low = float(anatomy.extras["bladder"].bounds()[0][2])
    coverage = coverage_of(k)
    if coverage == "chest-upper-abdomen":
        assert top > dome + 35 and low > kidney_top             # lower chest, ends above both kidneys
    elif coverage == "upper-abdomen":
        assert top >= dome - 5 and kidney_low < low < kidney_top
    elif coverage == "abdomen":
        assert top >= dome - 5 and low < kidney_low and low > bladder_low
    elif coverage == "abdomen-pelvis":
        assert top > dome and low < bladder_low + 5
    else:
        assert top < dome - 20 and low < bladder_low + 5        # the liver's and spleen's tops cut off


def test_varied_case_above_the_kidneys_has_no_kidney_and_records_its_coverage(tmp_path):
    summary = phantom.write_cohort(tmp_path / "varied", cases=1, seed=SEED, size="varied", progress=False,
                                   preview=False)
    manifest = json.loads((tmp_path / "varied" / "phantom.json").read_text())
    case = manifest["cases"][0]
    assert manifest["size"] == "varied" and case["coverage"] == "chest-upper-abdomen"
    label = read_volume(tmp_path / "varied" / "label" / "label0001.nii.gz").array
    present = set(np.unique(label).tolist())
    assert RAW["liver"] in present and RAW["aorta"] in present
    assert RAW["kidney_left"] not in present and RAW["kidney_right"] not in present
    inplane = [axis for axis, n in enumerate(label.shape) if n == 512]   # the stored voxel order varies
    assert len(inplane) == 2
    assert case["field_of_view_mm"] == pytest.approx(512 * case["spacing"][inplane[0]], abs=0.1)
    assert summary["size"] == "varied"


def test_bad_arguments_are_config_errors(tmp_path):
    with pytest.raises(ConfigError):
        phantom.generate_case(1, SEED, "huge")
    with pytest.raises(ConfigError):
        phantom.generate_case(0, SEED)
    with pytest.raises(ConfigError):
        phantom.generate_case(1, -3)
    with pytest.raises(ConfigError):
        phantom.write_cohort(tmp_path / "x", cases=0, seed=SEED)
    foreign = tmp_path / "foreign"
    (foreign / "img").mkdir(parents=True)
    (foreign / "img" / "img0001.nii.gz").write_bytes(b"not ours")
    with pytest.raises(ConfigError, match="did not write"):
        phantom.write_cohort(foreign, cases=1, seed=SEED)
    assert (foreign / "img" / "img0001.nii.gz").read_bytes() == b"not ours"


# ---------------------------------------------------------------------------------------------------- anatomy


def test_some_cases_miss_an_organ_and_those_organs_are_empty(cases):
    omitted = {k: phantom.omitted_organs(SEED, k) for k in cases}
    assert any(omitted.values())
    for k, (_, label) in cases.items():
        present = set(np.unique(label.array))
        for key in ("gallbladder", "kidney_left", "kidney_right"):
            assert (RAW[key] in present) == (key not in omitted[k]), (k, key)
        # Every other organ of the upper abdomen is always there (the esophagus only where the stack reaches the
        # hiatus: an abdomen-pelvis window starts below it).
        for key in ("liver", "spleen", "stomach", "aorta", "inferior_vena_cava", "portal_splenic_vein",
                    "pancreas", "adrenal_right", "adrenal_left"):
            assert RAW[key] in present, (k, key)


def test_any_five_consecutive_block_has_an_empty_organ():
    for seed in range(6):
        assert any(phantom.omitted_organs(seed, k) for k in range(1, 6))
        assert any(phantom.omitted_organs(seed, k) for k in range(6, 11))


def test_organ_volumes_are_plausible(oriented):
    """Adult organ volumes (ml), for organs the stack holds entirely (an abdomen-pelvis window cuts the top of the
    liver and spleen off)."""
    ranges = {"liver": (1000, 2500), "spleen": (100, 400), "kidney_right": (80, 260), "kidney_left": (80, 260),
              "pancreas": (25, 130), "gallbladder": (10, 90), "stomach": (100, 900), "adrenal_right": (1, 12),
              "adrenal_left": (1, 12)}
    for k, (_, label, spacing) in oriented.items():
        for key, (low, high) in ranges.items():
            in_slice = (label == RAW[key]).any(axis=(0, 1))
            if key in phantom.omitted_organs(SEED, k) or in_slice[0] or in_slice[-1]:
                continue
            assert low <= _volume_ml(label, spacing, key) <= high, (k, key, _volume_ml(label, spacing, key))


def test_aorta_and_ivc_run_through_every_upper_abdominal_slice(oriented):
    for k, (_, label, _) in oriented.items():
        upper = np.isin(label, [RAW["liver"], RAW["kidney_left"], RAW["kidney_right"]]).any(axis=(0, 1))
        assert np.all((label == RAW["aorta"]).any(axis=(0, 1))[upper]), k
        assert np.all((label == RAW["inferior_vena_cava"]).any(axis=(0, 1))[upper]), k


def test_coverage_varies_and_some_slices_hold_no_organ(oriented):
    """Like clinical scans: some stacks start at the lung bases, some reach below the aortic bifurcation, where
    no organ of the Synapse 8-organ set is left (drop_empty then has slices to drop)."""
    synapse8 = [RAW[key] for key in ("aorta", "gallbladder", "kidney_left", "kidney_right", "liver", "pancreas",
                                      "spleen", "stomach")]
    empty = {k: int((~np.isin(label, synapse8).any(axis=(0, 1))).sum()) for k, (_, label, _) in oriented.items()}
    assert sum(empty.values()) >= 3 and sum(n == 0 for n in empty.values()) >= 2, empty


def test_every_phase_occurs_in_five_cases():
    for seed in range(4):
        assert set(phantom.contrast_phase(seed, k) for k in range(1, 6)) == set(PHASES)
        assert set(phantom.contrast_phase(seed, k) for k in range(6, 11)) == set(PHASES)


def _phase_range(phase: str, tissue: str, margin: float = 30.0) -> tuple[float, float]:
    """The phase's HU range of a tissue, widened by ``margin`` HU for blur, texture and partial volume."""
    low, high = PHASE_HU[tissue][PHASES.index(phase)]
    return low - margin, high + margin


def test_organ_ct_numbers_follow_the_contrast_phase(oriented):
    tissue_of = {"liver": "liver", "spleen": "spleen", "aorta": "aorta", "inferior_vena_cava": "inferior_vena_cava",
                 "portal_splenic_vein": "portal_splenic_vein"}
    for k, (hu, label, _) in oriented.items():
        phase = phantom.contrast_phase(SEED, k)

        def mean(key):
            mask = label == RAW[key]
            return float(hu[mask].mean()) if mask.any() else None

        for key, tissue in tissue_of.items():
            low, high = _phase_range(phase, tissue, margin=40.0 if key == "spleen" else 30.0)
            assert low <= mean(key) <= high, (k, phase, key, mean(key))
        for key in ("kidney_right", "kidney_left"):
            if mean(key) is not None:
                low = _phase_range(phase, "kidney_medulla")[0]
                high = _phase_range(phase, "kidney_cortex")[1]
                assert low <= mean(key) <= high, (k, phase, key, mean(key))
        # Fatty lobules can lower the pancreas down to about 0 HU on an unenhanced scan, never raise it.
        assert -60 <= mean("pancreas") <= _phase_range(phase, "pancreas")[1], (k, phase, mean("pancreas"))
        if mean("gallbladder") is not None:
            assert -10 <= mean("gallbladder") <= 45, (k, mean("gallbladder"))
        assert -700 <= mean("stomach") <= 110, (k, mean("stomach"))
        # The radiological signature of each phase.
        if phase == "non_contrast":
            assert abs(mean("aorta") - mean("liver")) < 40, k
        elif phase == "arterial":
            assert mean("aorta") > mean("liver") + 120 and mean("aorta") > mean("inferior_vena_cava") + 80, k
        else:
            assert mean("liver") > 85 and mean("portal_splenic_vein") > mean("liver"), k
        # Air outside the body, fat under the skin: the image is mostly darker than water (the real example CT
        # of tests/data/realct, whose body fills most of the field of view: median -91 HU).
        assert np.median(hu) < -50
        # Noise and texture: a flat patch of liver has a standard deviation of a few to 40 HU.
        core = (label == RAW["liver"])
        assert 3 < hu[core].std() < 60


def test_anatomy_is_on_the_right_side_after_orientation(oriented):
    """After reorienting to (P, L, S): columns run patient right -> left, rows anterior -> posterior."""
    for k, (_, label, _) in oriented.items():
        width = label.shape[1]

        def centroid(key):
            return np.argwhere(label == RAW[key]).mean(axis=0)  # (row, column, slice)

        liver, spleen, aorta, ivc = centroid("liver"), centroid("spleen"), centroid("aorta"), centroid(
            "inferior_vena_cava")
        assert liver[1] < width / 2 < spleen[1], k  # liver on the patient's right, spleen on the left
        assert centroid("stomach")[1] > width / 2, k
        assert ivc[1] < aorta[1], k  # IVC to the right of the aorta
        assert liver[2] > centroid("pancreas")[2], k  # liver above the pancreas
        for key in ("kidney_right", "kidney_left"):
            if key not in phantom.omitted_organs(SEED, k):
                kidney = centroid(key)
                assert kidney[0] > aorta[0], (k, key)  # kidneys behind the aorta
                assert (kidney[1] < width / 2) == (key == "kidney_right"), (k, key)
        assert centroid("adrenal_right")[1] < centroid("adrenal_left")[1], k


# ---------------------------------------------------------------------------------------------------- command line


def test_synth_command_writes_the_btcv_layout_and_preview(cases, tmp_path, capsys):
    out = tmp_path / "phantom"
    assert main(["synth", str(out), "--cases", "2", "--seed", str(SEED)]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "preview.png" in printed
    assert sorted(p.name for p in (out / "img").iterdir()) == ["img0001.nii.gz", "img0002.nii.gz"]
    assert sorted(p.name for p in (out / "label").iterdir()) == ["label0001.nii.gz", "label0002.nii.gz"]
    assert (out / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads((out / "phantom.json").read_text())
    assert manifest["seed"] == SEED and manifest["size"] == "small" and manifest["complete"] is True
    assert manifest["generator_version"] == phantom.GENERATOR_VERSION
    assert [c["case_id"] for c in manifest["cases"]] == ["case0001", "case0002"]
    for entry in manifest["cases"]:
        assert {"shape", "spacing", "axcodes", "omitted_organs", "contrast_phase"} <= set(entry)
    label = read_volume(out / "label" / "label0002.nii.gz")
    assert np.array_equal(label.array, cases[2][1].array)
    # medseg's own cohort discovery finds the cases with their labels.
    from medseg.data.cohort import discover_cases

    found = discover_cases(out)
    assert [c.case_id for c in found] == ["case0001", "case0002"] and all(c.label for c in found)


def test_synth_command_bad_options_exit_2(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "a"), "--cases", "0"]) == 2
    err = capsys.readouterr().err
    assert "cases" in err and len(err.strip().splitlines()) == 1
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert main(["synth", str(a_file), "--cases", "1"]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert main(["synth", str(tmp_path / "b"), "--cases", "1", "--workers", "0"]) == 2


def test_a_seeded_case_is_bit_identical_to_the_generator_before_the_package_split():
    """Cases 1-2 of seed 7 (small): voxels, dtypes, shapes, affines and the manifest entry hash to what the single
    module ``medseg/data/phantom.py`` produced before it became the ``medseg.phantom`` package (same draws, same
    order). A change here must come with a new GENERATOR_VERSION and a new hash."""
    import hashlib

    from medseg.phantom.cohort import _generate

    digest = hashlib.sha256()
    for k in (1, 2):
        image, label, info = _generate(k, 7, "small")
        for volume in (image, label):
            digest.update(np.ascontiguousarray(volume.array).tobytes())
            digest.update(str(volume.array.dtype).encode())
            digest.update(str(volume.array.shape).encode())
            digest.update(np.asarray(volume.affine, dtype=np.float64).tobytes())
        # The description gained the field of view later (the volumes did not change); it is checked on its own.
        inplane = [axis for axis, n in enumerate(image.array.shape) if n == 128]
        fov = 128 * spacing_from_affine(image.affine)[inplane[0]]
        assert info.pop("field_of_view_mm") == pytest.approx(fov, abs=0.1)
        digest.update(json.dumps(info, sort_keys=True).encode())
    assert phantom.GENERATOR_VERSION == "2"
    assert digest.hexdigest() == "137b61c4c8d300ec590b76888157c079a777c99db58923473575bb7e4f25762c"
