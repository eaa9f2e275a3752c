"""The Concepts tab without a browser: region -> ranked units, labels -> store and scatter, caching, errors, report."""
import copy
import logging

import pytest
import torch

from xcam_viz.dashboard import Dashboard, Workbench

SAMPLE = "test-0-00001"                  # several block4 units fire on its lesion
STROKE = {"xs": [[20, 40]], "ys": [[32, 32]]}   # a 12 px wide stroke across the image centre


@pytest.fixture()
def workbench(demo_model, demo_test, demo_flipped, tmp_path):
    return Workbench(demo_model, {"test": demo_test, "flipped": demo_flipped}, tmp_path / "feedback.db")


@pytest.fixture()
def dash(workbench):
    dash = Dashboard(workbench=workbench, background=False)
    dash.selection.sample = SAMPLE
    return dash


def paint(concepts, data=STROKE, width=12):
    concepts.width = width
    concepts.canvas.paths.data = data


def forward_passes(model):
    calls = []
    return calls, model.register_forward_hook(lambda *_: calls.append(1))


def test_tab_computes_only_when_shown(dash, workbench):
    concepts = dash.concepts
    assert concepts.phase == "idle" and workbench._units == {}
    dash.show("Concepts")
    assert concepts.active and concepts.phase == "ready"
    assert list(workbench._units) == [("v0", "test", 64, "block4")]
    assert set(concepts.snapshot()["scatter"]) == {"(unlabelled)"}
    assert sum(concepts.snapshot()["scatter"].values()) == 128                 # every block4 unit


def test_region_ranks_the_units_like_the_core(dash, workbench):
    concepts = dash.concepts
    concepts.active = True
    paint(concepts)
    roi = concepts.roi()
    assert roi[26:38, 20:41].all() and roi.sum() < 0.3 * roi.size              # the painted band, rows ~26-37
    expected = workbench.units("v0", "test", "block4").match(SAMPLE, roi)
    assert concepts.matches == [[int(u), round(float(v), 4)] for u, v in zip(expected.unit.values[:10],
                                                                            expected.values[:10])]
    assert concepts.matches[0][1] > 0.3
    assert list(concepts.table.object.unit) == [u for u, _ in concepts.matches]
    assert concepts._best.any()                                                  # best unit's mask drawn
    montage = concepts.montage_image
    assert montage.shape == (*concepts.grid.size, 3) and montage.std() > 10      # thumbnails, not the blank page


def test_label_writes_the_store_and_recolours_the_scatter(dash, workbench, tmp_path):
    concepts = dash.concepts
    concepts.active = True
    paint(concepts)
    concepts.threshold = 0.45
    ious = workbench.units("v0", "test", "block4").match(SAMPLE, concepts.roi())
    above = sorted(int(u) for u, iou in zip(ious.unit.values, ious.values) if iou > 0.45)
    assert 0 < len(above) < 128
    concepts.concept = "  dark centre "
    concepts.label()
    assert workbench.labels.path == str(tmp_path / "feedback-concepts.db")    # beside the feedback store
    current = workbench.labels.current("block4")
    assert sorted(current) == above and {n for n, _ in current.values()} == {"dark centre"}
    assert concepts.labelled == {"dark centre": len(above)}
    assert concepts.snapshot()["scatter"] == {"dark centre": len(above), "(unlabelled)": 128 - len(above)}
    assert "dark centre" in concepts.param.preset.objects and concepts.preset == "dark centre"
    assert concepts.concept == ""
    assert set(concepts.table.object.concept[:min(len(above), 10)]) == {"dark centre"}
    assert "dark centre" in concepts.dictionary.object
    history = workbench.labels.history()
    assert sorted(history.unit.values.tolist()) == above and set(history.sample_id.values) == {SAMPLE}


