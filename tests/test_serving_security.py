"""The served app and untrusted files: checkpoints without pickle, uploads checked by content and size,
optional basic authentication, and a server that listens on localhost only unless asked."""
import ast
import io
import os
import re
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from http.cookiejar import CookieJar
from pathlib import Path

import numpy as np
import pytest
import torch
from browser.harness import Server
from PIL import Image

from xcam_viz.dashboard import Dashboard, Workbench
from xcam_viz.dashboard.upload import UPLOAD_SPLIT, UploadError, decode_upload, websocket_limit

PACKAGE = Path(__file__).resolve().parents[1] / "xcam_viz"
SHAPE = (3, 64, 64)


def encoded(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


RNG = np.random.default_rng(0)
PICTURE = RNG.integers(0, 256, (40, 50, 3), dtype=np.uint8)


# --- checkpoints ----------------------------------------------------------------------------------
# Modules that unpickle only what travels through a pipe between the server and the child process it forked
# (fine-tuning runs): nothing from a file, an upload or the network.
PRIVATE_PIPES = {"xcam_viz/finetune/process.py"}


def test_every_torch_load_in_the_package_passes_weights_only_true():
    calls, unsafe, piped = [], [], set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
            kwargs = {k.arg: k.value for k in node.keywords}
            where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
            if (owner, node.func.attr) == ("torch", "load"):
                calls.append(where)
                ok = isinstance(kwargs.get("weights_only"), ast.Constant) and kwargs["weights_only"].value is True
                if not ok:
                    unsafe.append(where)
            if owner in ("pickle", "dill", "joblib") and node.func.attr in ("load", "loads"):
                module = str(path.relative_to(PACKAGE.parent))
                piped.add(module) if module in PRIVATE_PIPES else unsafe.append(where)
            if node.func.attr == "load" and owner == "np" and not (
                    isinstance(kwargs.get("allow_pickle"), ast.Constant) and kwargs["allow_pickle"].value is False):
                unsafe.append(where)
    assert calls, "the package loads checkpoints somewhere: the search found no torch.load"
    assert unsafe == [], f"loads that may unpickle code: {unsafe}"
    assert piped == PRIVATE_PIPES, "an allowed private pipe no longer unpickles: drop it from PRIVATE_PIPES"


# --- uploads: type by content, size, decoding limits ----------------------------------------------
@pytest.mark.parametrize("name, content, channels", [
    ("photo.png", encoded(PICTURE), 3),
    ("photo.JPG", encoded(PICTURE, "JPEG"), 3),
    ("gray.png", encoded(PICTURE[..., 0]), 3),
    ("rgba.png", encoded(np.dstack([PICTURE, np.full((40, 50), 128, np.uint8)])), 3),
    ("one.npz", npz(image=PICTURE), 3),
    ("stack.npz", npz(images=RNG.random((5, 32, 32)).astype(np.float32)), 3),
    ("medmnist.npz", npz(test_images=PICTURE[None].repeat(3, 0), test_labels=np.zeros(3)), 1),
])
def test_valid_uploads_are_fitted_to_the_model_input(name, content, channels):
    shape = (channels, 64, 64)
    images = decode_upload(content, name, shape).images
    assert images.ndim == 4 and tuple(images.shape[1:]) == shape and images.dtype == torch.float32
    assert 0 <= images.min() and images.max() <= 1 and images.std() > 0.01
    assert len(images) == {"stack.npz": 5, "medmnist.npz": 3}.get(name, 1)


def gif() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(PICTURE).save(buf, format="GIF")
    return buf.getvalue()


def pickled_npz() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, image=np.array([{"a": 1}], dtype=object))
    return buf.getvalue()


def zip_bomb() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("images.npy", b"\0" * (64 * 2**20))
    return buf.getvalue()


def pixel_bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (9000, 9000)).save(buf, format="PNG")        # a few KB, 81 megapixels decoded
    return buf.getvalue()


BAD_UPLOADS = [
    ("notes.txt", encoded(PICTURE), "PNG, JPEG or .npz"),                     # extension not allowed
    ("text.png", b"hello, this is not an image at all", "not a readable PNG or JPEG"),
    ("empty.png", b"\x89PNG\r\n\x1a\n", "not a readable PNG or JPEG"),
    ("truncated.png", encoded(PICTURE)[:300], "not a readable PNG or JPEG"),
    ("truncated.jpg", encoded(PICTURE, "JPEG")[:400], "not a readable PNG or JPEG"),
    ("animated.png", gif(), "GIF image"),                                     # type told by content
    ("bomb.png", pixel_bomb(), "pixels, more than"),
    ("pickle.npz", pickled_npz(), "plain arrays"),
    ("bomb.npz", zip_bomb(), "unpacks to"),
    ("broken.npz", b"PK\x03\x04" + b"\0" * 100, "not a readable .npz"),
    ("noimage.npz", npz(weights=np.zeros(3)), "array named 'image'"),
    ("nan.npz", npz(image=np.full((8, 8), np.nan, np.float32)), "NaN or inf"),
    ("inf.npz", npz(images=np.full((2, 8, 8), np.inf)), "NaN or inf"),
    ("range.npz", npz(image=np.full((8, 8), 3.0)), "[0, 1]"),
    ("negative.npz", npz(image=np.full((8, 8), -4, np.int32)), "negative"),
    ("strings.npz", npz(image=np.array([["a", "b"], ["c", "d"]])), "dtype"),
    ("vector.npz", npz(images=np.zeros(5)), "shape"),
    ("toomany.npz", npz(images=np.zeros((65, 4, 4), np.uint8)), "at most 64"),
    ("empty.npz", npz(images=np.zeros((0, 4, 4), np.uint8)), "empty"),
]


