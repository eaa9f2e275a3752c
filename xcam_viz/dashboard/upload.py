"""Image upload: users open their own images (PNG, JPEG, or image arrays in a .npz; volumes: a NIfTI
.nii / .nii.gz or a .zip of a DICOM series) in the served app.

A file is checked by its content, never by its name alone: Pillow must identify a PNG or JPEG (and
decode it whole), an .npz must be a zip of plain arrays (loaded without pickle), a volume is read from
memory by the core (`xcam_viz.data.from_bytes`: NIfTI, or a DICOM series in a zip, inflated at most to
what `MAX_VOXELS` voxels take), and the size is limited before anything is decoded. Images are fitted to
the model's input size (volumes: put in the canonical orientation, windowed as the data was, resampled to
the model's grid) and added to the shared "uploads" split. Nothing is written to disk and no path is ever
taken from the page.
"""
from __future__ import annotations

import hashlib
import io
import zipfile
from typing import NamedTuple

import numpy as np
import panel as pn
import torch
from PIL import Image

from ..data import fit
from ..data.from_bytes import MAX_VOXELS, read_volume
from ..data.sources import read_image, unit_image
from .selection import Selection
from .tasks import notify
from .workbench import Workbench

MAX_UPLOAD_MB = 50.0            # a 4096×3328 scan as a 16-bit PNG is about 20-30 MB
UPLOAD_SPLIT = "uploads"
SUFFIXES = (".png", ".jpg", ".jpeg", ".npz")
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".zip")
MAX_PIXELS = 40_000_000          # decoded pixels of one image (decompression bombs)
MAX_NPZ_IMAGES = 64
MAX_NPZ_EXPANSION = 20           # uncompressed / compressed size of an .npz (zip bombs)


class UploadError(ValueError):
    """An uploaded file the app refuses; the message says why and what to give instead."""


def websocket_limit(max_upload_mb: float) -> int:
    """Bytes the server accepts in one websocket message: an upload of the limit (base64, 4/3 larger)
    plus room for the page's own messages. Larger messages close the connection before any decoding."""
    return int(max_upload_mb * 2**20 * 4 / 3) + 16 * 2**20


class Upload(NamedTuple):
    """An uploaded file's images, N×C×H×W (volumes N×C×D×H×W) float32 in [0, 1] at the model's input size, and
    what was read in words ("" for pictures)."""

    images: torch.Tensor
    note: str = ""


def decode_upload(content: bytes, filename: str, shape: tuple[int, ...],
                  max_mb: float = MAX_UPLOAD_MB, window=None) -> Upload:
    """The images of an uploaded file fitted to `shape` (C, H, W); for a model of volumes (shape C, D, H, W)
    a NIfTI volume or a .zip of a DICOM series as one volume, read through `window` (`xv.data.apply_window`)."""
    name = str(filename or "the file")
    volumes = len(shape) == 4
    if not name.lower().endswith(VOLUME_SUFFIXES if volumes else SUFFIXES):
        raise UploadError(f"{name}: upload a {accepted(shape)} file (got another file type)")
    if len(content) > max_mb * 2**20:
        raise UploadError(f"{name} is {len(content) / 2**20:.1f} MB, more than the {max_mb:g} MB limit of this "
                          "server: upload a smaller or more compressed file (PNG or JPEG), or serve with a higher "
                          "limit (xcam-viz serve --max-upload-mb 100)")
    if volumes:
        try:
            volume = read_volume(content, name, window, MAX_VOXELS)
        except ValueError as err:
            raise UploadError(str(err)) from None
        return Upload(fit(torch.from_numpy(volume.values)[None, None], shape), volume.note)
    if content[:4] == b"PK\x03\x04":
        return Upload(fit(_npz_images(content, name, max_mb), shape))
    return Upload(fit(_picture(content, name), shape))


def accepted(shape: tuple[int, ...]) -> str:
    """The files an upload takes, in words."""
    return "NIfTI volume (.nii or .nii.gz) or .zip of a DICOM series" if len(shape) == 4 else "PNG, JPEG or .npz"


def _picture(content: bytes, name: str) -> torch.Tensor:
    """A PNG or JPEG, identified and fully decoded by Pillow."""
    try:
        with Image.open(io.BytesIO(content)) as im:
            if im.format not in ("PNG", "JPEG"):
                raise UploadError(f"{name} is a {im.format} image; upload a PNG or JPEG")
            if im.width * im.height > MAX_PIXELS:
                raise UploadError(f"{name} is {im.width}×{im.height} pixels, more than {MAX_PIXELS:,} (e.g. "
                                  "6000×6000); upload a smaller image")
            stored = read_image(io.BytesIO(content))         # grey, colour or 16-bit as stored; fit converts
    except UploadError:
        raise
    except Exception as err:                     # noqa: BLE001 - Pillow raises many kinds for broken files
        raise UploadError(f"{name} is not a readable PNG or JPEG image ({type(err).__name__}); "
                          "upload an image file or an .npz of arrays") from None
    return torch.from_numpy(unit_image(stored))[None]


