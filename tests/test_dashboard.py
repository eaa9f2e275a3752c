"""The dashboard's logic without a browser: geometry, caches, selection, components, sessions."""
import json

import holoviews as hv
import numpy as np
import pytest
import torch

import xcam_viz as xv
from xcam_viz.dashboard import Dashboard, MapRequest, Workbench
from xcam_viz.dashboard.cache import LRUCache
from xcam_viz.dashboard.mapview import palette, thresholded
from xcam_viz.dashboard.overlay import SAME
from xcam_viz.dashboard.raster import Grid, Stroke, montage, plot_to_pixel, stroke_mask, strokes_to_masks
from xcam_viz.demo import demo_data
from xcam_viz.finetune import DEFAULTS, STRATEGIES


@pytest.fixture(scope="module")
def workbench(demo_model, demo_test, demo_flipped, tmp_path_factory):
    path = tmp_path_factory.mktemp("feedback") / "feedback.db"
    train = demo_data("train", n=128)
    return Workbench(demo_model, {"train": train, "test": demo_test, "flipped": demo_flipped}, path)


@pytest.fixture()
def dash(workbench):
    """A session browsing the test split (a session opens on train: test_sessions_open_on_the_training_split)."""
    d = Dashboard(workbench=workbench, background=False)
    d.selection.split = "test"
    return d


def count_passes(model):
    """A list that grows by one per forward pass of `model` (and the hook handle)."""
    calls = []
    return calls, model.register_forward_hook(lambda *_: calls.append(1))


# --- geometry -------------------------------------------------------------------------------------
def test_stroke_mask_orientation_matches_holoviews():
    h, w = 64, 48
    mask = stroke_mask([10.5], [60.5], width=1, shape=(h, w))        # one point near the top
    assert mask.sum() == 1 and mask[3, 10]
    assert plot_to_pixel(10.5, 60.5, h) == (3, 10)
    image = hv.Image(mask.astype(float), bounds=(0, 0, w, h))        # hv draws row 0 at the top
    assert image[10.5, 60.5] == 1 and image[10.5, 3.5] == 0


def test_stroke_mask_covers_a_thick_line():
    mask = stroke_mask([5, 40], [32, 32], width=6, shape=(64, 64))
    rows = np.nonzero(mask.any(1))[0]
    assert rows.min() == 29 and rows.max() == 34                     # 3 px each side of y = 32
    assert mask[31, 5:41].all() and not mask[31, :2].any()
    assert not stroke_mask([100], [100], 4, (64, 64)).any()          # outside the image


def test_strokes_paint_erase_and_override_in_order():
    line = dict(xs=[0, 64], ys=[32, 32], width=4)
    rel, irr = strokes_to_masks([Stroke(kind="relevant", **line), Stroke(kind="irrelevant", **line)], (64, 64))
    assert not rel.any() and irr.sum() > 0
    rel, irr = strokes_to_masks([Stroke(kind="relevant", **line), Stroke([10, 20], [32, 32], "erase", 4)], (64, 64))
    assert rel[31, 5] and not rel[31, 15] and not irr.any()
    with pytest.raises(ValueError, match="unknown stroke kind"):
        strokes_to_masks([Stroke(kind="paint", **line)], (64, 64))


def test_montage_tiles_are_where_taps_land():
    grid = Grid(cols=3, rows=2, tile=40)
    colours = [np.full((8, 8, 3), v / 10, np.float32) for v in range(5)]
    image = montage(colours, [f"t{i}" for i in range(5)], [True, False] * 3, [False] * 5, grid)
    assert image.shape == (*grid.size, 3) and image.dtype == np.uint8
    red = hv.Image(image[..., 0], bounds=(0, 0, grid.size[1], grid.size[0]))    # hv's orientation
    for i in range(5):
        x, y = grid.centre(i)
        assert grid.tile_at(x, y) == i
        x0, y0, x1, y1 = grid.box(i)
        assert grid.tile_at(x0 + 20, y1 - 20) == i
        assert abs(red[x0 + 20, y1 - 20] - round(i / 10 * 255)) <= 1     # tile i's colour
    assert grid.tile_at(-1, 5) is None and grid.tile_at(5, grid.size[0] + 1) is None


