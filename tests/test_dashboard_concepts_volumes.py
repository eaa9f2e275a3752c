"""The Concepts tab on volumes without a browser: a region painted on slices ranks and labels units; the
montage shows each unit's best slice."""
import logging

import numpy as np
import pytest
import torch

from xcam_viz.concepts import best_slice
from xcam_viz.dashboard import Dashboard, Workbench
from xcam_viz.dashboard.unit_montage import drawn, unit_views
from xcam_viz.demo import demo_volume_model, demo_volumes

MARKED = 1                      # train volume 1 carries the skin marker on slices 21-26 (y 2-7, x 13-17)


@pytest.fixture(scope="module")
def volume_workbench(tmp_path_factory):
    """The 3-D demo model on 6 training and 4 test volumes of 48³ voxels."""
    torch.set_num_threads(1)
    splits = {"train": demo_volumes("train", 6), "test": demo_volumes("test", 4)}
    return Workbench(demo_volume_model(progress=False), splits, tmp_path_factory.mktemp("fb") / "feedback.db")


@pytest.fixture
def concepts(volume_workbench):
    dash = Dashboard(workbench=volume_workbench, background=False)
    dash.selection.sample = volume_workbench.splits["train"].ids[MARKED]
    dash.show("Concepts")
    return dash.concepts


def marker_voxel(workbench) -> tuple[int, int, int]:
    """The centre voxel (z, y, x) of the marked volume's skin marker."""
    marker = workbench.splits["train"].regions["confounder"][MARKED].numpy()
    return tuple(int(round(c.mean())) for c in np.nonzero(marker))


def test_a_region_painted_on_slices_ranks_the_units_like_the_core(concepts, volume_workbench):
    wb, painting = volume_workbench, concepts.painting
    assert concepts.phase == "ready" and concepts.layer == "block4"
    assert sum(concepts.snapshot()["scatter"].values()) == 64                     # every block4 unit embedded
    assert set(painting.canvases) == {"axial", "coronal", "sagittal"}
    z, y, x = marker_voxel(wb)
    painting.z = z
    concepts.width = 6
    concepts.canvas.paths.data = {"xs": [[x - 1.5, x + 2.5]], "ys": [[y + 0.5, y + 0.5]]}   # axial: y up
    roi = concepts.roi()
    assert roi.shape == (48, 48, 48) and roi[z, y, x] and np.flatnonzero(roi.any((1, 2))).tolist() == [z]
    painting.param.update(along="axial", reach=2)
    painting.param.trigger("extend_event")                      # the region grows to z-2..z+2
    roi = concepts.roi()
    assert np.flatnonzero(roi.any((1, 2))).tolist() == list(range(z - 2, z + 3))
    units = wb.units(concepts.selection.version, "train", "block4")
    expected = units.match(concepts.selection.sample, roi)
    assert concepts.matches == [[int(u), round(float(v), 4)] for u, v in zip(expected.unit.values[:10],
                                                                            expected.values[:10])]
    assert concepts.matches[0][1] > 0.1                         # marker units
    best = units.masks(concepts.selection.sample, [concepts.matches[0][0]])[0].numpy()
    np.testing.assert_array_equal(concepts._best, best)         # the best unit's mask over the planes
    assert concepts.montage_image.shape == (*concepts.grid.size, 3) and concepts.montage_image.std() > 10

    concepts.param.trigger("undo_event")                        # Undo takes the extend back first
    assert painting.spreads == [] and len(concepts.strokes) == 1
    assert np.flatnonzero(concepts.roi().any((1, 2))).tolist() == [z]
    painting.z = z + 5                                          # moving the slice keeps the region and ranking
    matches = concepts.matches
    assert concepts.roi()[z].any() and concepts.matches == matches
    assert not painting.canvases["axial"].paths.data["xs"]     # the axial tool holds only slice z+5's strokes