@pytest.mark.parametrize("name, content, message", BAD_UPLOADS, ids=[b[0] for b in BAD_UPLOADS])
def test_bad_uploads_are_refused_with_a_reason(name, content, message):
    with pytest.raises(UploadError, match=re.escape(message)):
        decode_upload(content, name, SHAPE)


def test_size_limit_is_checked_before_decoding():
    content = encoded(RNG.integers(0, 256, (300, 300, 3), dtype=np.uint8))
    assert decode_upload(content, "big.png", SHAPE, max_mb=1).images.shape == (1, *SHAPE)
    with pytest.raises(UploadError, match=r"MB, more than the 0.1 MB limit"):
        decode_upload(content, "big.png", SHAPE, max_mb=0.1)
    with pytest.raises(UploadError, match="limit"):
        decode_upload(b"\0" * (2**20 + 1), "zeros.png", SHAPE, max_mb=1)


def test_websocket_limit_admits_an_upload_of_the_limit_and_not_much_more():
    for mb in (0.5, 10, 100):
        assert mb * 2**20 * 4 / 3 < websocket_limit(mb) < mb * 2**20 * 4 / 3 + 20 * 2**20


# --- uploads in the dashboard ---------------------------------------------------------------------
@pytest.fixture()
def dash(demo_model, demo_test, tmp_path):
    return Dashboard(workbench=Workbench(demo_model, {"test": demo_test}, tmp_path / "fb.db"), background=False)


def test_upload_opens_the_image_in_the_uploads_split(dash):
    before = dash.overlays.left.digest
    ids = dash.upload.receive(encoded(PICTURE), "../../etc/passwd.png")     # the name is never a path
    wb, sel = dash.workbench, dash.selection
    assert ids == [sel.sample] and sel.split == UPLOAD_SPLIT and ids[0].startswith("upload-")
    assert UPLOAD_SPLIT in sel.param.split.objects and dash.browser.ids == ids
    assert dash.overlays.left.digest not in ("", before), "the overlay of the uploaded image was drawn"
    expected = decode_upload(encoded(PICTURE), "x.png", wb.input_shape).images[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(wb.image(UPLOAD_SPLIT, ids[0]), expected)
    assert dash.upload.receive(encoded(PICTURE), "again.png") == ids and len(wb.splits[UPLOAD_SPLIT]) == 1
    more = dash.upload.receive(npz(images=RNG.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)), "s.npz")
    assert len(more) == 3 and dash.browser.ids == ids + more and sel.sample == more[0]
    assert len(wb.predictions(wb.base_version, UPLOAD_SPLIT).sample) == 4
    assert "label **no label**" in dash.overlays.info.object                 # uploads carry no true label
    assert dash.browser._tiles.data["label"] == ["no label"] * 4
    assert wb.outcomes(wb.base_version, UPLOAD_SPLIT, more) == [None] * 3     # no right/wrong badge
    dash.selection.split = "test"                                            # the rest still works
    assert "label **no label**" not in dash.overlays.info.object
    assert set(wb.outcomes(wb.base_version, "test", wb.splits["test"].ids)) <= {True, False}
    assert dash.selection.sample in wb.splits["test"].ids


def test_bad_upload_leaves_the_session_as_it_was(dash, caplog):
    sample, split = dash.selection.sample, dash.selection.split
    assert dash.upload.receive(b"GIF89a not really", "x.png") == []
    assert "not a readable PNG or JPEG" in caplog.text
    assert (dash.selection.sample, dash.selection.split) == (sample, split)
    assert UPLOAD_SPLIT not in dash.workbench.splits


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1.5, -0.1])
def test_workbench_refuses_nan_inf_and_out_of_range_images(demo_model, demo_test, tmp_path, bad):
    from xcam_viz.data import ImageSet

    images = demo_test.images[:4].clone()
    images[1, 0, 3, 3] = bad
    with pytest.raises(ValueError, match="split 'odd' hold NaN, inf or values outside"):
        Workbench(demo_model, {"test": demo_test, "odd": ImageSet(images, torch.zeros(4))}, tmp_path / "fb.db")
    wb = Workbench(demo_model, {"test": demo_test}, tmp_path / "fb.db")
    with pytest.raises(ValueError, match="outside"):
        wb.add_images("odd", images, [f"x{i}" for i in range(4)])
    assert "odd" not in wb.splits