# --- caches and background work -------------------------------------------------------------------
def test_lru_cache_evicts_by_bytes():
    cache = LRUCache(max_bytes=3 * 800)
    for i in range(5):
        cache.put(i, np.zeros(100))                                    # 800 bytes each
    assert list(cache._data) == [2, 3, 4] and cache.bytes == 2400
    assert cache.get(2) is not None
    cache.put(5, np.zeros(100))
    assert 3 not in cache and 2 in cache                                # 2 was used recently
    assert cache.get_or_compute("x", lambda: np.ones(1))[0] == 1 and cache.get("x") is not None
    cache.clear(lambda k: k == "x")
    assert "x" not in cache


# --- workbench -------------------------------------------------------------------------------------
def test_method_change_reuses_the_capture(workbench, demo_model):
    sample = workbench.splits["test"].ids[5]
    calls, handle = count_passes(demo_model)
    try:
        first = workbench.saliency(MapRequest("v0", "test", sample, "gradcam", "block3"))
        passes = len(calls)
        for method in ("hirescam", "gradcam++", "xgradcam", "layercam", "eigencam"):
            out = workbench.saliency(MapRequest("v0", "test", sample, method, "block3"))
            assert out.values.shape == (64, 64) and 0 <= out.values.min() and out.values.max() <= 1
        assert len(calls) == passes                                     # no model pass
        workbench.saliency(MapRequest("v0", "test", sample, "gradcam", "block2"))
        assert len(calls) == passes + 1                                 # a new layer: one pass
        again = workbench.saliency(MapRequest("v0", "test", sample, "gradcam", "block3"))
        assert again is first and len(calls) == passes + 1
    finally:
        handle.remove()


def test_target_and_evidence(workbench):
    sample = workbench.splits["test"].ids[0]
    pred = int(workbench.predictions("v0", "test").predicted.sel(sample=sample))
    predicted = workbench.saliency(MapRequest("v0", "test", sample, "gradcam", "block3"))
    explicit = workbench.saliency(MapRequest("v0", "test", sample, "gradcam", "block3", target=pred))
    other = workbench.saliency(MapRequest("v0", "test", sample, "gradcam", "block3", target=1 - pred))
    assert predicted.target_class == explicit.target_class == pred and other.target_class == 1 - pred
    assert predicted.digest == explicit.digest != other.digest
    ev = workbench.saliency(MapRequest("v0", "test", sample, "efficient", ""))
    assert ev.signed and ev.values.shape == (64, 64) and ev.values.min() < 0 < ev.values.max()


def test_layers_methods_and_versions(workbench, demo_model):
    layers = dict(workbench.layers("v0"))
    assert layers["block3"] == (64, 16, 16) and not workbench.is_segmenter()
    assert "gradcam" in workbench.methods() and {"efficient", "pda"} <= set(workbench.methods())
    assert "seg-gradcam" not in workbench.methods()
    with pytest.raises(KeyError, match="unknown model version"):
        workbench.model("v9")


# --- components ------------------------------------------------------------------------------------
def test_selection_follows_versions_and_normalises_evidence(dash):
    sel = dash.selection
    assert sel.layer == "block4" and sel.method == "gradcam" and sel.split == "test"
    assert sel.request(method="efficient").layer == "" and sel.request().layer == "block4"
    sel.split = "flipped"
    assert sel.sample == dash.workbench.splits["flipped"].ids[0]


def test_browser_filters_sorts_pages_and_clicks(dash, workbench):
    b, pred = dash.browser, workbench.predictions("v0", "test")
    assert len(b.ids) == 64 and b.pages == 4 and len(b.page_ids()) == 20
    b.outcome = "wrong"
    assert set(b.ids) == set(pred.sample.values[~pred.correct.values])
    b.outcome, b.true_class = "any", 1
    assert set(b.ids) == set(pred.sample.values[pred.label.values == 1])
    b.true_class, b.sort = -1, "confidence"
    conf = pred.confidence.sel(sample=b.ids).values
    assert (np.diff(conf) >= 0).all()
    b._turn(1)
    assert b.page == 1 and b.page_ids() == b.ids[20:40]
    b.click(*b.grid.centre(2))
    assert dash.selection.sample == b.ids[22]
    dash.selection.sample = b.ids[25]                                   # not a click: the outline is sent
    assert b._tiles.selected.indices == [5] and b._tiles.data["id"][5] == b.ids[25]
    b.sort = "pointing_game"                                            # computed inline here
    scores = b._scores[b._metric_key()]["pointing_game"]
    assert [scores[s] for s in b.ids] == sorted(scores[s] for s in b.ids)


