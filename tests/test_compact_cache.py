"""The compact slice cache (int16 HU, windowed when read) and the checks that keep a damaged cache from being reused.

The real CT is TotalSegmentator's example CT (tests/data/realct, see its README for the attribution).
"""
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.data.cohort import discover_cohort
from medseg.data.dataset import SliceDataset
from medseg.data.slice_cache import (CACHE_VERSION, HU_IMAGE_FILE, SCALED_IMAGE_FILE, compact_hu, load_case_arrays,
                                     load_manifest, prepare_cohort, preprocess_case)
from medseg.data.transforms import PreprocessingParams
from medseg.errors import InputError
from medseg.labels import get_label_set

REAL_CT = Path(__file__).parent / "data" / "realct"


def _prepare(raw, out, **kwargs):
    return prepare_cohort(raw, out, split="seeded", test_fraction=0.5, progress=False, **kwargs)


@pytest.fixture(scope="module")
def real_cache(tmp_path_factory):
    out = tmp_path_factory.mktemp("real_cache") / "prepared"
    prepare_cohort(REAL_CT, out, split="all-train", progress=False)
    return out


def _todays_slices(raw_dir, case_id: str) -> np.ndarray:
    """The float32 [0, 1] stack that a version-2 cache stored: the volume chain with the window applied."""
    case = next(c for c in discover_cohort(raw_dir).cases if c.case_id == case_id)
    return preprocess_case(case, get_label_set("synapse8"), PreprocessingParams(), window=True)["image"]


def _as_version_2(cache: Path) -> None:
    """Rewrite ``cache`` in place as version 2 wrote it: float32 [0, 1] ``image.npy``, no ``arrays`` record."""
    manifest = json.loads((cache / "manifest.json").read_text())
    for entry in manifest["cases"]:
        folder = cache / "cases" / entry["case_id"]
        windowed, _ = load_case_arrays(cache, entry["case_id"], mmap=False)
        np.save(folder / SCALED_IMAGE_FILE, windowed.astype(np.float32))
        (folder / HU_IMAGE_FILE).unlink()
        del entry["arrays"]
        entry["provenance"]["cache_version"] = 2
        (folder / "case.json").write_text(json.dumps(entry))
    manifest["version"] = 2
    (cache / "manifest.json").write_text(json.dumps(manifest))


def test_real_ct_is_stored_as_int16_and_reads_bit_identical_to_the_float32_path(real_cache):
    entry = load_manifest(real_cache)["cases"][0]
    folder = real_cache / "cases" / entry["case_id"]
    stored = np.load(folder / HU_IMAGE_FILE)
    assert stored.dtype == np.int16 and not (folder / SCALED_IMAGE_FILE).exists()
    assert stored.min() < -1000 and stored.max() > 1000  # HU, not the window
    todays = _todays_slices(REAL_CT, entry["case_id"])
    assert todays.dtype == np.float32
    in_memory, _ = load_case_arrays(real_cache, entry["case_id"], mmap=False)
    mapped, _ = load_case_arrays(real_cache, entry["case_id"], mmap=True)
    assert in_memory.dtype == np.float32 and in_memory.tobytes() == todays.tobytes()
    for k in range(todays.shape[0]):
        assert mapped[k].dtype == np.float32 and mapped[k].tobytes() == todays[k].tobytes()
    assert np.asarray(mapped).tobytes() == todays.tobytes()
    # half the bytes of the float32 stack (plus the .npy header)
    assert (folder / HU_IMAGE_FILE).stat().st_size < todays.nbytes * 0.51


def test_augmented_samples_are_bit_identical_to_a_version_2_cache(real_cache, tmp_path):
    old = tmp_path / "v2"
    shutil.copytree(real_cache, old)
    _as_version_2(old)
    assert np.load(next((old / "cases").iterdir()) / SCALED_IMAGE_FILE).dtype == np.float32
    for mode in ("fused", "paper"):
        new_set = SliceDataset(real_cache, "all", img_size=48, augment=True, augmentation=mode, seed=3)
        old_set = SliceDataset(old, "all", img_size=48, augment=True, augmentation=mode, seed=3)
        assert len(new_set) == len(old_set) == 30
        for index in range(0, 30, 3):
            a, b = new_set[index], old_set[index]
            assert a["image"].numpy().tobytes() == b["image"].numpy().tobytes()
            assert a["label"].equal(b["label"])


