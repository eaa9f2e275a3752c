"""Overlay views: the image with a map on top, two side by side with linked zoom and pan.

Each view is a plain Bokeh figure whose image and map sit in ColumnDataSources: an update replaces
their data in place (no figure is re-rendered, zoom and pan survive a new selection) and costs about
a millisecond of Python, where a HoloViews pipeline would spend a hundred rebuilding elements.
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

from .maps import MapResult, map_problem
from .raster import plot_to_pixel
from .tab import Tab
from .tasks import bokeh_update, log, notify

CMAPS = ["inferno", "viridis", "jet", "turbo", "gray"]
DIVERGING = "RdBu_r"
SAME = "(same as left)"


class Display(param.Parameterized):
    """How maps are drawn: opacity, colormap (unsigned maps; evidence always uses a diverging one), threshold."""

    opacity = param.Number(default=0.5, bounds=(0, 1), step=0.05, label="Map opacity")
    cmap = param.Selector(objects=CMAPS, default="inferno", label="Colormap")
    threshold = param.Number(default=0.0, bounds=(0, 0.95), step=0.05, label="Hide values below",
                             doc="share of the map's maximum (of |value| for evidence) below which it is hidden")


TITLE_CHARS = 36          # a map's title fits its 200 px figure (9 pt); the class name gives way


def shortened(text: str, length: int) -> str:
    """`text` cut to `length` characters (at least 6) with an ellipsis."""
    length = max(length, 6)
    return text if len(text) <= length else text[:length - 1] + "…"


def thresholded(values: np.ndarray, signed: bool, threshold: float) -> np.ndarray:
    """The map with values below threshold × max (|value| for signed maps) set to NaN (transparent)."""
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
    h). Grey pictures travel as 8-bit values under a grey colour map, a quarter of RGBA's bytes."""

    def __init__(self, shape: tuple[int, int]):
        self.shape, self.key, self.shown = shape, None, (0, 0)
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


class MapView(param.Parameterized):
    """One overlay: a Bokeh figure with the picture and a map on top (colour-mapped, with a colour bar).

    Display settings change the glyph and the colour mapper; only a new threshold resends the map.
    """

    title = param.String(default="")
    digest = param.String(default="", doc="hash of the map on show (changes whenever the map does)")
    problem = param.String(default="", doc="why there is no map (an error of model work), or empty")

    def __init__(self, display: Display, shape: tuple[int, int], width: int = 250, x_range=None, y_range=None,
                 picture: Picture | None = None, **params):
        super().__init__(**params)
        self.display, self.shape = display, shape
        h, w = shape
        self.result: MapResult | None = None
        self.picture = picture or Picture(shape)
        self.figure = image_figure(shape, width, x_range, y_range, tools="pan,wheel_zoom,box_zoom,reset",
                                   toolbar_location="below", title="")
        self.figure.toolbar.autohide = True            # shown while the pointer is over the figure
        self.figure.title.text_font_size = "9pt"       # two titles fit side by side on a 1366 px screen
        self.map_source = ColumnDataSource({"value": [np.zeros((h, w), np.float32)]})
        self._palette = palette(display.cmap)
        self.mapper = LinearColorMapper(palette=self._palette, low=0, high=1, nan_color=(0, 0, 0, 0))
        self.picture.draw_on(self.figure)
        self.heat = self.figure.image("value", x=0, y=0, dw=w, dh=h, source=self.map_source,
                                      color_mapper=self.mapper, global_alpha=display.opacity)
        self.figure.add_layout(ColorBar(color_mapper=self.mapper, width=10, padding=2), "right")
        self.figure.add_tools(HoverTool(renderers=[self.heat], tooltips=[("x, y", "$x{0}, $y{0}"),
                                                                          ("value", "@value{0.000}")]))
        display.param.watch(self._restyle, ["opacity", "cmap", "threshold"])

    @property
    def colormap(self) -> str:
        """The colormap the map is drawn with (diverging for signed maps)."""
        return DIVERGING if self.result is not None and self.result.signed else self.display.cmap

    @bokeh_update
    def _restyle(self, event=None) -> None:
        colours = palette(self.colormap)
        if self._palette is not colours:        # Bokeh validates all 256 colours on every assignment
            self.mapper.palette, self._palette = colours, colours
        self.heat.glyph.global_alpha = self.display.opacity
        if event is not None and event.name == "threshold" and self.result is not None:
            self._send_map()

    def _send_map(self) -> None:
        r = self.result
        self.map_source.data = {"value": [thresholded(r.values, r.signed, self.display.threshold)[::-1]]}

    @bokeh_update
    def show(self, result: MapResult, title: str) -> None:
        """Replace the map and title in place."""
        self.result, self.title, self.problem = result, title, ""
        scale = float(np.abs(result.values).max()) or 1e-6
        self.mapper.update(low=-scale if result.signed else 0.0, high=scale if result.signed else 1.0)
        self._restyle()
        self._send_map()
        self.figure.title.text = title
        self.digest = result.digest

    @bokeh_update
    def show_none(self, request, problem: str) -> None:
        """No map for `request` (model work failed): the picture alone, a title that says so."""
        self.result, self.problem = None, problem
        self.map_source.data = {"value": [np.full(self.shape, np.nan, np.float32)]}
        self.title = self.figure.title.text = f"no map · {request.method} · {request.version}"
        self.digest = f"none-{request.sample}"