def test_overlay_updates_in_place_on_selection_changes(dash):
    left, right = dash.overlays.left, dash.overlays.right
    source_before, right_before = left.map_source, right.digest
    digests = [left.digest]
    dash.selection.sample = dash.workbench.splits["test"].ids[7]
    digests.append(left.digest)
    dash.selection.layer = "block3"
    digests.append(left.digest)
    right_before = right.digest
    dash.selection.method = "layercam"
    digests.append(left.digest)
    assert len(set(digests)) == 4 and left.map_source is source_before
    assert right.digest == right_before                               # its request did not change
    assert left.title.startswith("layercam · block3 · v0") and left.figure.title.text == left.title
    shown = np.asarray(left.map_source.data["value"][0])[::-1]        # Bokeh draws row 0 at the bottom
    np.testing.assert_allclose(shown, left.result.values)
    dash.overlays.compare_method = "eigencam"
    assert right.title.startswith("eigencam · block3") and right.digest != left.digest
    assert right.figure.x_range is left.figure.x_range                # linked zoom and pan
    dash.selection.sample = dash.workbench.splits["test"].ids[0]      # its evidence is cached already
    dash.selection.method = "efficient"
    low, high = left.mapper.low, left.mapper.high
    assert tuple(left.mapper.palette) == palette("RdBu_r")
    assert left.result.signed and left.colormap == "RdBu_r" and low == -high < 0
    assert np.isclose(high, np.abs(left.result.values).max())
    dash.overlays.display.cmap = "viridis"
    assert left.colormap == "RdBu_r" and right.colormap == "viridis"
    assert tuple(right.mapper.palette) == palette("viridis") and tuple(left.mapper.palette) == palette("RdBu_r")
    dash.overlays.display.threshold, dash.overlays.display.opacity = 0.5, 0.8
    hidden = np.isnan(np.asarray(right.map_source.data["value"][0])[::-1])
    np.testing.assert_array_equal(hidden, right.result.values < 0.5 * right.result.values.max())
    assert right.heat.glyph.global_alpha == 0.8


def test_threshold_hides_low_values():
    values = np.array([[0.1, 0.5], [-0.9, 1.0]], np.float32)
    assert np.isnan(thresholded(values, False, 0.3)).tolist() == [[True, False], [True, False]]
    assert np.isnan(thresholded(values, True, 0.3)).tolist() == [[True, False], [False, False]]
    assert not np.isnan(thresholded(values, True, 0)).any()


def test_brush_strokes_undo_clear_and_save(dash, workbench):
    brush, sel = dash.brush, dash.selection
    sel.sample = sample = workbench.splits["test"].ids[11]
    before = len(workbench.feedback.annotations(sample))
    brush.canvas.paths.data = {"xs": [[10, 30]], "ys": [[54, 54]]}          # rows ~9-10
    brush.mode = "irrelevant"                                          # later strokes only
    brush.canvas.paths.data = {"xs": [[10, 30], [40, 50]], "ys": [[54, 54], [10, 10]]}
    assert [s.kind for s in brush.strokes] == ["relevant", "irrelevant"]
    relevant, irrelevant = brush.masks()
    assert relevant[9:11, 12:28].all() and irrelevant[53:55, 42:48].all()
    assert json.loads(dash.probe.pane.object.split(">", 1)[1].rsplit("<", 1)[0])["strokes"] == 2
    brush.undo()
    assert len(brush.strokes) == 1 and not brush.masks()[1].any()
    brush.save()
    saved = workbench.feedback.annotations(sample)
    assert len(saved) == before + 1 and saved[-1].relevant[9:11, 12:28].all()
    assert saved[-1].model_version == "v0" and brush.strokes == [] and sel.revision == 1
    assert sample in workbench.feedback_ids("test")
    dash.browser.feedback = "with feedback"
    assert sample in dash.browser.ids
    assert brush._stale and f"{before + 1} annotation" not in brush.summary.object  # off screen: not drawn
    dash.show("Feedback")
    assert brush.active and not brush._stale and f"{before + 1} annotation" in brush.summary.object
    dash.show("Explain")
    brush.undo()                                                       # nothing pending: undo the saved one
    assert len(workbench.feedback.annotations(sample)) == before
    brush.canvas.paths.data = {"xs": [[1, 5]], "ys": [[1, 1]]}
    sel.sample = workbench.splits["test"].ids[12]                      # another image drops pending strokes
    assert brush.strokes == []
    brush.save()                                                       # nothing to save: a notice, no row
    assert len(workbench.feedback.annotations(sel.sample)) == 0


