"""The dashboard on volumes: three linked planes, window/level in the colour mapper, the hottest point."""
import numpy as np
import pytest
import torch

import xcam_viz as xv
from xcam_viz.dashboard import Dashboard, Workbench
from xcam_viz.dashboard.volume import PLANES
from xcam_viz.data import ImageSet
from xcam_viz.data.windows import apply_window, window_bounds
from xcam_viz.demo import demo_volume_model, demo_volumes
from xcam_viz.spatial import hottest_point

SLICES = slice(8, 40, 2)           # 16 of the 48 axial slices: voxels twice as deep as wide


@pytest.fixture(scope="module")
def volume_workbench(tmp_path_factory):
    """The 3-D demo model on 6 training and 4 test volumes of 16×48×48 anisotropic voxels."""
    torch.set_num_threads(1)

    def anisotropic(data):
        sz, sy, sx = data.spacing
        return ImageSet(data.images[:, :, SLICES].contiguous(), data.labels, ids=data.ids, class_names=data.class_names,
                        attrs=data.attrs, spacing=(2 * sz, sy, sx))
    splits = {"train": anisotropic(demo_volumes("train", 6)), "test": anisotropic(demo_volumes("test", 4))}
    return Workbench(demo_volume_model(progress=False), splits, tmp_path_factory.mktemp("fb") / "feedback.db")


@pytest.fixture
def dash(volume_workbench):
    return Dashboard(workbench=volume_workbench, background=False)


def image_of(source) -> np.ndarray:
    return source.data["image"][0] if "image" in source.data else source.data["value"][0]


