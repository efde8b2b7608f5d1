"""The one picture module: soft-tissue window, overlay colours, views in radiological orientation, legends."""
from __future__ import annotations

import numpy as np
import pytest

from medseg import visualize
from medseg.io import Volume
from medseg.labels import BTCV13, SYNAPSE8


def test_window_maps_level_40_width_400_to_grey():
    grey = visualize.window_to_unit(np.array([-1000.0, -160.0, 40.0, 240.0, 3000.0]))
    assert grey.tolist() == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.0])


def test_overlay_blends_each_organ_in_its_colour_and_leaves_background_grey():
    image = np.array([[40.0, 40.0, 40.0]])
    labels = np.array([[0, SYNAPSE8.organs.index("liver") + 1, SYNAPSE8.organs.index("kidney_right") + 1]])
    rgb = visualize.label_overlay(image, labels, SYNAPSE8)
    assert rgb[0, 0].tolist() == pytest.approx([0.5, 0.5, 0.5])
    for column, organ in ((1, "liver"), (2, "kidney_right")):
        colour = np.array(SYNAPSE8.colours[SYNAPSE8.organs.index(organ)]) / 255.0
        expected = (1 - visualize.OVERLAY_ALPHA) * 0.5 + visualize.OVERLAY_ALPHA * colour
        assert rgb[0, column] == pytest.approx(expected, abs=1e-6)
    emphasised = visualize.label_overlay(image, labels, SYNAPSE8, emphasis=int(labels[0, 1]))
    assert np.abs(emphasised[0, 1] - 0.5).sum() > np.abs(emphasised[0, 2] - 0.5).sum()  # the organ in question


def test_views_are_radiological_with_square_millimetres():
    """LPS storage with 0.5 x 0.8 x 3 mm voxels: the axial view has the patient's right on the image's left and
    anterior at the top; each aspect is the row spacing over the column spacing."""
    image = np.zeros((10, 12, 4))
    labels = np.zeros((10, 12, 4), dtype=np.uint8)
    labels[0, 0, :] = 1  # i = 0 is the patient's rightmost column, j = 0 the most anterior row in LPS storage
    affine = np.diag([-0.5, -0.8, 3.0, 1.0])
    axial, coronal, sagittal = visualize.preview_views(Volume(image, affine), Volume(labels, affine))
    assert axial.labels.shape == (12, 10) and axial.labels[0, 0] == 1  # anterior row 0, patient right column 0
    assert axial.aspect == pytest.approx(0.8 / 0.5)
    assert coronal.aspect == pytest.approx(3.0 / 0.5) and sagittal.aspect == pytest.approx(3.0 / 0.8)


def test_legend_names_the_organs_shown_or_all():
    labels = np.zeros((6, 6), dtype=np.uint8)
    labels[1:3, 1:3] = 5
    labels[4, 4] = 8
    view = visualize.View("v", None, labels, 1.0)
    figure = visualize.render_views([[view]], SYNAPSE8)
    assert [t.get_text() for t in figure.legends[0].get_texts()] == ["Liver", "Stomach"]
    everything = visualize.render_views([[view]], BTCV13, legend="all")
    assert [t.get_text() for t in everything.legends[0].get_texts()] == list(BTCV13.display_names)
    assert not visualize.render_views([[view]], SYNAPSE8, legend="none").legends


def test_phantom_preview_and_prediction_preview_draw_through_render_views(tmp_path, monkeypatch):
    """Both previews are drawn by the one renderer, with their legend (all BTCV organs / the organs shown)."""
    from medseg.prediction import outputs
    from medseg.phantom import generate_case, preview

    calls = []
    original = visualize.render_views

    def spy(rows, label_set, **kwargs):
        calls.append((len(rows), [len(r) for r in rows], label_set.name, kwargs.get("legend", "shown")))
        return original(rows, label_set, **kwargs)

    monkeypatch.setattr(visualize, "render_views", spy)
    monkeypatch.setattr(preview, "render_views", spy)
    image, label = generate_case(1, 0, "small")
    preview.render_preview([("a", image, label)], tmp_path / "p.png")
    outputs.write_preview(tmp_path / "q.png", image, label, BTCV13, title="q")
    assert calls == [(1, [4], "btcv13", "all"), (1, [3], "btcv13", "shown")]
    for name in ("p.png", "q.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