def test_sessions_are_independent(workbench):
    a, b = Dashboard(workbench=workbench, background=False), Dashboard(workbench=workbench, background=False)
    a.selection.sample = workbench.splits["train"].ids[3]
    a.selection.method = "hirescam"
    assert b.selection.sample == workbench.splits["train"].ids[0] and b.selection.method == "gradcam"
    assert a.overlays.left.digest != b.overlays.left.digest
    assert a.probe.state()["sample"] != b.probe.state()["sample"]


def test_cli_serve_arguments():
    from xcam_viz.cli import parser

    args = parser().parse_args(["serve", "--port", "0", "--data", "test=a.npz", "--data", "b"])
    assert args.address == "127.0.0.1" and args.port == 0 and args.data == ["test=a.npz", "b"]
    assert args.model is None and args.feedback is None


# --- splits and fine-tuning -----------------------------------------------------------------------
def test_sessions_open_on_the_training_split(workbench, tmp_path):
    dash = Dashboard(workbench=workbench, background=False)
    train = workbench.splits["train"]
    assert dash.selection.split == "train" and dash.selection.sample == train.ids[0]
    assert dash.browser.ids[:3] == train.ids[:3] and dash.probe.state()["split"] == "train"
    assert workbench.training_splits() == ["train"] and workbench.evaluation_splits("train") == ["test", "flipped"]
    assert dash.tuning.split == "train" and dash.tuning.param.split.objects == ["train"]
    with pytest.raises(ValueError, match="trains on train, not on 'test'"):
        workbench.finetune(workbench.base_version, "test")
    other = Workbench(workbench.model("v0"), {"test": workbench.splits["test"], "flipped": workbench.splits["flipped"]},
                      tmp_path / "fb.db")
    test = other.splits["test"]
    other.add_images("uploads", test.images[:2], ["upload-a", "upload-b"])       # no labels: never trained on
    assert other.opening_split == "test" and other.training_splits() == ["flipped"]
    assert other.evaluation_splits("flipped") == ["test"]


def test_the_demo_has_a_training_split(tmp_path):
    wb = Workbench.demo(tmp_path / "feedback.db")
    assert list(wb.splits) == ["train", "test", "flipped"] and len(wb.splits["train"]) == 2000
    assert wb.opening_split == "train" and wb.training_splits() == ["train"]


def test_finetune_settings_are_the_core_defaults_unless_changed(dash, monkeypatch):
    import panel as pn

    tuning, calls = dash.tuning, []
    assert tuning.param.strategy.objects == ["auto", *STRATEGIES] and tuning.strategy == "auto"
    advanced = [card for card in tuning.layout.select(pn.Card) if card.title == "Advanced"]
    assert len(advanced) == 1 and advanced[0].collapsed
    assert [w.value for w in advanced[0].objects[:3]] == [DEFAULTS[k] for k in ("lam", "epochs", "lr")]

    def record(version, split, owner, **settings):
        calls.append((version, split, settings))
        raise RuntimeError("recorded")
    monkeypatch.setattr(dash.workbench, "finetune", record)
    tuning.launch()
    assert calls[-1] == (dash.selection.version, "train",
                         {"strategy": "auto", "layer": "block4", "lam": None, "epochs": None, "lr": None})
    tuning.strategy, tuning.epochs = "rrr", 3
    summary = STRATEGIES["rrr"].summary
    assert summary in tuning.help.object and summary in tuning.strategy_select.description     # text and tooltip
    tuning.launch()
    assert calls[-1][2] == {"strategy": "rrr", "layer": "block4", "lam": None, "epochs": 3, "lr": None}
    tuning.strategy = "auto"
    assert "move-irrelevant" in tuning.help.object and "swap-background" in tuning.help.object