# --- serve flags ----------------------------------------------------------------------------------
class FakeWorkbench:
    """What `serve` reads of a Workbench before it starts the server."""
    splits: dict = {}
    input_shape = (3, 64, 64)

    def warm(self):
        return self


def test_serve_passes_auth_and_the_websocket_limit(monkeypatch):
    import panel as pn

    from xcam_viz.dashboard import server

    seen = {}
    monkeypatch.setattr(server, "build_workbench", lambda *a: FakeWorkbench())
    monkeypatch.setattr(pn, "serve", lambda apps, **kw: seen.update(kw))
    server.serve(max_upload_mb=2)
    assert seen["websocket_max_message_size"] == websocket_limit(2) and "basic_auth" not in seen
    assert seen["address"] == "127.0.0.1"
    server.serve(basic_auth="s3cret")
    assert seen["basic_auth"] == "s3cret" and len(seen["cookie_secret"]) >= 32


def test_bokeh_server_gets_the_websocket_limit_and_binds_localhost(monkeypatch):
    import signal

    from xcam_viz.dashboard import server as serving

    monkeypatch.setattr(serving, "build_workbench", lambda *a: FakeWorkbench())
    monkeypatch.setattr(signal, "signal", lambda *a: None)          # pn.serve would take over Ctrl+C
    server = serving.serve(port=0, max_upload_mb=3, start=False)
    try:
        assert server._tornado.settings["websocket_max_message_size"] == websocket_limit(3)
        assert server.address == "127.0.0.1"
    finally:
        server.stop()


def test_cli_reads_the_password_from_the_environment(monkeypatch):
    from xcam_viz import cli
    from xcam_viz.dashboard import app
    from xcam_viz.dashboard.upload import MAX_UPLOAD_MB

    seen = {}
    monkeypatch.setattr(app, "serve", lambda **kw: seen.update(kw))
    monkeypatch.setenv("XCAM_VIZ_PASSWORD", "from-env")
    cli.main(["serve", "--max-upload-mb", "2.5"])
    assert seen["basic_auth"] == "from-env" and seen["max_upload_mb"] == 2.5
    cli.main(["serve", "--basic-auth", "users.json"])
    assert seen["basic_auth"] == "users.json"
    monkeypatch.delenv("XCAM_VIZ_PASSWORD")
    cli.main(["serve"])
    assert seen["basic_auth"] is None and seen["max_upload_mb"] == MAX_UPLOAD_MB         # one default
    assert seen["size"] is None and seen["channels"] is None
    with pytest.raises(SystemExit):
        cli.main(["serve", "--max-upload-mb", "-1"])


# --- a real server: login required, localhost only ------------------------------------------------
def listening_addresses(port: int) -> list[str]:
    """Local addresses of sockets listening on `port` (from /proc/net/tcp and tcp6)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if int(hex_port, 16) == port and state == "0A":              # 0A: LISTEN
                found.append(address)
    return found


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    feedback = tmp_path_factory.mktemp("auth") / "feedback.db"
    srv = Server(["-m", "xcam_viz.cli", "serve", "--port", "{port}", "--feedback", str(feedback)], feedback,
                 env={"XCAM_VIZ_PASSWORD": "correct horse"})
    yield srv
    srv.stop()


def test_server_listens_on_localhost_only(guarded):
    addresses = listening_addresses(guarded.port)
    assert addresses == ["0100007F"], f"listening on {addresses} (0100007F is 127.0.0.1)"
    assert "correct horse" not in Path(f"/proc/{guarded.pid}/cmdline").read_text()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def test_basic_auth_asks_for_the_password(guarded):
    plain = urllib.request.build_opener(NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as refused:
        plain.open(guarded.url, timeout=30)
    assert refused.value.code == 302 and "login" in refused.value.headers["Location"]
    with pytest.raises(urllib.error.HTTPError) as refused:                   # the instructor's page too
        plain.open(guarded.url + "instructor", timeout=30)
    assert refused.value.code == 302 and "login" in refused.value.headers["Location"]
    with plain.open(guarded.url + "login", timeout=30) as r:
        login_page = r.read().decode()
    assert 'name="password"' in login_page and "src=" not in login_page and "href=" not in login_page   # offline

    def login(password):
        session = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
        form = urllib.parse.urlencode({"username": "ana", "password": password}).encode()
        session.open(guarded.url + "login", data=form, timeout=30).read()
        return session

    with login("wrong").open(guarded.url, timeout=30) as r:
        assert r.url.startswith(guarded.url + "login")                       # sent back to the login page
    with login("correct horse").open(guarded.url, timeout=120) as r:
        page = r.read().decode()
    assert r.url == guarded.url and "xcam-viz" in page and "bokeh" in page.lower()