def test_an_older_cache_is_prepared_again_and_a_newer_one_refused(tiny_cohort, tmp_path):
    out = tmp_path / "prepared"
    _prepare(tiny_cohort, out)
    _as_version_2(out)
    summary = _prepare(tiny_cohort, out)
    assert summary.already_done == [] and set(summary.reprepared.values()) == {"other cache version"}
    manifest = load_manifest(out)
    assert manifest["version"] == CACHE_VERSION
    assert all(not (out / "cases" / e["case_id"] / SCALED_IMAGE_FILE).exists() for e in manifest["cases"])

    manifest["version"] = CACHE_VERSION + 1
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=r"manifest.json: slice cache version 4 is newer"):
        load_manifest(out)


@pytest.mark.parametrize("damage, reason", [
    (lambda f: (f / HU_IMAGE_FILE).unlink(), "image_hu.npy is missing"),
    (lambda f: (f / "label.npy").unlink(), "label.npy is missing"),
    (lambda f: (f / HU_IMAGE_FILE).write_bytes((f / HU_IMAGE_FILE).read_bytes()[:-100]), "image_hu.npy has"),
    (lambda f: (f / "label.npy").write_bytes((f / "label.npy").read_bytes()[:200]), "label.npy has 200 bytes"),
    (lambda f: (f / HU_IMAGE_FILE).write_bytes((f / HU_IMAGE_FILE).read_bytes()[:-2] + b"\x7f\x7f"),
     "image_hu.npy was altered"),
])
def test_a_damaged_case_is_prepared_again_not_counted_as_done(tiny_cohort, tmp_path, damage, reason):
    out = tmp_path / "prepared"
    _prepare(tiny_cohort, out)
    before = {e["case_id"]: load_case_arrays(out, e["case_id"], mmap=False) for e in load_manifest(out)["cases"]}
    damage(out / "cases" / "case0002")
    summary = _prepare(tiny_cohort, out)
    assert summary.written == ["case0002"] and summary.reprepared["case0002"].startswith(reason)
    assert sorted(summary.already_done) == ["case0001", "case0003", "case0004"]
    image, label = load_case_arrays(out, "case0002", mmap=False)
    assert np.array_equal(image, before["case0002"][0]) and np.array_equal(label, before["case0002"][1])
    assert _prepare(tiny_cohort, out).already_done == ["case0001", "case0002", "case0003", "case0004"]


def test_hu_that_int16_cannot_hold_exactly_stays_float32(tmp_path):
    hu = np.array([[[-1024.0, 40.0], [0.5, 3000.0]]], dtype=np.float32)
    assert compact_hu(hu).dtype == np.float32 and np.array_equal(compact_hu(hu), hu)
    assert compact_hu(np.array([40000.0], np.float32)).dtype == np.float32
    assert compact_hu(np.array([np.nan], np.float32)).dtype == np.float32
    whole = np.array([-32768.0, 0.0, 32767.0], np.float32)
    assert compact_hu(whole).dtype == np.int16 and np.array_equal(compact_hu(whole), whole)


def test_a_rescaled_ct_with_fractional_hu_reads_as_the_float32_path(tmp_path):
    """A NIfTI whose scl_slope makes fractional HU is stored as float32 HU, and still windows to today's values."""
    raw = tmp_path / "raw"
    for sub in ("img", "label"):
        (raw / sub).mkdir(parents=True)
    image = nib.load(REAL_CT / "img" / "img0001.nii.gz")
    data = np.asarray(image.dataobj, dtype=np.int16)
    scaled = nib.Nifti1Image(data, image.affine)
    scaled.header.set_slope_inter(0.37, -3.1)
    nib.save(scaled, raw / "img" / "img0001.nii.gz")
    shutil.copy(REAL_CT / "label" / "label0001.nii.gz", raw / "label" / "label0001.nii.gz")
    out = tmp_path / "prepared"
    prepare_cohort(raw, out, split="all-train", progress=False)
    folder = out / "cases" / "case0001"
    assert np.load(folder / HU_IMAGE_FILE).dtype == np.float32
    todays = _todays_slices(raw, "case0001")
    assert load_case_arrays(out, "case0001", mmap=False)[0].tobytes() == todays.tobytes()