def run_to_end(tuning):
    """Launch, wait for the background job, show its outcome; returns the FinetuneResult."""
    tuning.launch()
    assert tuning.job.wait(300) and tuning.launch_button.disabled
    tuning.poll()
    assert tuning.phase == "done" and tuning.progress == 100 and not tuning.launch_button.disabled
    return tuning.job.result()


def test_finetune_trains_on_train_compares_and_goes_back_to_the_parent(dash, workbench, caplog):
    tuning, sel, overlays = dash.tuning, dash.selection, dash.overlays
    base = sel.version
    tuning.launch()                                                    # no feedback on train yet
    assert tuning.job is None and "no feedback" in caplog.text
    train = workbench.splits["train"]
    for i in range(3):
        workbench.feedback.add(train.ids[i], relevant=train.masks[i].numpy(), author="test")
    tuning.lr, tuning.epochs = 1e-6, 1                                 # changes almost nothing: not flagged
    result = run_to_end(tuning)
    new = tuning.new_version
    assert not result.flagged and not tuning.warning.visible and result.version == new
    assert list(result.metrics.split.values) == ["test", "flipped", "validation"]   # never the training split
    assert result.settings["lam"] == DEFAULTS["lam"] and result.settings["epochs"] == 1
    results, history = tuning.results_table.object, tuning.history.object
    assert "flipped" in results.split.values and "pointing game (block4 Grad-CAM)" in results.columns
    assert "test pointing game (block4 Grad-CAM)" in history.columns
    assert history.iloc[-1][["version", "parent"]].tolist() == [f"{new} (selected)", base]
    assert workbench.parent(new) == base and new in dash.controls.version.options

    # the compare view: the new version on the left, its parent on the right, same method and layer
    assert sel.version == new and overlays.compare_version == base
    assert overlays.compare_method == overlays.compare_layer == SAME               # (it opened with HiResCAM)
    for method, layer in (("gradcam", "block4"), ("hirescam", "block3")):
        sel.method, sel.layer = method, layer
        left, right = overlays.left.result.request, overlays.right.result.request
        assert (left.version, right.version) == (new, base)
        assert (left.method, left.layer, left.sample) == (right.method, right.layer, right.sample) == (method, layer,
                                                                                                     sel.sample)
    assert overlays.right.title.split(" · ")[:3] == ["hirescam", "block3", base]

    # back to the parent; the next run starts from it
    back = dash.controls.back
    assert back.label == f"Back to parent ({base})" and not back.disabled
    back.param.trigger("value")                                        # what a click does
    assert sel.version == base and back.disabled and overlays.left.title.split(" · ")[2] == base
    again = run_to_end(tuning)
    assert again.base_version == base and workbench.parent(again.version) == base and sel.version == again.version


def test_a_flagged_run_is_saved_but_not_selected(dash, workbench, caplog):
    import logging

    caplog.set_level(logging.INFO, "xcam_viz.dashboard")
    tuning, sel = dash.tuning, dash.selection
    base = sel.version
    train = workbench.splits["train"]
    if not workbench.feedback_ids("train"):
        workbench.feedback.add(train.ids[0], relevant=train.masks[0].numpy(), author="test")
    tuning.lr, tuning.epochs = 0.3, 1                                  # wrecks the model: validation accuracy falls
    result = run_to_end(tuning)
    assert result.flagged and result.version in workbench.versions
    assert sel.version == base and dash.overlays.compare_version == result.version        # shown, not selected
    assert dash.overlays.right.title.split(" · ")[2] == result.version
    assert tuning.warning.visible and result.warning in tuning.warning.object and "flagged" in tuning.results.object
    assert f"{result.version} ⚠ flagged" in tuning.history.object.version.values
    assert f"{result.version} is flagged" in caplog.text
    state = dash.probe.state()["finetune"]
    assert state["flagged"] and state["warning"] == result.warning and state["version"] == result.version


