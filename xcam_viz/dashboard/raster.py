"""Pixel geometry of the dashboard: brush strokes to masks, thumbnail montages, colour layers.

Plots show an H×W image with bounds (0, 0, W, H): x runs along columns, y points *up*, so array
row r covers y in [H - r - 1, H - r]. Every conversion between plot and array coordinates lives here.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..feedback.strokes import BRUSH_WIDTH

CAPTION = 16          # height of a thumbnail's caption strip, montage pixels
GOOD, BAD, UNKNOWN, MARK = (34, 139, 84), (190, 50, 50), (110, 110, 110), (255, 200, 0)


@dataclass
class Stroke:
    """A brush stroke in plot coordinates: points xs/ys, the brush kind, its width in image pixels and
    where it was drawn (() on an image; (axis, index) on a volume's slice)."""

    xs: list[float]
    ys: list[float]
    kind: str = "relevant"          # relevant | irrelevant | erase
    width: float = float(BRUSH_WIDTH)
    where: tuple = ()


def plot_to_pixel(x: float, y: float, height: int) -> tuple[int, int]:
    """(row, col) of the image pixel under plot point (x, y) (may lie outside the image)."""
    return int(np.floor(height - y)), int(np.floor(x))


def stroke_mask(xs, ys, width: float, shape: tuple[int, int]) -> np.ndarray:
    """Bool mask (H×W) of the pixels whose centre lies within width/2 of the polyline (xs, ys)."""
    h, w = shape
    mask = np.zeros(shape, bool)
    pts = np.column_stack([np.asarray(xs, float), np.asarray(ys, float)])
    pts = pts[np.isfinite(pts).all(1)]
    if not len(pts):
        return mask
    radius = max(float(width), 1.0) / 2
    if len(pts) == 1:
        pts = np.vstack([pts, pts])
    for a, b in zip(pts[:-1], pts[1:]):
        lo, hi = np.minimum(a, b) - radius, np.maximum(a, b) + radius
        c0, c1 = max(int(np.floor(lo[0])), 0), min(int(np.ceil(hi[0])), w)
        r0, r1 = max(int(np.floor(h - hi[1])), 0), min(int(np.ceil(h - lo[1])), h)
        if c0 >= c1 or r0 >= r1:
            continue
        cx = np.arange(c0, c1) + 0.5                      # pixel centres in plot coordinates
        cy = h - (np.arange(r0, r1) + 0.5)
        px, py = np.meshgrid(cx, cy)
        d = b - a
        t = np.clip(((px - a[0]) * d[0] + (py - a[1]) * d[1]) / max(d @ d, 1e-12), 0, 1)
        near = (px - a[0] - t * d[0]) ** 2 + (py - a[1] - t * d[1]) ** 2 <= radius ** 2
        mask[r0:r1, c0:c1] |= near
    return mask


def strokes_to_masks(strokes: list[Stroke], shape: tuple[int, ...], rasterise=None) -> tuple[np.ndarray, np.ndarray]:
    """(relevant, irrelevant) masks painted by the strokes in order; an erase stroke clears both.
    `rasterise(stroke)` gives a stroke's mask of `shape` (default: `stroke_mask` on an H×W image)."""
    relevant, irrelevant = np.zeros(shape, bool), np.zeros(shape, bool)
    for s in strokes:
        m = rasterise(s) if rasterise else stroke_mask(s.xs, s.ys, s.width, shape)
        if s.kind == "relevant":
            relevant |= m
            irrelevant &= ~m
        elif s.kind == "irrelevant":
            irrelevant |= m
            relevant &= ~m
        elif s.kind == "erase":
            relevant &= ~m
            irrelevant &= ~m
        else:
            raise ValueError(f"unknown stroke kind {s.kind!r}; use relevant, irrelevant or erase")
    return relevant, irrelevant


def mask_layer(relevant: np.ndarray, irrelevant: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """An RGBA float image: relevant pixels green, irrelevant red, the rest transparent."""
    rgba = np.zeros((*relevant.shape, 4), np.float32)
    rgba[relevant] = (0.1, 0.85, 0.3, alpha)
    rgba[irrelevant] = (0.95, 0.15, 0.15, alpha)
    return rgba


def composite(image: np.ndarray, *layers: np.ndarray) -> np.ndarray:
    """An H×W×3 float image with RGBA layers painted over it in order (alpha blending)."""
    out = np.asarray(image, np.float32)[..., :3].copy()
    for layer in layers:
        alpha = layer[..., 3:]
        out = out * (1 - alpha) + layer[..., :3] * alpha
    return out


def to_uint8(image: np.ndarray) -> np.ndarray:
    """H×W×C float image in [0, 1] (or uint8) as H×W×3 uint8."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8)
    if arr.ndim == 2:
        arr = arr[..., None]
    return np.repeat(arr, 3, -1) if arr.shape[-1] == 1 else arr[..., :3]


@lru_cache(maxsize=1)
def _font():
    return ImageFont.load_default(size=11)


@dataclass(frozen=True)
class Grid:
    """Montage layout: `cols` × `rows` tiles of `tile` px, each with a caption strip below."""

    cols: int = 5
    rows: int = 4
    tile: int = 88

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the montage in pixels."""
        return self.rows * (self.tile + CAPTION), self.cols * self.tile

    def tile_at(self, x: float, y: float) -> int | None:
        """Index (row-major) of the tile under plot point (x, y), None outside the grid."""
        h, w = self.size
        if not (0 <= x < w and 0 <= y <= h):
            return None
        row, col = plot_to_pixel(x, y, h)
        return min(row // (self.tile + CAPTION), self.rows - 1) * self.cols + col // self.tile

    def box(self, i: int) -> tuple[float, float, float, float]:
        """Plot bounds (x0, y0, x1, y1) of tile i including its caption."""
        h = self.size[0]
        row, col = divmod(i, self.cols)
        top = h - row * (self.tile + CAPTION)
        return col * self.tile, top - self.tile - CAPTION, (col + 1) * self.tile, top

    def centre(self, i: int) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box(i)
        return (x0 + x1) / 2, (y0 + y1) / 2

    def picture_corner(self, i: int) -> tuple[int, int]:
        """(row, col) of the top left pixel of tile i's picture in the montage array (rows going down)."""
        row, col = divmod(i, self.cols)
        return row * (self.tile + CAPTION) + 2, col * self.tile + 2

    def picture(self, image: np.ndarray) -> np.ndarray:
        """An image as a tile shows it: H×W×3 uint8 of (tile - 4) px square."""
        side = self.tile - 4
        return np.asarray(Image.fromarray(to_uint8(image)).resize((side, side), Image.BILINEAR))


def _fit(draw: ImageDraw.ImageDraw, text: str, width: float) -> str:
    """`text`, shortened with an ellipsis until it is at most `width` pixels wide."""
    if draw.textlength(text, font=_font()) <= width:
        return text
    while text and draw.textlength(text + "…", font=_font()) > width:
        text = text[:-1]
    return text + "…"


def montage(images: list[np.ndarray], captions: list[str | tuple[str, str]], correct: list[bool | None],
            marked: list[bool], grid: Grid) -> np.ndarray:
    """One H×W×3 uint8 image of thumbnails on a grid, each with a caption strip (green correct, red
    wrong, grey when unknown: no true label, or not predicted yet) and a yellow dot in the corner when
    `marked` (e.g. it has feedback). A caption (left, right) puts its second part at the right end of the strip."""
    h, w = grid.size
    canvas = Image.new("RGB", (w, h), (245, 245, 245))
    draw = ImageDraw.Draw(canvas)
    t = grid.tile
    for i, (img, text, ok, mark) in enumerate(zip(images, captions, correct, marked)):
        row, col = divmod(i, grid.cols)
        x0, y0 = col * t, row * (t + CAPTION)
        canvas.paste(Image.fromarray(grid.picture(img)), grid.picture_corner(i)[::-1])
        draw.rectangle([x0 + 2, y0 + t - 2, x0 + t - 3, y0 + t + CAPTION - 3],
                       fill=UNKNOWN if ok is None else GOOD if ok else BAD)
        left, right = (text, "") if isinstance(text, str) else text
        left = _fit(draw, left, t - 10 - (draw.textlength(right, font=_font()) + 6 if right else 0))
        draw.text((x0 + 5, y0 + t - 1), left, fill=(255, 255, 255), font=_font())
        if right:
            draw.text((x0 + t - 5, y0 + t - 1), right, fill=(255, 255, 255), font=_font(), anchor="ra")
        if mark:
            draw.ellipse([x0 + t - 15, y0 + 5, x0 + t - 6, y0 + 14], fill=MARK, outline=(60, 60, 60))
    return np.asarray(canvas)
