"""A user's own data and model: grey and colour (channels=), one split, large images, split names, tables,
concept presets and errors of model work, without the demo's leftovers."""
import io

import numpy as np
import pandas as pd
import panel as pn
import pytest
import torch
from PIL import Image

import xcam_viz as xv
from xcam_viz.dashboard import Dashboard, Workbench
from xcam_viz.dashboard.splits import HELD_OUT
from xcam_viz.dashboard.tuning import versions_table
from xcam_viz.dashboard.upload import decode_upload
from xcam_viz.data import load_data, load_folder, load_splits
from xcam_viz.data.loading import LARGEST_INPUT, model_input
from xcam_viz.data.transform import LUMA, to_channels
from xcam_viz.data.views import decode

CLASSES = ["a class name of thirty-eight characters", "second class with a long name, too"]


def grey_folder(root, n=4, size=(40, 48), classes=CLASSES, seed=0):
    """root/<class>/<i>.png: grey ("L") images, n per class."""
    rng = np.random.default_rng(seed)
    for cls in classes:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


# --- channels= ------------------------------------------------------------------------------------
def test_grey_folder_replicated_and_colour_converted_to_luminance(tmp_path):
    grey = load_folder(grey_folder(tmp_path / "grey"))
    assert grey.image_shape == (1, 40, 48) and "conversion" not in grey.attrs
    rgb = load_folder(tmp_path / "grey", channels=3)
    assert rgb.image_shape == (3, 40, 48) and rgb.attrs["conversion"] == "grey images replicated to 3 channels"
    assert torch.equal(rgb.images, grey.images.expand(-1, 3, -1, -1))
    colour = np.random.default_rng(1).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    (tmp_path / "colour" / "x").mkdir(parents=True)
    for i, img in enumerate(colour):
        Image.fromarray(img).save(tmp_path / "colour" / "x" / f"{i}.png")
    luminance = load_folder(tmp_path / "colour", channels=1)
    assert luminance.image_shape == (1, 16, 16) and "luminance" in luminance.attrs["conversion"]
    expected = (colour / 255.0 * np.array(LUMA)).sum(-1)
    np.testing.assert_allclose(luminance.images[:, 0].numpy(), expected, atol=1e-5)


def test_channels_of_manifests_load_data_arrays_and_uploads(tmp_path):
    grey_folder(tmp_path, n=2)
    rows = ["image,label"] + [f'"{cls}/{i}.png","{cls}"' for cls in CLASSES for i in range(2)]
    (tmp_path / "manifest.csv").write_text("\n".join(rows))
    manifest = load_folder(tmp_path / "manifest.csv", channels=3)
    assert manifest.image_shape[0] == 3 and manifest.attrs["stored_channels"] == 1
    assert load_data(tmp_path / "manifest.csv", channels=3).image_shape[0] == 3
    arrays = xv.data.from_arrays(np.zeros((2, 8, 8), np.uint8), [0, 1], channels=3)
    assert arrays.image_shape == (3, 8, 8) and arrays.attrs["conversion"].startswith("grey")
    buf = io.BytesIO()
    Image.fromarray(np.full((30, 20), 200, np.uint8)).save(buf, format="PNG")
    upload = decode_upload(buf.getvalue(), "x-ray.png", (3, 16, 16)).images
    assert upload.shape == (1, 3, 16, 16) and torch.allclose(upload, torch.full_like(upload, 200 / 255))
    buf = io.BytesIO()
    Image.fromarray(np.full((30, 20), 40000, np.uint16)).save(buf, format="PNG")            # 16-bit grey
    assert torch.allclose(decode_upload(buf.getvalue(), "scan.png", (1, 8, 8)).images, torch.tensor(40000 / 65535))


def test_real_mismatches_are_refused_naming_the_option(tmp_path):
    with pytest.raises(ValueError, match="channels=1 .grey. or channels=3"):
        load_folder(grey_folder(tmp_path), channels=4)
    with pytest.raises(ValueError, match="channels= converts only between grey"):
        to_channels(torch.zeros(1, 2, 4, 4), 3)
    four = xv.models.build("smallcnn", num_classes=2, in_channels=4)
    with pytest.raises(ValueError, match="takes 4-channel images but split 'train' has 1.*channels= converts only"):
        Workbench(four, load_splits(str(tmp_path), model=four), tmp_path / "fb.db")
    rgb = xv.models.build("smallcnn", num_classes=2)
    with pytest.raises(ValueError, match="takes 3-channel images.*channels=3"):
        Workbench(rgb, {"train": load_folder(tmp_path)}, tmp_path / "fb.db")