def test_units_are_cached_per_version_and_layer(dash, workbench, demo_model):
    concepts = dash.concepts
    concepts.active = True
    first = workbench.units("v0", "test", "block4")
    concepts.layer = "block3"
    assert concepts.phase == "ready" and len(workbench.units("v0", "test", "block3")) == 64
    changed = copy.deepcopy(demo_model)
    with torch.no_grad():
        for weight in changed.parameters():
            weight.add_(0.05 * torch.randn_like(weight))
    version = workbench.registry.register(changed)
    dash.selection.sync_version()
    calls, hook = forward_passes(demo_model)
    try:
        dash.selection.version = version                     # another version: its own dissection
        assert concepts.key == (version, "test", "block3") and concepts.phase == "ready"
        other = workbench.units(version, "test", "block3")
        assert other.model is workbench.model(version)
        assert not torch.allclose(other.thresholds, workbench.units("v0", "test", "block3").thresholds)
        dash.selection.version = "v0"
        concepts.layer = "block4"                            # back to the first: nothing recomputed
        assert calls == [] and workbench.units("v0", "test", "block4") is first
    finally:
        hook.remove()
    assert set(workbench._units) == {("v0", "test", 64, "block4"), ("v0", "test", 64, "block3"),
                                     (version, "test", 64, "block3")}


def test_empty_region_is_a_clear_error(dash, workbench, caplog):
    concepts = dash.concepts
    concepts.active = True
    with caplog.at_level(logging.WARNING, logger="xcam_viz.dashboard"):
        concepts.label()                                     # nothing painted
        paint(concepts, {"xs": [[80, 90]], "ys": [[80, 80]]}, width=4)   # a stroke beside the image
    assert caplog.text.count("the ROI is empty: paint a region first") == 2
    assert len(workbench.labels.history().event) == 0 and concepts.matches == []
    paint(concepts)                                          # the tab stays usable
    assert concepts.matches


def test_new_selection_drops_the_region(dash):
    concepts = dash.concepts
    concepts.active = True
    paint(concepts)
    assert concepts.strokes and concepts.matches
    dash.selection.sample = "test-0-00002"
    assert concepts.strokes == [] and concepts.matches == [] and not concepts._best.any()


@pytest.mark.slow
def test_each_label_makes_the_next_report_version(dash, workbench):
    concepts = dash.concepts
    concepts.active = True
    paint(concepts)
    concepts.preset = "lesion"
    concepts.label()
    assert concepts.report_version == 1 and not concepts.download.disabled
    assert concepts.download.filename == "xcam-viz-report-v1-model-v0.html"
    assert b"xcam-viz explanation report v1 of model v0" in concepts.download.callback().read()
    assert list(concepts.report.overview.concept.values) == ["lesion"]
    assert concepts.report.images.sample.values[0] == SAMPLE
    dash.selection.sample = "test-0-00007"                # another image, another name
    paint(concepts, {"xs": [[20, 40]], "ys": [[33, 33]]})
    concepts.concept, concepts.threshold = "centre", 0.0
    concepts.label()
    assert concepts.report_version == 2 and concepts.labelled.get("centre")
    assert any("new concepts: centre" in c for c in concepts.report.changes), concepts.report.changes
    assert "Report v2 of model v0" in concepts.report_info.object


def test_a_split_that_grows_is_dissected_again(dash, workbench, demo_flipped):
    concepts = dash.concepts
    workbench.add_images("uploads", demo_flipped.images[:4], ["a", "b", "c", "d"])
    dash.selection.param.split.objects = list(workbench.splits)
    dash.selection.split = "uploads"
    concepts.active = True
    assert concepts.ready and len(workbench.units("v0", "uploads", "block4").data) == 4
    workbench.add_images("uploads", demo_flipped.images[4:6], ["e", "f"])      # e.g. two more uploads
    dash.selection.sample = "f"
    assert concepts.ready and len(workbench.units("v0", "uploads", "block4").data) == 6
    paint(concepts)
    assert len(concepts.matches) == 10