def test_dashboard_renders_to_bokeh_models(dash):
    import panel as pn
    from bokeh.document import Document
    from bokeh.models import FreehandDrawTool, Plot

    root = pn.panel(dash).get_root(Document())
    plots = list(root.select({"type": Plot}))
    assert len(plots) >= 5                                    # montage, 2 overlays, brush, losses
    assert any("tap" in p.subscribed_events for p in plots)   # the montage's Tap stream is wired
    assert any(isinstance(t, FreehandDrawTool) for p in plots for t in p.toolbar.tools)
    overlays = [p for p in plots if p.title is not None and " · " in (p.title.text or "")]
    assert len(overlays) == 2 and overlays[0].x_range is overlays[1].x_range   # linked zoom and pan
    dash.browser._turn(1)                                               # updates go into the live models
    dash.selection.sample = dash.browser.page_ids()[1]
    assert dash.probe.state()["sample"] == dash.browser.page_ids()[1]


def test_finetune_can_be_cancelled(dash, workbench):
    tuning = dash.tuning
    sample = workbench.splits["train"].ids[2]
    workbench.feedback.add(sample, relevant=workbench.ground_truth("train", sample), author="test")
    versions = workbench.versions
    tuning.epochs = 50
    tuning.launch()
    tuning.cancel()
    assert tuning.job.wait(120)
    tuning.poll()
    assert tuning.phase == "cancelled" and workbench.versions == versions and not tuning.launch_button.disabled


def test_models_and_data_from_specs(tmp_path, demo_test):
    import xcam_viz as xv
    from xcam_viz.dashboard.dashboard import load_model
    from xcam_viz.data import load_splits as load_data

    assert load_model("smallcnn").xcam_arch["name"] == "smallcnn"
    path = xv.models.save(load_model("smallcnn"), tmp_path / "m.pt")
    assert isinstance(load_model(str(path)), type(load_model("smallcnn")))
    with pytest.raises(FileNotFoundError, match="neither a checkpoint"):
        load_model("no-such-model")
    assert load_data(demo_test) == {"test": demo_test} and load_data(None) is None


def test_segmenter_targets_a_point_or_a_painted_region(tmp_path):
    import torch

    import xcam_viz as xv

    torch.manual_seed(0)
    data = xv.data.synthetic_lesions(n=8, size=64, split="test", task="segmentation")
    wb = Workbench(xv.models.build("unet", num_classes=3), {"test": data}, tmp_path / "fb.db")
    dash = Dashboard(workbench=wb, background=False)
    sel = dash.selection
    assert wb.is_segmenter() and sel.method == "seg-gradcam" and sel.layer == "dec1"
    assert set(wb.methods()) == {"seg-gradcam", "seg-hirescam", "eigencam"}
    assert dash.controls.region.visible and dash.overlays.compare_method == "seg-hirescam"
    sel.layer, sel.region = "bottleneck", "point"             # (at dec1 a pixel's gradient is that pixel's
    before = dash.overlays.left.digest                         # only: the head is a 1×1 convolution)
    dash.overlays.click(40.5, 20.5)                                   # plot (x, y) -> pixel row 43, col 40
    assert sel.point == (43, 40) and sel.request().region == (43, 40) and dash.overlays.left.digest != before
    sel.region = "painted"
    dash.brush.canvas.paths.data = {"xs": [[10, 30]], "ys": [[40, 40]]}
    region = sel.request().region
    assert region[0] == "mask" and sel.painted[23, 10:30].all()
    assert dash.overlays.left.result.request.region == region


@pytest.mark.slow
def test_a_vision_transformer_in_the_dashboard(tmp_path):
    """A ViT's token layers are listed as grids, its default layer is the last block's input norm, and its
    maps come at the input size."""
    torch.manual_seed(0)
    vit = xv.models.build("vit_b_16", num_classes=2)
    torch.nn.init.normal_(vit.heads.head.weight, std=0.02)
    wb = Workbench(vit, {"test": xv.data.synthetic_lesions(n=4, size=224, split="test")}, tmp_path / "vit.db")
    dash = Dashboard(workbench=wb, background=False)
    layers = dict(wb.layers("v0"))
    assert layers["encoder.layers.encoder_layer_11.ln_1"] == (768, 14, 14)
    assert dash.selection.layer == "encoder.layers.encoder_layer_11.ln_1"
    dash.selection.sample = wb.splits["test"].ids[1]
    result = dash.overlays.left.result
    assert result.values.shape == (224, 224) and result.request.layer == dash.selection.layer
    assert np.isfinite(result.values).all() and result.values.max() > 0
