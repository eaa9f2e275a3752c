"""Explanation reports: contents, versions that grow finer, netCDF and a self-contained HTML page."""
import numpy as np
import pytest
import xarray as xr

import xcam_viz as xv
from xcam_viz.concepts import dissect
from xcam_viz.demo import demo_volume_model, demo_volumes
from xcam_viz.report.html import SECTIONS
from xcam_viz.spatial import hottest_point


@pytest.fixture(scope="module")
def built(demo_model, demo_test, demo_flipped):
    units = dissect(demo_model, demo_test, "block3", quantile=0.95, progress=False)
    history = xr.Dataset({"loss": ("step", [0.9, 0.5, 0.3])})
    rep = xv.report(demo_model, demo_test, samples=2, methods=("gradcam", "hirescam"), layers=("block3", "block4"),
                    splits={"test": demo_test, "flipped": demo_flipped}, units=units, history=history)
    return rep, units


def test_report_contents(built, demo_model, demo_test, demo_flipped):
    rep, _ = built
    im, ov = rep.images, rep.overview
    assert list(im.sample.values) == demo_test.ids[:2]
    assert im.cam.dims == ("sample", "method", "layer", "y", "x") and im.cam.shape[1:3] == (2, 2)
    assert set(np.unique(im.pointing_game.values)) <= {0.0, 1.0}
    assert im.evidence.shape == (2, 64, 64) and (im.evidence.values != 0).any()
    assert ov.accuracy.sel(split="test") == pytest.approx(xv.models.accuracy(demo_model, demo_test))
    assert ov.accuracy.sel(split="flipped") == pytest.approx(xv.models.accuracy(demo_model, demo_flipped))
    assert int(ov.confusion.sel(split="test").sum()) == len(demo_test)
    # the shortcut model looks outside the lesion more on flipped benign images (which carry the marker)
    outside = ov.cam_mass_outside_relevant
    benign = {"class": "benign"}
    assert float(outside.sel(split="flipped", **benign)) > float(outside.sel(split="test", **benign))
    assert "history_loss" in ov and rep.version == 1


def test_versions_grow_finer(built, demo_model, demo_test):
    rep, units = built
    roi = demo_test.masks[0]
    units.label(demo_test.ids[0], roi, "lesion", threshold=0.01)
    nxt = xv.report(demo_model, demo_test, samples=1, methods=("gradcam",), layers=("block3",), evidence=None,
                    splits={"test": demo_test}, units=units, previous=rep)
    assert nxt.version == 2
    assert any("new unit labels" in c for c in nxt.changes)
    assert "lesion" in nxt.overview.concept.values
    assert "concept_units" in nxt.images and not np.isnan(nxt.images.concept_mean_activation.values).all()


def test_a_volume_report_lays_out_z_y_x_and_shows_each_map_by_its_hottest_slice(tmp_path):
    data = demo_volumes("test", 4)
    rep = xv.report(demo_volume_model(progress=False), data, samples=2, methods=("gradcam",), evidence=None,
                    faithfulness=False, splits={"test": data})
    cam = rep.images.cam.isel(sample=1, method=0, layer=0)
    assert cam.dims == ("z", "y", "x") and rep.images.image.dims == ("sample", "channel", "z", "y", "x")
    assert rep.overview.class_mean_cam.dims == ("split", "class", "z", "y", "x")
    page = rep.save(tmp_path / "report.html").read_text()
    assert f"gradcam @ {rep.images.layer.values[0]} (slice z {hottest_point(cam.values)[0]})" in page
    saved = xr.open_dataset(rep.save(tmp_path / "report.nc"), group="images")
    np.testing.assert_allclose(saved.cam.values, rep.images.cam.values)


def test_netcdf_round_trip(built, tmp_path):
    rep, _ = built
    path = rep.save(tmp_path / "report.nc")
    images = xr.open_dataset(path, group="images")
    overview = xr.open_dataset(path, group="overview")
    np.testing.assert_allclose(images.cam.values, rep.images.cam.values)
    np.testing.assert_allclose(overview.accuracy.values, rep.overview.accuracy.values)
    assert images.attrs["version"] == 1
    with pytest.raises(ValueError, match=".html or .nc"):
        rep.save(tmp_path / "report.pdf")


@pytest.mark.browser
def test_html_opens_offline_without_console_errors(built, tmp_path, page):
    import panel  # noqa: F401 - as in the dashboard's process: Panel's resources must not leak into the page
    rep, _ = built
    path = rep.save(tmp_path / "report.html")
    text = path.read_text()
    assert "<script" in text and "cdn.bokeh.org" not in text and "http://" not in text.split("<body>")[1][:2000]
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))    # the page asks for nothing
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:") else route.abort())
    page.goto(path.as_uri())
    page.wait_for_function("document.querySelectorAll('.bk-Figure, .bk-GridPlot, .bk-Row').length > 0",
                           timeout=120000)
    for section in SECTIONS:
        assert page.locator(f"section#{section}").is_visible(), section
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert errors == []