def test_three_planes_show_the_slices_through_the_crosshair_drawn_to_scale(dash, volume_workbench):
    scene, left = dash.overlays.picture, dash.overlays.left
    d, h, w = volume_workbench.input_shape[1:]
    sz, sy, sx = volume_workbench.spacing
    assert scene.point == (d // 2, h // 2, w // 2)
    volume = volume_workbench.picture("train", dash.selection.sample)[0]
    assert volume.dtype == np.uint8 and volume.shape == (d, h, w)
    expected = {"axial": volume[d // 2], "coronal": volume[:, h // 2], "sagittal": volume[:, :, w // 2]}
    for plane in PLANES:
        np.testing.assert_array_equal(image_of(scene.sources[plane.name]), expected[plane.name])
        assert image_of(left.map_sources[plane.name]).shape == expected[plane.name].shape
    glyph = {p: left.figures[p].renderers[0].glyph for p in ("axial", "coronal", "sagittal")}
    assert (glyph["axial"].dw, glyph["axial"].dh) == pytest.approx((w * sx, h * sy))
    assert (glyph["coronal"].dw, glyph["coronal"].dh) == pytest.approx((w * sx, d * sz))
    assert (glyph["sagittal"].dw, glyph["sagittal"].dh) == pytest.approx((h * sy, d * sz))
    axial, coronal = left.figures["axial"], left.figures["coronal"]   # the same mm per pixel on every plane
    assert coronal.frame_height / axial.frame_height == pytest.approx(d * sz / (h * sy), abs=0.02)
    assert max(axial.frame_width, axial.frame_height) >= 256
    assert dash.overlays.snapshot()["volume"]["slices"] == {"axial": [h, w], "coronal": [d, w], "sagittal": [d, h]}
    assert "voxels" in dash.overlays.info.object and "mm" in dash.overlays.info.object


def test_a_click_on_a_plane_moves_the_other_planes_slices(dash, volume_workbench):
    scene, left, right = dash.overlays.picture, dash.overlays.left, dash.overlays.right
    volume = scene.volume
    sz, sy, sx = volume_workbench.spacing
    axial_before = image_of(scene.sources["axial"])
    scene.click(PLANES[0], 10.5 * sx, 30.5 * sy)                  # axial: x right, y up (mm)
    z = scene.point[0]
    assert scene.point == (z, 30, 10)
    assert image_of(scene.sources["axial"]) is axial_before       # its own slice stays
    np.testing.assert_array_equal(image_of(scene.sources["coronal"]), volume[:, 30])
    np.testing.assert_array_equal(image_of(scene.sources["sagittal"]), volume[:, :, 10])
    for view in (left, right):                                    # both views follow one crosshair
        np.testing.assert_array_equal(image_of(view.map_sources["sagittal"]), view._values[:, :, 10])
        at_column, at_row = view.spans["axial"]
        assert (at_column.location, at_row.location) == pytest.approx((10.5 * sx, 30.5 * sy))
        assert view.spans["coronal"][0].location == pytest.approx(10.5 * sx)
    scene.z = 3                                                   # the axial slider
    np.testing.assert_array_equal(image_of(scene.sources["axial"]), volume[3])
    np.testing.assert_array_equal(image_of(left.map_sources["axial"]), left._values[3])


def test_the_window_changes_only_the_colour_mapper(dash, volume_workbench):
    scene = dash.overlays.picture
    assert volume_workbench.window == "ct-lung" and "ct-bone" in scene.param.preset.objects
    assert (scene.mapper.low, scene.mapper.high) == pytest.approx((0, 255))     # as loaded
    sources = [*scene.sources.values(), *(s for v in dash.overlays.views.values() for s in v.map_sources.values())]
    before = [image_of(s) for s in sources]
    scene.preset = "ct-soft-tissue"                                # level 40, width 400 HU
    low, high = window_bounds("ct-lung")
    assert (scene.level, scene.width) == (40, 400)
    assert scene.mapper.low == pytest.approx((40 - 200 - low) / (high - low) * 255)
    assert scene.mapper.high == pytest.approx((40 + 200 - low) / (high - low) * 255)
    scene.width = 800
    assert scene.mapper.high == pytest.approx((40 + 400 - low) / (high - low) * 255)
    assert all(image_of(s) is b for s, b in zip(sources, before))   # no voxel data resent
    assert dash.overlays.snapshot()["volume"]["window"] == [40, 800]


def test_the_hottest_point_is_the_maps_argmax(dash):
    overlays = dash.overlays
    scene, values = overlays.picture, overlays.left.result.values
    scene.param.trigger("hottest")
    assert values[scene.point] == values.max() and scene.point == hottest_point(values)
    assert np.nanmax(image_of(overlays.left.map_sources["axial"])) == pytest.approx(values.max())


def test_the_hottest_point_of_a_flat_maximum_on_the_border_is_the_plateaus_centre():
    values = np.zeros((4, 6, 8), np.float32)
    values[1:3, :, 0:3] = 1.0                                          # a plateau touching the x = 0 border
    assert hottest_point(values) in {(z, y, 1) for z in (1, 2) for y in (2, 3)}
    values[3, 5, 7] = 2.0
    assert hottest_point(values) == (3, 5, 7)


def test_a_new_image_keeps_the_crosshair_and_resends_the_slices(dash, volume_workbench):
    scene = dash.overlays.picture
    scene.move((5, 6, 7))
    sample = volume_workbench.splits["train"].ids[2]
    dash.selection.sample = sample
    assert scene.point == (5, 6, 7) and dash.overlays.left.result.request.sample == sample
    volume = volume_workbench.picture("train", sample)[0]
    np.testing.assert_array_equal(image_of(scene.sources["coronal"]), volume[:, 6])
    threshold_before = image_of(dash.overlays.left.map_sources["axial"])
    dash.overlays.display.threshold = 0.5                         # the 2-D view's threshold rule
    shown = image_of(dash.overlays.left.map_sources["axial"])
    assert np.isnan(shown).sum() > np.isnan(threshold_before).sum()


def test_thumbnails_are_axial_slices_and_the_layers_name_their_depth(dash, volume_workbench):
    thumb = volume_workbench.thumbnail("train", volume_workbench.splits["train"].ids[0])
    assert thumb.ndim == 2 and thumb.dtype == np.uint8 and max(thumb.shape) <= 96
    assert all(label.count("×") == 3 for label in dash.controls.layer.options)        # C×d×h×w
    assert [tab.title for tab in dash.tab_list] == ["Explain", "Feedback", "Fine-tune", "Concepts"]


def test_window_bounds_invert_apply_window():
    for label, window in (("ct-lung", "ct-lung"), ("-600/1500", (-600, 1500)), ((40, 400), (40, 400))):
        low, high = window_bounds(label)                           # a label as data sets record it
        assert apply_window(np.array([low, high, (low + high) / 2]), window) == pytest.approx([0, 1, 0.5])
    assert window_bounds("mri") is None and window_bounds("min-max") is None


def rgb_at(canvas, row: int, col: int) -> np.ndarray:
    """The (r, g, b) a canvas shows at array row `row` (Bokeh's row 0 at the bottom: the index, growing up)."""
    packed = np.asarray(canvas._image.data["image"][0])
    return packed.view(np.uint8).reshape(*packed.shape, 4)[row, col, :3].astype(int)


def test_paint_on_any_plane_extend_fill_undo_and_save(dash, volume_workbench):
    brush, wb = dash.brush, volume_workbench
    dash.show("Feedback")
    painting = brush.painting
    d, h, w = wb.input_shape[1:]
    z = painting.z
    sample = dash.selection.sample
    painting.canvases["axial"].paths.data = {"xs": [[10, 20]], "ys": [[30.5, 30.5]]}   # y up: index 30
    relevant, irrelevant = brush.masks()
    assert relevant.shape == (d, h, w) and not irrelevant.any()
    assert relevant[z, 30, 12:18].all() and not np.delete(relevant, z, axis=0).any()
    painting.y = 30                                               # the stroke shows on the coronal plane
    green = rgb_at(painting.canvases["coronal"], z, 15)
    assert green[1] > green[0] + 40
    assert not painting.canvases["coronal"].paths.data["xs"]     # its tool holds only its own slice's strokes

    painting.param.update(along="axial", reach=2)
    painting.param.trigger("fill_event")                          # one painted slice: nothing to fill between
    assert painting.spreads == []
    painting.param.trigger("extend_event")
    relevant = brush.masks()[0]
    assert np.flatnonzero(relevant.any((1, 2))).tolist() == list(range(z - 2, z + 3))

    painting.z = z + 6                                            # a second stroke, six slices further
    assert not painting.canvases["axial"].paths.data["xs"]
    brush.mode = "relevant"
    painting.canvases["axial"].paths.data = {"xs": [[10, 20]], "ys": [[30.5, 30.5]]}
    assert [s.where for s in brush.strokes] == [(0, z), (0, z + 6)]
    painting.param.trigger("fill_event")
    filled = np.flatnonzero(brush.masks()[0].any((1, 2))).tolist()     # spreads apply to every stroke
    assert filled == list(range(z - 2, min(z + 9, d)))
    brush.param.trigger("undo_event")                             # the fill, then the extend, then a stroke
    brush.param.trigger("undo_event")
    assert painting.spreads == [] and len(brush.strokes) == 2
    brush.param.trigger("undo_event")
    assert len(brush.strokes) == 1

    painting.param.trigger("extend_event")
    before = len(wb.feedback.annotations(sample))
    brush.param.trigger("save_event")
    saved = wb.feedback.annotations(sample)
    assert len(saved) == before + 1 and saved[-1].relevant.shape == (d, h, w)
    assert np.flatnonzero(saved[-1].relevant.any((1, 2))).tolist() == list(range(z - 2, z + 3))
    assert brush.strokes == [] and painting.spreads == []
    assert sample in wb.feedback_ids("train")


def test_finetune_on_volumes_compares_in_three_planes_and_goes_back(tmp_path):
    splits = {split: demo_volumes(split, n) for split, n in (("train", 6), ("test", 4), ("flipped", 4))}
    wb = Workbench(demo_volume_model(progress=False), splits, tmp_path / "feedback.db")
    dash = Dashboard(workbench=wb, background=False)
    tuning, sel, overlays = dash.tuning, dash.selection, dash.overlays
    base, train = sel.version, splits["train"]
    for i in range(3):
        wb.feedback.add(train.ids[i], relevant=train.masks[i].numpy(), author="test")
    tuning.lr, tuning.epochs = 1e-6, 1
    tuning.launch()
    assert tuning.job.wait(300)
    tuning.poll()
    result = tuning.job.result()
    assert tuning.phase == "done" and result.version == tuning.new_version
    assert {"test", "flipped"} <= set(result.metrics.split.values)
    results = tuning.results_table.object
    assert "flipped" in results.split.values and "pointing game (block4 Grad-CAM)" in results.columns
    assert sel.version == result.version and overlays.compare_version == base       # new on the left, parent right
    left, right = overlays.left.result.request, overlays.right.result.request
    assert (left.version, right.version) == (result.version, base) and left.sample == right.sample
    assert overlays.right.heading.object.split(" · ")[2] == base
    dash.controls.back.param.trigger("value")
    assert sel.version == base


def test_the_volume_demo_opens_with_its_own_model_and_feedback(monkeypatch, tmp_path):
    import dataclasses

    import panel as pn

    from xcam_viz.data.examples import EXAMPLES

    small = dataclasses.replace(EXAMPLES["volumes"], sizes={"train": 3, "test": 2, "flipped": 2})
    monkeypatch.setitem(EXAMPLES, "volumes", small)
    monkeypatch.setenv("HOME", str(tmp_path))                          # the default stores: a throwaway cache
    monkeypatch.delenv("XCAM_VIZ_CACHE", raising=False)               # (the model: the checkout's checkpoint)
    monkeypatch.delenv("XCAM_VIZ_FEEDBACK", raising=False)
    monkeypatch.setattr(pn.state, "cache", {})
    dash = Dashboard(demo="volumes", background=False)
    wb = dash.workbench
    assert wb.input_shape == (1, 48, 48, 48) and list(wb.splits) == ["train", "test", "flipped"]
    assert wb.model(wb.base_version).xcam_arch["name"] == "smallcnn3d"
    assert wb.feedback.path.name == "volumes-feedback.db"             # not the 2-D demo's store and versions
    assert dash.overlays.snapshot()["volume"]["slices"]["axial"] == [48, 48]
    with pytest.raises(ValueError, match="no demo 'nodules'"):
        Dashboard(demo="nodules", background=False)


def test_a_volume_thumbnail_shows_the_slice_through_its_maps_maximum_once_known(dash, volume_workbench):
    from xcam_viz.dashboard.mapview import rgba
    from xcam_viz.data.views import axial_thumbnail

    browser, sel, wb = dash.browser, dash.selection, volume_workbench
    ids, d = browser.page_ids(), wb.input_shape[1]
    np.testing.assert_array_equal(wb.thumbnail("train", ids[0]), axial_thumbnail(wb.picture("train", ids[0])[0],
                                                                                 d // 2))
    wb.maps.clear()                                                   # no map known (the workbench is shared)
    wb.thumbnails.clear(lambda key: key[0] == "hottest-slice")
    browser.draw()
    assert browser.snapshot()["slices"] == [None] * len(ids)         # middle slices
    sel.sample = ids[1]
    assert {key[1].sample for key in wb.maps._data} == {ids[1]}, "thumbnails compute no map: only the two views'"
    assert browser.snapshot()["slices"] == [None] * len(ids)         # the map came after the page was updated
    z = hottest_point(dash.overlays.left.result.values)[0]
    sel.sample = ids[2]
    assert browser.snapshot()["slices"] == [None, z] + [None] * (len(ids) - 2)
    patched = browser._montage.data["image"][0].copy()              # only the changed tile was sent

    def tile_of(montage, i):                                          # Bokeh's rows go up
        top, left = browser.grid.picture_corner(i)
        side = browser.grid.tile - 4
        return montage[len(montage) - top - side:len(montage) - top, left:left + side]
    np.testing.assert_array_equal(tile_of(patched, 1), rgba(browser.grid.picture(
        axial_thumbnail(wb.picture("train", ids[1])[0], z))))
    browser.draw()                                                    # as a whole page would be drawn, but for
    redrawn = browser._montage.data["image"][0]                      # the third volume's map, known now
    tile_of(patched, 2)[:] = tile_of(redrawn, 2)
    np.testing.assert_array_equal(patched, redrawn)
    sel.method = next(m for m in sel.param.method.objects if m != sel.method)
    assert browser.snapshot()["slices"][:3] == [None, None, None]    # no map of this method is known yet
    sel.sample = ids[3]
    assert browser.snapshot()["slices"][2] is not None


def test_an_uploaded_nifti_volume_is_explained_like_an_uploaded_image(dash, volume_workbench):
    import gzip

    import nibabel as nib

    from xcam_viz.dashboard.upload import UploadError, decode_upload

    hu = np.full((40, 30, 20), -1000, np.int16)                       # air, a dense block (i, j, k = x, y, z)
    hu[10:30, 5:25, 5:15] = 40
    content = gzip.compress(nib.Nifti1Image(hu, np.diag([2.0, 2.0, 3.0, 1.0])).to_bytes())
    ids = dash.upload.receive(content, "scan.nii.gz")
    sel, shape = dash.selection, volume_workbench.input_shape
    assert sel.split == "uploads" and sel.sample == ids[0]
    assert dash.overlays.left.result.request.sample == ids[0] and dash.overlays.picture.shown == shape[1:]
    volume = volume_workbench.image("uploads", ids[0])[..., 0]         # through the data's lung window
    air, block = apply_window(np.array([-1000.0, 40.0]), "ct-lung")
    assert volume.shape == shape[1:] and volume[:, 0, 0] == pytest.approx(air, abs=0.01)
    assert volume.max() == pytest.approx(block, abs=0.01)
    with pytest.raises(UploadError, match="NIfTI volume"):
        decode_upload(b"\x89PNG....", "picture.png", shape)
    with pytest.raises(UploadError, match="not a readable NIfTI"):
        decode_upload(b"not nifti at all", "scan.nii", shape)
    with pytest.raises(UploadError, match="one 3-D volume"):
        decode_upload(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.int16), np.eye(4)).to_bytes(), "series.nii", shape)


def test_an_uploaded_zip_of_a_dicom_series_is_explained_and_says_which_series(dash, volume_workbench, tmp_path,
                                                                            monkeypatch):
    from test_medical import write_series
    from test_volume_bytes import zipped

    from xcam_viz.dashboard import upload

    write_series(tmp_path / "ct", n=6)
    write_series(tmp_path / "scout", n=1)
    content = zipped(*[(f"{p.parent.name}/{p.name}", p) for p in sorted(tmp_path.rglob("*.dcm"))])
    shown = []
    monkeypatch.setattr(upload, "notify", lambda message, **kw: shown.append(message))
    ids = dash.upload.receive(content, "study.zip")
    sel, shape = dash.selection, volume_workbench.input_shape
    assert sel.split == "uploads" and sel.sample == ids[0] and dash.overlays.left.result.request.sample == ids[0]
    assert shown == [f"opened study.zip as {ids[0]}: DICOM series 1, 6 slices (the largest of 2 series in study.zip; "
                     "left out: series 1, 1 slice; to explain another, zip its files alone)"]
    expected = upload.fit(xv.data.load_dicom(tmp_path / "ct", window="ct-lung")[0].image[None], shape)
    np.testing.assert_allclose(volume_workbench.image("uploads", ids[0])[..., 0], expected[0, 0].numpy(), atol=1e-6)
    assert dash.upload.receive(zipped(("a.txt", b"text")), "notes.zip") == []
    assert "notes.zip holds no DICOM images" in shown[-1]
    assert "zip of a DICOM series" in dash.upload.layout[0].object and ".zip" in dash.upload.input.accept


def test_serve_takes_nifti_folders_through_a_window(monkeypatch, tmp_path):
    import nibabel as nib

    from xcam_viz import cli
    from xcam_viz.dashboard import app
    from xcam_viz.dashboard.dashboard import build_workbench
    from xcam_viz.demo import VOLUMES, cache_dir

    rng = np.random.default_rng(0)
    for split in ("train", "test"):                                   # a folder of scans and its manifest
        (tmp_path / split).mkdir()
        for i in range(2):
            hu = rng.integers(-1000, 400, (24, 24, 12)).astype(np.int16)
            nib.save(nib.Nifti1Image(hu, np.diag([1.5, 1.5, 3.0, 1.0])), tmp_path / split / f"scan{i}.nii.gz")
        (tmp_path / split / "labels.csv").write_text("path,label\nscan0.nii.gz,benign\nscan1.nii.gz,malignant\n")
    seen = {}
    monkeypatch.setattr(app, "serve", lambda **kw: seen.update(kw))
    data = [f"train={tmp_path / 'train' / 'labels.csv'}", f"test={tmp_path / 'test' / 'labels.csv'}"]
    cli.main(["serve", "--data", data[0], "--data", data[1], "--window", "ct-lung"])
    assert seen["window"] == "ct-lung" and seen["data"] == data
    wb = build_workbench(cache_dir() / VOLUMES.checkpoint, data, tmp_path / "feedback.db", window="ct-lung")
    assert wb.spatial_dims == 3 and wb.window == "ct-lung" and wb.spacing == pytest.approx((3.0, 1.5, 1.5))
    dash = Dashboard(workbench=wb, background=False)
    scene = dash.overlays.picture
    assert "ct-bone" in scene.param.preset.objects and dash.overlays.left.result is not None
    assert dash.overlays.snapshot()["volume"]["slices"]["axial"] == list(wb.input_shape[2:])