def test_grey_images_explained_with_an_rgb_resnet18_equal_those_replicated_by_hand(tmp_path):
    torch.manual_seed(0)
    model = xv.models.build("resnet18", num_classes=2)
    assert model_input(model) == (3, None)
    splits = load_splits(str(grey_folder(tmp_path, n=2, size=(64, 64))), model=model)
    grey = splits["train"]
    assert list(splits) == ["train"] and grey.image_shape == (3, 64, 64)
    by_hand = torch.from_numpy(np.stack([np.asarray(Image.open(tmp_path / cls / f"{i}.png"))
                                         for cls in CLASSES for i in range(2)]))
    by_hand = by_hand.float().div(255)[:, None].repeat(1, 3, 1, 1)
    for method in ("gradcam", "hirescam"):
        ours = xv.explain(model, grey, method=method, layer="layer3")
        hand = xv.explain(model, by_hand, method=method, layer="layer3")
        np.testing.assert_allclose(ours.values, hand.values, atol=1e-6)


# --- split names and sizes ------------------------------------------------------------------------
def test_one_unnamed_folder_is_train_and_every_split_gets_one_input_size(tmp_path):
    big = grey_folder(tmp_path / "big", n=1, size=(1024, 800))
    small = grey_folder(tmp_path / "small", n=1, size=(64, 64))
    assert list(load_splits(str(big))) == ["train"]
    splits = load_splits([f"train={big}", f"test={small}"])
    fitted = (1, LARGEST_INPUT, round(800 * LARGEST_INPUT / 1024))            # fitted down, aspect kept
    assert {name: data.image_shape for name, data in splits.items()} == {"train": fitted, "test": fitted}
    assert load_splits(str(big), size=(224, 224))["train"].image_shape == (1, 224, 224)
    vit = xv.models.build("vit_b_16", num_classes=2)
    assert load_splits(str(big), model=vit)["train"].image_shape == (3, 224, 224)      # the model's own size
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "m.npz", **{f"{s}_images": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
                                    for s in ("train", "val", "test")},
             **{f"{s}_labels": rng.integers(0, 2, (3, 1)) for s in ("train", "val", "test")})
    assert list(load_splits(str(tmp_path / "m.npz"))) == ["train", "val", "test"]


def test_large_images_decode_once_into_picture_thumbnail_and_model_input(tmp_path):
    grey_folder(tmp_path, n=1, size=(3328, 4096))
    data = load_folder(tmp_path, size=(416, 512), channels=3)
    view = decode(data, 0)
    assert view.stored == (3328, 4096) and view.picture.shape == (3328, 4096)        # grey: full resolution
    assert max(view.thumbnail.shape) == 96 and view.thumbnail.dtype == np.uint8
    assert torch.equal(view.image, data[0].image)                                # the model input, as ds[i]
    rgb = np.zeros((3000, 3000, 3), np.uint8)
    from xcam_viz.data.views import reduced
    assert reduced(rgb, 16 * 2**20).shape == (1500, 1500, 3)                     # colour: halved to 16 MB RGBA


# --- the dashboard with a user's data --------------------------------------------------------------
@pytest.fixture(scope="module")
def one_split(tmp_path_factory):
    """A Workbench on one grey split (2 long-named classes, 6 images each) and an RGB smallcnn."""
    root = tmp_path_factory.mktemp("one")
    grey_folder(root / "images", n=6, size=(32, 32))
    torch.manual_seed(0)
    model = xv.models.build("smallcnn", num_classes=2)
    return Workbench(model, load_splits(str(root / "images"), model=model), root / "fb.db")


def test_no_demo_leftovers_with_a_users_data(one_split, demo_model, tmp_path):
    dash = Dashboard(workbench=one_split, background=False)
    assert dash.selection.split == "train" and one_split.class_names() == CLASSES
    assert dash.concepts.param.preset.objects == [] and not dash.concepts.preset_select.visible
    assert dash.concepts.concept_input.name == "Concept (type its name)"
    assert "energy in mask, low first" not in dash.browser.param.sort.objects         # no masks: no such sort
    assert "grey images replicated to 3 channels" in dash.overlays.info.object
    words = " ".join(str(pane.object) for pane in dash.tuning.layout.select(pn.pane.Markdown))
    words += dash.overlays.info.object + dash.browser.pager.object
    for word in ("lesion", "marker", "flipped", "benign", "malignant", "|---|"):
        assert word not in words
    demo = Workbench(demo_model, {"test": xv.data.synthetic_lesions(n=4, size=64)}, tmp_path / "demo.db")
    assert "marker ink" in demo.concept_names()                             # the demo's data set brings its presets


def test_one_split_holds_out_a_stratified_evaluation_split(one_split):
    from xcam_viz.finetune.core import held_out

    held = one_split.held_out["train"]
    train = one_split.splits["train"]
    assert torch.equal(held, held_out(train.labels, torch.ones(len(train), dtype=torch.bool)))
    assert train.labels[held].tolist() == [0, 1]                            # one of each class's six
    scored = one_split.evaluation_data("train")
    assert list(scored) == [HELD_OUT] and scored[HELD_OUT].ids == [train.ids[i] for i in held]
    assert not set(one_split.training_data("train").ids) & set(scored[HELD_OUT].ids)
    dash = Dashboard(workbench=one_split, background=False)
    assert "2 train images are held out as **held-out**" in dash.tuning.status.object
    assert list(dash.tuning.history.object.columns) == ["version", "parent", "strategy", "held-out accuracy"]


