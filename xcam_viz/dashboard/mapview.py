"""Map views of images: the image with a map on top, as a plain Bokeh figure.

Each view is a Bokeh figure whose image and map sit in ColumnDataSources: an update replaces their
data in place (no figure is re-rendered, zoom and pan survive a new selection) and costs about a
millisecond of Python, where a HoloViews pipeline would spend a hundred rebuilding elements.
`MapLayer` is what every map view shares (the 2-D `MapView` here, the volumes' `VolumeView`): the
colour mapping of a map, its opacity and threshold, its title and digest.
"""
from __future__ import annotations

import functools

import numpy as np
import panel as pn
import param
from bokeh.events import Tap
from bokeh.models import ColorBar, ColumnDataSource, HoverTool, LinearColorMapper, Range1d
from bokeh.plotting import figure
from holoviews.plotting.util import process_cmap

from .maps import MapResult
from .raster import plot_to_pixel
from .tasks import bokeh_update

CMAPS = ["inferno", "viridis", "jet", "turbo", "gray"]
DIVERGING = "RdBu_r"


class Display(param.Parameterized):
    """How maps are drawn: opacity, colormap (unsigned maps; evidence always uses a diverging one), threshold."""

    opacity = param.Number(default=0.5, bounds=(0, 1), step=0.05, label="Map opacity")
    cmap = param.Selector(objects=CMAPS, default="inferno", label="Colormap")
    threshold = param.Number(default=0.0, bounds=(0, 0.95), step=0.05, label="Hide values below",
                             doc="share of the map's maximum (of |value| for evidence) below which it is hidden")


def thresholded(values: np.ndarray, signed: bool, threshold: float, scale: float | None = None) -> np.ndarray:
    """The map with values below threshold × scale (|value| for signed maps) set to NaN (transparent); scale is
    the map's max |value| (computed here if not given: pass it when `values` is a cut of a larger map)."""
    if scale is None:
        scale = float(np.nanmax(np.abs(values))) if values.size else 0.0
    out = values.astype(np.float32, copy=True)
    if threshold > 0 and scale > 0:
        out[(np.abs(out) if signed else out) < threshold * scale] = np.nan
    return out


@functools.cache
def palette(name: str) -> tuple[str, ...]:
    """The colormap as 256 hex colours, converted once."""
    return tuple(process_cmap(name, 256))


def rgba(image: np.ndarray) -> np.ndarray:
    """An H×W×3 image (uint8, or float in [0, 1]) as Bokeh's packed RGBA (uint32 H×W), row 0 at the bottom."""
    h, w = image.shape[:2]
    out = np.full((h, w, 4), 255, np.uint8)
    out[..., :3] = image if image.dtype == np.uint8 else np.round(np.clip(image, 0, 1) * 255)
    return out[::-1].copy().view(np.uint32)[..., 0]


def image_figure(shape: tuple[int, int], width: int, x_range=None, y_range=None, **kw):
    """A Bokeh figure showing pixel space (x right, y up, the image's top row at y = h), no axes."""
    h, w = shape
    fig = figure(frame_width=width, frame_height=int(width * h / w), min_border=0, match_aspect=True,
                 x_range=x_range or Range1d(0, w, bounds=(0, w)), y_range=y_range or Range1d(0, h, bounds=(0, h)),
                 **kw)
    fig.axis.visible = False
    fig.grid.visible = False
    fig.outline_line_color = None
    return fig


class Picture:
    """The image under the maps, shared by every view of the same image: any resolution (a large scan at
    up to full resolution, so zooming shows its detail), drawn over the model input's pixel extent (0, 0, w,
    h). Grey pictures travel as 8-bit values under a grey colour map, a quarter of RGBA's bytes.

    `widgets`, `describe`, `snapshot` and `watched` are what a tab shows and publishes of it besides the maps:
    an image has nothing more to say; a volume's scene (volume.py) has its crosshair and window."""

    kind = "image"

    def __init__(self, workbench):
        self.shape, self.key, self.shown = tuple(workbench.input_shape[1:]), None, (0, 0)
        self.grey = ColumnDataSource({"image": [np.zeros((1, 1), np.uint8)]})
        self.colour = ColumnDataSource({"image": [rgba(np.zeros((1, 1, 3), np.uint8))]})
        self.renderers: list[tuple] = []

    def draw_on(self, fig) -> None:
        h, w = self.shape
        grey = fig.image("image", x=0, y=0, dw=w, dh=h, source=self.grey, visible=False,
                         color_mapper=LinearColorMapper(palette=palette("gray"), low=0, high=255))
        self.renderers.append((grey, fig.image_rgba("image", x=0, y=0, dw=w, dh=h, source=self.colour)))

    @bokeh_update
    def show(self, key, picture: np.ndarray) -> None:
        """Show `picture` (uint8 H×W grey or H×W×3; row 0 at the top) unless `key` names the one on show."""
        if key == self.key and key is not None:
            return
        self.key, self.shown = key, tuple(picture.shape[:2])
        grey = picture.ndim == 2
        (self.grey if grey else self.colour).data = {"image": [picture[::-1].copy() if grey else rgba(picture)]}
        for grey_renderer, colour_renderer in self.renderers:
            grey_renderer.visible, colour_renderer.visible = grey, not grey

    def widgets(self) -> list:
        return []

    def describe(self) -> str:
        return ""

    def snapshot(self) -> dict:
        return {}

    def watched(self) -> list:
        return []


