import numpy as np
import pytest

from medseg.errors import ConfigError, InputError
from medseg.labels import BTCV13, SYNAPSE8, LabelSet, get_label_set, remap_labels


def test_synapse8_mapping_is_the_papers():
    # BTCV -> task: 8->1, 4->2, 3->3, 2->4, 6->5, 11->6, 1->7, 7->8, others -> 0
    expected = {8: 1, 4: 2, 3: 3, 2: 4, 6: 5, 11: 6, 1: 7, 7: 8}
    assert SYNAPSE8.raw_to_class == expected
    raw = np.arange(14)
    mapped = remap_labels(raw, SYNAPSE8)
    assert mapped.tolist() == [0, 7, 4, 3, 2, 0, 5, 8, 1, 0, 0, 6, 0, 0]
    assert SYNAPSE8.display_names == ("Aorta", "Gallbladder", "Kidney L", "Kidney R", "Liver", "Pancreas",
                                      "Spleen", "Stomach")
    assert SYNAPSE8.num_classes == 9


def test_btcv13_is_identity():
    raw = np.arange(14).reshape(2, 7)
    assert np.array_equal(remap_labels(raw, BTCV13), raw)
    assert BTCV13.num_classes == 14
    assert BTCV13.organs[0] == "spleen" and BTCV13.organs[-1] == "adrenal_left"


@pytest.mark.parametrize("bad", [np.array([0, 14]), np.array([-1, 2]), np.array([0.5, 1.0])])
def test_unknown_label_values_are_rejected(bad):
    with pytest.raises(InputError, match="label"):
        remap_labels(bad, SYNAPSE8, source="label0001.nii.gz")


def test_label_set_round_trips_through_dict():
    for label_set in (SYNAPSE8, BTCV13):
        assert LabelSet.from_dict(label_set.to_dict()) == label_set
        assert get_label_set(label_set.to_dict()) == label_set
    assert get_label_set("SYNAPSE8") is SYNAPSE8
    with pytest.raises(ConfigError, match="unknown label set"):
        get_label_set("synapse9")


def test_every_two_organs_have_clearly_different_colours():
    """A figure tells organs apart by colour: every pair of BTCV organs differs by a CIE76 colour difference of at
    least 35 (fifteen times a just-noticeable difference of about 2.3); liver and right kidney, which sit side
    by side on every axial slice, included."""
    from itertools import combinations

    from skimage.color import rgb2lab

    lab = {key: rgb2lab(np.array(colour, dtype=float).reshape(1, 1, 3) / 255.0)[0, 0]
           for key, colour in zip(BTCV13.organs, BTCV13.colours)}
    distances = {(a, b): float(np.linalg.norm(lab[a] - lab[b])) for a, b in combinations(BTCV13.organs, 2)}
    assert min(distances.values()) >= 35.0, min(distances, key=distances.get)
    assert distances[("kidney_right", "liver")] >= 35.0