@pytest.mark.parametrize("scored", [0, 1, 3])
def test_the_versions_table_with_any_number_of_scored_splits(scored):
    splits = ["test", "flipped | odd", "a split named with forty characters, long"][:scored]
    metrics = {f"{s}/{k}": v for s in splits for k, v in (("accuracy", 0.9), ("pointing_game", float("nan")))}
    versions = [("v0", {}, {"metrics": metrics, "layer": "layer4", "method": "gradcam"}),
                ("v1", {"parent": "v0", "strategy": "auto", "flagged": True},
                 {"metrics": {}, "layer": None, "method": None})]
    table = versions_table(versions, "v0", splits)
    assert list(table.columns) == ["version", "parent", "strategy", *[f"{s} accuracy" for s in splits]]
    assert table.version.tolist() == ["v0 (selected)", "v1 ⚠ flagged"] and table.shape == (2, 3 + scored)
    html = pn.pane.DataFrame(table, index=False, escape=True).object.to_html()
    assert html.count("<tr") == 3 and "|---" not in html and "**" not in html
    if scored:
        assert table.iloc[0, 3] == "90.0%" and table.iloc[1, 3] == "—"


def test_errors_of_model_work_become_a_message_with_the_fix_and_no_map(one_split, caplog):
    dash = Dashboard(workbench=one_split, background=False)
    sel, left = dash.selection, dash.overlays.left
    sel.layer = "block3"
    assert left.result is not None and not left.problem
    with torch.no_grad():
        broken = one_split.model("v0")
        saved = broken.head.weight.clone()
        broken.head.weight.fill_(float("nan"))
    try:
        one_split.maps.clear()
        one_split.captures.clear()
        sel.layer = "block4"
        assert left.result is None and left.title.startswith("no map") and left.digest == f"none-{sel.sample}"
        assert "NaN" in left.problem and "Fix: check the checkpoint" in left.problem
        assert left.problem in dash.overlays.info.object and left.problem in caplog.text
        assert dash.probe.state()["left_problem"] == left.problem
    finally:
        with torch.no_grad():
            broken.head.weight.copy_(saved)
    from xcam_viz.dashboard.maps import map_problem

    message = map_problem(ValueError("the model takes 3-channel images, got 1 channels"), (64, 64))
    assert message.endswith("Fix: serve the data with --channels 3 (xv.data.load_folder(..., channels=3)).")
    assert "choose a class the model has" in map_problem(ValueError("target 4 out of range: the model has 3 "
                                                                    "classes (0..2)"), (64, 64))
    assert "--size H W" in map_problem(AssertionError("Wrong image height! Expected 224 but got 128!"), (128, 128))
    assert "another layer" in map_problem(KeyError("model has no layer 'x'"), (8, 8))


def test_tables_are_real_tables(one_split):
    dash = Dashboard(workbench=one_split, background=False)
    assert isinstance(dash.tuning.history.object, pd.DataFrame)
    assert isinstance(dash.tuning.history, pn.pane.DataFrame) and dash.tuning.history.escape


def test_twenty_classes_with_long_names_fit_the_texts(tmp_path):
    names = [f"class {i:02d} with a name of forty characters"[:40] for i in range(20)]
    assert all(len(n) == 40 for n in names)
    rng = np.random.default_rng(0)
    data = xv.data.from_arrays(rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8), np.arange(40) % 20,
                               class_names=names)
    torch.manual_seed(0)
    dash = Dashboard(xv.models.build("smallcnn", num_classes=20), {"test": data}, tmp_path / "fb.db",
                     background=False)
    info, title = dash.overlays.info.object, dash.overlays.left.title
    assert info.count("%") == 3 and "top: " in info                        # the three likeliest classes only
    assert len(title) <= 36 and title.endswith("…")                        # the class name gives way
    assert len(dash.browser.param.true_class.objects) == 21 and len(dash.selection.param.target.objects) == 21
    assert list(dash.tuning.history.object.columns) == ["version", "parent", "strategy", "test accuracy"]
    assert "No training split" in dash.tuning.status.object                 # "test" is never trained on


def test_cli_serve_and_finetune_take_size_and_channels(monkeypatch):
    from xcam_viz import cli
    from xcam_viz.dashboard import app

    seen = {}
    monkeypatch.setattr(app, "serve", lambda **kw: seen.update(kw))
    cli.main(["serve", "--model", "m.pt", "--data", "my_images/", "--size", "512", "416", "--channels", "1"])
    assert seen["data"] == ["my_images/"] and seen["size"] == (512, 416) and seen["channels"] == 1
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["serve", "--channels", "4"])
    args = cli.parser().parse_args(["finetune", "--feedback", "fb.db", "--size", "224", "224"])
    assert args.size == [224, 224] and args.channels is None

    def refuse(**kw):
        raise ValueError("the model takes 4-channel images but split 'train' has 1")
    monkeypatch.setattr(app, "serve", refuse)
    with pytest.raises(SystemExit, match="xcam-viz serve: the model takes 4-channel"):
        cli.main(["serve"])