class MapLayer(param.Parameterized):
    """A colour-mapped map drawn by some glyphs (`heat_glyphs`): diverging for signed maps, the display's opacity,
    values under its threshold hidden. Subclasses draw the map's values (`_send`) and a title (`_set_title`).

    Display settings change the glyphs and the colour mapper; only a new threshold resends the map.
    """

    title = param.String(default="")
    digest = param.String(default="", doc="hash of the map on show (changes whenever the map does)")
    problem = param.String(default="", doc="why there is no map (an error of model work), or empty")

    def __init__(self, display: Display, shape: tuple[int, ...], **params):
        super().__init__(**params)
        self.display, self.shape = display, shape
        self.result: MapResult | None = None
        self._scale = 0.0                       # the result's max |value|
        self._palette = palette(display.cmap)
        self.mapper = LinearColorMapper(palette=self._palette, low=0, high=1, nan_color=(0, 0, 0, 0))
        self.heat_glyphs: list = []
        display.param.watch(self._restyle, ["opacity", "cmap", "threshold"])

    def _send(self, values: np.ndarray) -> None:
        """Draw the map's values (its shape; NaN transparent), each drawn part through `visible`."""
        raise NotImplementedError

    def visible(self, values: np.ndarray) -> np.ndarray:
        """The map's values, or a cut of them, as drawn: under the display's threshold hidden."""
        r = self.result
        return values if r is None else thresholded(values, r.signed, self.display.threshold, self._scale)

    def _set_title(self, text: str) -> None:
        raise NotImplementedError

    @property
    def colormap(self) -> str:
        """The colormap the map is drawn with (diverging for signed maps)."""
        return DIVERGING if self.result is not None and self.result.signed else self.display.cmap

    @bokeh_update
    def _restyle(self, event=None) -> None:
        colours = palette(self.colormap)
        if self._palette is not colours:        # Bokeh validates all 256 colours on every assignment
            self.mapper.palette, self._palette = colours, colours
        for glyph in self.heat_glyphs:
            glyph.glyph.global_alpha = self.display.opacity
        if event is not None and event.name == "threshold" and self.result is not None:
            self._send_map()

    def _send_map(self) -> None:
        self._send(self.result.values)

    @bokeh_update
    def show(self, result: MapResult, title: str) -> None:
        """Replace the map and title in place."""
        self.result, self.title, self.problem = result, title, ""
        self._scale = float(np.nanmax(np.abs(result.values))) if result.values.size else 0.0
        scale = self._scale or 1e-6
        self.mapper.update(low=-scale if result.signed else 0.0, high=scale if result.signed else 1.0)
        self._restyle()
        self._send_map()
        self._set_title(title)
        self.digest = result.digest

    @bokeh_update
    def show_none(self, request, problem: str) -> None:
        """No map for `request` (model work failed): the picture alone, a title that says so."""
        self.result, self.problem = None, problem
        self._send(np.full(self.shape, np.nan, np.float32))
        self.title = f"no map · {request.method} · {request.version}"
        self._set_title(self.title)
        self.digest = f"none-{request.sample}"


class MapView(MapLayer):
    """One overlay of an image: a Bokeh figure with the picture and a map on top, with a colour bar. A view
    `linked` to another shares its ranges: zooming or panning one moves both."""

    def __init__(self, display: Display, picture: Picture, width: int = 250, linked: MapView | None = None,
                 **params):
        super().__init__(display, picture.shape, **params)
        h, w = self.shape
        self.picture = picture
        ranges = (linked.figure.x_range, linked.figure.y_range) if linked is not None else (None, None)
        self.figure = image_figure(self.shape, width, *ranges, tools="pan,wheel_zoom,box_zoom,reset",
                                   toolbar_location="below", title="")
        self.figure.toolbar.autohide = True            # shown while the pointer is over the figure
        self.figure.title.text_font_size = "9pt"       # two titles fit side by side on a 1366 px screen
        self.map_source = ColumnDataSource({"value": [np.zeros((h, w), np.float32)]})
        self.picture.draw_on(self.figure)
        self.heat = self.figure.image("value", x=0, y=0, dw=w, dh=h, source=self.map_source,
                                      color_mapper=self.mapper, global_alpha=display.opacity)
        self.heat_glyphs.append(self.heat)
        self.figure.add_layout(ColorBar(color_mapper=self.mapper, width=10, padding=2), "right")
        self.figure.add_tools(HoverTool(renderers=[self.heat], tooltips=[("x, y", "$x{0}, $y{0}"),
                                                                          ("value", "@value{0.000}")]))
        self.panel = pn.pane.Bokeh(self.figure, margin=(5, 5))

    def on_click(self, callback) -> None:
        """Call `callback(x, y)` with the plot point of a click."""
        self.figure.on_event(Tap, lambda event: callback(event.x, event.y))

    def pixel_at(self, x: float | None, y: float | None) -> tuple[int, int] | None:
        """(row, col) of the pixel under plot point (x, y), clipped to the image (None without a point)."""
        if x is None or y is None:
            return None
        h, w = self.shape
        row, col = plot_to_pixel(x, y, h)
        return int(np.clip(row, 0, h - 1)), int(np.clip(col, 0, w - 1))

    def _send(self, values: np.ndarray) -> None:
        self.map_source.data = {"value": [self.visible(values)[::-1]]}

    def _set_title(self, text: str) -> None:
        self.figure.title.text = text