def test_the_montage_shows_each_units_best_slice(concepts, volume_workbench):
    wb = volume_workbench
    sample = concepts.selection.sample
    z, y, x = marker_voxel(wb)
    roi = np.zeros((48, 48, 48), bool)
    roi[z - 2:z + 3, y - 3:y + 4, x - 3:x + 4] = True
    units = wb.units(concepts.selection.version, "train", "block4")
    chosen = unit_views(units, units.match(sample, roi), sample, roi, rows=3, cols=5)
    assert len(chosen.best) == 3 and all(len(ids) == 5 for ids in chosen.tops.values())
    peak, mask = chosen.views[chosen.best[0], sample]           # the painted volume: its peak inside the region
    assert roi[tuple(peak.values)] and mask.shape == (48, 48, 48)
    for (unit, s), (peak, mask) in chosen.views.items():
        if s != sample:                                         # elsewhere: where the unit fires most
            activation = units.activations(s, [unit])[0]
            assert activation[tuple(peak.values)] == activation.max()
            assert best_slice(mask, peak).shape == (48, 48)
    volume = wb.image("train", sample)                          # tiles are drawn as the planes: y up
    np.testing.assert_array_equal(drawn(volume, peak), volume[int(peak.sel(axis="z"))][::-1])
    np.testing.assert_array_equal(drawn(volume[0], peak.isel(axis=[1, 2])), volume[0])      # an image as stored
    concepts.width = 6
    concepts.painting.z = z
    concepts.canvas.paths.data = {"xs": [[x - 1.5, x + 2.5]], "ys": [[y + 0.5, y + 0.5]]}
    rows = concepts.montage_image.reshape(3, -1, *concepts.montage_image.shape[1:])
    assert all(row.std() > 10 for row in rows)                 # a row of tiles per best unit


def test_labels_go_to_the_store_and_the_report_on_volumes(concepts, volume_workbench):
    wb, painting = volume_workbench, concepts.painting
    z, y, x = marker_voxel(wb)
    painting.z = z
    concepts.width = 6
    concepts.canvas.paths.data = {"xs": [[x - 1.5, x + 2.5]], "ys": [[y + 0.5, y + 0.5]]}
    painting.param.trigger("extend_event")
    concepts.threshold, concepts.concept = 0.1, "skin marker"
    concepts.label()
    current = wb.labels.current("block4")
    labelled = sorted(u for u, (name, _) in current.items() if name == "skin marker")
    scores = wb.units(concepts.selection.version, "train", "block4").match(concepts.selection.sample, concepts.roi())
    assert labelled and labelled == sorted(int(u) for u, v in zip(scores.unit.values, scores.values) if v > 0.1)
    assert concepts.labelled["skin marker"] == len(labelled) and "skin marker" in concepts.dictionary.object
    assert concepts.report_version == 1 and concepts.report_panel.visible
    rep = concepts.report
    assert dict(rep.images.cam.sizes, sample=0) == {"sample": 0, "method": 1, "layer": 1, "z": 48, "y": 48, "x": 48}
    assert list(rep.overview.concept.values) == ["skin marker"] and "z" in rep.overview.class_mean_cam.dims
    page = concepts.download.callback().read().decode()
    assert "xcam-viz explanation report v1 of model v0" in page and "(slice z " in page
    assert concepts.snapshot()["scatter"]["skin marker"] == len(labelled)


def test_a_region_where_no_unit_fires_ranks_all_at_zero(concepts, caplog):
    concepts.width = 2
    with caplog.at_level(logging.WARNING, logger="xcam_viz.dashboard"):
        concepts.canvas.paths.data = {"xs": [[44.5, 46.5]], "ys": [[45.5, 45.5]]}     # air in a corner of the slice
    assert caplog.records == []
    assert len(concepts.matches) == 10 and all(score == 0 for _, score in concepts.matches)
    assert concepts.montage_image.std() == 0 and not concepts._best.any()        # no unit to show