def _npz_images(content: bytes, name: str, max_mb: float) -> torch.Tensor:
    """Images from an .npz: the array `image` (one H×W[×C] image), or `images` / `<split>_images`
    (a stack N×H×W[×C]); pickled objects are refused."""
    from ..data import from_arrays

    try:
        with zipfile.ZipFile(io.BytesIO(content)) as z:
            unpacked = sum(info.file_size for info in z.infolist())
        if unpacked > MAX_NPZ_EXPANSION * max(len(content), 2**20):
            raise UploadError(f"{name} unpacks to {unpacked / 2**20:.0f} MB; upload fewer or smaller images")
        with np.load(io.BytesIO(content), allow_pickle=False) as z:
            keys = sorted(z.files)
            found = [k for k in ("image", "images") if k in keys] + [k for k in keys if k.endswith("_images")]
            if not found:
                raise UploadError(f"{name} holds the arrays {keys}; put the picture in an array named 'image' "
                                  "(H×W or H×W×C) or 'images' (N×H×W or N×H×W×C)")
            key = found[0]
            array = z[key]
    except UploadError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise UploadError(f"{name} is not a readable .npz file of plain arrays ({err})") from None
    stack = array[None] if key == "image" else array
    if stack.ndim not in (3, 4) or len(stack) > MAX_NPZ_IMAGES:
        raise UploadError(f"{name}: array {key!r} has shape {array.shape}; give 'image' as H×W[×C] or "
                          f"'images' as N×H×W[×C] with at most {MAX_NPZ_IMAGES} images")
    try:
        return from_arrays(stack, np.zeros(len(stack), np.int64)).images
    except (ValueError, TypeError) as err:
        raise UploadError(f"{name}: {err}") from None


def upload_ids(content: bytes, n: int) -> list[str]:
    """Sample ids named by the file's content (the same file uploaded twice is one sample)."""
    digest = hashlib.sha1(content).hexdigest()[:10]
    return [f"upload-{digest}"] if n == 1 else [f"upload-{digest}-{i}" for i in range(n)]


class ImageUpload(pn.viewable.Viewer):
    """A file input that opens the user's own images in the "uploads" split and selects the first."""

    def __init__(self, workbench: Workbench, selection: Selection, max_mb: float = MAX_UPLOAD_MB):
        super().__init__()
        self.workbench, self.selection, self.max_mb = workbench, selection, max_mb
        shape = workbench.input_shape
        self.input = pn.widgets.FileInput(accept=".nii,.gz,.zip" if len(shape) == 4 else ",".join(SUFFIXES),
                                          css_classes=["xv-upload"], sizing_mode="stretch_width")
        self.input.param.watch(lambda e: self.receive(e.new, self.input.filename), "value")
        size = "×".join(map(str, shape[:0:-1]))
        self.layout = pn.Column(
            pn.pane.Markdown(f"**Explain your own {'volume' if len(shape) == 4 else 'image'}** — {accepted(shape)} "
                             f"up to {max_mb:g} MB (resized to {size})", margin=(5, 10, 0, 10)),
            self.input, sizing_mode="stretch_width")

    def receive(self, content: bytes | None, filename: str | None) -> list[str]:
        """Open an uploaded file; a bad one is shown as a notification. Returns the new sample ids."""
        if not content:
            return []
        try:
            images, note = decode_upload(content, filename, self.workbench.input_shape, self.max_mb,
                                         self.workbench.window)
        except UploadError as err:
            notify(str(err))
            return []
        ids = self.workbench.add_images(UPLOAD_SPLIT, images, upload_ids(content, len(images)))
        sel = self.selection
        sel.param.split.objects = list(self.workbench.splits)
        sel.param.update(split=UPLOAD_SPLIT, sample=ids[0])
        sel.revision += 1                                        # the browser lists the new images
        notify(f"opened {filename} as {ids[0]}" + (f" and {len(ids) - 1} more" if len(ids) > 1 else "")
               + (f": {note}" if note else ""), level="success", duration=8000 if note else 3000)
        return ids

    def __panel__(self):
        return self.layout