class OverlayPair(Tab):
    """The Explain tab. Left: the selection's map; right: another method, layer or model version (e.g.
    before / after fine-tuning). The two figures share their ranges, so zooming or panning one moves both."""

    title = param.String(default="Explain", constant=True)
    attribute = "overlays"

    compare_version = param.Selector(objects=[SAME], default=SAME, label="Right: model version")
    compare_method = param.Selector(objects=[SAME], default=SAME, label="Right: method")
    compare_layer = param.Selector(objects=[SAME], default=SAME, label="Right: layer")

    def __init__(self, session, display: Display | None = None, width: int = 200, **params):
        super().__init__(session, **params)
        workbench, selection = self.workbench, self.selection
        self.display = display or Display()
        shape = tuple(workbench.input_shape[1:])
        self.picture = Picture(shape)                                 # both sides show the selected image
        self._notified = None
        self.left = MapView(self.display, shape, width, picture=self.picture)      # shared ranges: zoom and pan
        self.right = MapView(self.display, shape, width, self.left.figure.x_range, self.left.figure.y_range,
                             picture=self.picture)
        self.views = {"left": self.left, "right": self.right}
        self.sync_choices()
        methods = self.param.compare_method.objects
        self.compare_method = next((m for m in ("hirescam", "seg-hirescam", "layercam") if m in methods), SAME)
        self.info = pn.pane.Markdown("", sizing_mode="stretch_width", margin=(0, 10), css_classes=["xv-map-info"])
        self.layout = pn.Column(
            pn.FlexBox(*[pn.pane.Bokeh(v.figure, margin=(5, 5)) for v in (self.left, self.right)],
                       css_classes=["xv-overlays"], flex_wrap="wrap", sizing_mode="stretch_width"),
            self.info, name=self.title, sizing_mode="stretch_width")
        self.left.figure.on_event(Tap, lambda event: self.click(event.x, event.y))
        selection.param.watch(lambda *_: self.sync_choices(), ["version"])
        selection.param.watch(lambda *_: self.sync_choices(), ["version"], what="objects")   # a new version
        selection.param.watch(lambda e: self.compare_with(e.new) if e.new else None, ["compare"])
        selection.param.watch(lambda *_: self.refresh(), ["split", "sample", "version", "layer", "method", "target",
                                                         "region", "point", "painted"])
        self.param.watch(lambda *_: self.refresh("right"), ["compare_version", "compare_method", "compare_layer"])
        self.refresh()

    def click(self, x: float | None, y: float | None) -> None:
        """A click on the left map picks the pixel of the 'point' region (segmenters)."""
        sel = self.selection
        if x is None or y is None or sel.region != "point" or not self.workbench.is_segmenter(sel.version):
            return
        h, w = self.left.shape
        row, col = plot_to_pixel(x, y, h)
        sel.point = (int(np.clip(row, 0, h - 1)), int(np.clip(col, 0, w - 1)))

    def sync_choices(self) -> None:
        wb = self.workbench
        self.param.compare_version.objects = [SAME, *wb.versions]
        self.param.compare_method.objects = [SAME, *wb.methods(self.selection.version)]
        self.param.compare_layer.objects = [SAME, *[n for n, _ in wb.layers(self.selection.version)]]

    def compare_with(self, version: str) -> None:
        """Show `version` on the right with the left's method and layer (e.g. a model before and after
        fine-tuning); one refresh."""
        self.param.update(compare_version=version, compare_method=SAME, compare_layer=SAME)

    def request(self, side: str):
        """The map request of one side."""
        if side == "left":
            return self.selection.request()
        pick = lambda value: None if value == SAME else value  # noqa: E731
        return self.selection.request(pick(self.compare_version), pick(self.compare_method), pick(self.compare_layer))

    def refresh(self, *sides: str) -> None:
        """Recompute (or fetch from the caches) and show the maps of the given sides (default both)."""
        for side in sides or ("left", "right"):
            request = self.request(side)
            shown = self.views[side].result
            if shown is not None and shown.request == request:
                continue                                # e.g. the right side of a left-only change
            self.runner.submit(side, lambda r=request: self._compute(r), lambda out, s=side: self._apply(s, *out))

    def _compute(self, request):
        """The picture and the map (or why there is none: errors of model work become a problem in words)."""
        wb = self.workbench
        picture = wb.picture(request.split, request.sample)
        try:
            return request, picture, wb.saliency(request), ""
        except Exception as err:                       # noqa: BLE001 - shown on the page with its fix
            log.warning("no map for %s", request, exc_info=True)
            return request, picture, None, map_problem(err, tuple(wb.input_shape[1:]))

    def _apply(self, side: str, request, picture: tuple, result: MapResult | None, problem: str) -> None:
        if request != self.request(side):           # the selection moved on meanwhile
            return
        self.picture.show((request.split, request.sample), picture[0])
        view = self.views[side]
        if result is None:
            if self._notified != (request.sample, problem):      # once per image and problem, not per side
                self._notified = (request.sample, problem)
                notify(problem, "error", 12000)
            view.show_none(request, problem)
        else:
            names = self.workbench.class_names(request.split)
            what = f"evidence {request.method}" if result.signed else f"{request.method} · {request.layer}"
            head = f"{what} · {request.version} · "
            view.show(result, head + shortened(names[result.target_class], TITLE_CHARS - len(head)))
        if side == "left":
            self._describe(request, result, problem, picture[1])

    def _describe(self, request, result: MapResult | None, problem: str, stored: tuple[int, int]) -> None:
        wb = self.workbench
        pred = wb.sample_predictions(request.version, request.split, [request.sample]).isel(sample=0)
        names = wb.class_names(request.split)
        top = np.argsort(-pred.probability.values, kind="stable")[:3]
        probs = " · ".join(f"{names[i]} {pred.probability.values[i]:.0%}" for i in top)
        c, h, w = wb.input_shape
        image = f"image {stored[1]}×{stored[0]}" + ("" if tuple(stored) == (h, w) else f", model input {w}×{h}")
        note = wb.splits[request.split].attrs.get("conversion")
        head = (f"**{request.sample}** · label **{wb.true_label(request.split, pred.label)}** · predicted "
                f"**{names[int(pred.predicted)]}** ({'top: ' if len(names) > 3 else ''}{probs}) · "
                + image + (f" · {note}" if note else ""))
        if result is None:
            self.info.object = f"{head} · **{problem}**"
            return
        unit = "weight of evidence in bits: red for, blue against" if result.signed else "map scaled to [0, 1]"
        self.info.object = (f"{head} · explaining **{names[result.target_class]}** · {unit} · "
                            f"{result.seconds * 1000:.0f} ms")

    def watched(self):
        return [(view, ["digest"]) for view in self.views.values()]

    def snapshot(self) -> dict:
        """The digests and titles of the two maps on show, and which image the left map is of (two blank
        maps share a digest, so a digest alone cannot say that a new image's map arrived)."""
        shown = self.left.result
        return {"left": self.left.digest, "right": self.right.digest, "left_title": self.left.title,
                "right_title": self.right.title, "left_problem": self.left.problem, "picture": list(self.picture.shown),
                "left_sample": shown.request.sample if shown else (self.left.digest[5:] if self.left.problem else "")}
