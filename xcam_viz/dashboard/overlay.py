"""Overlay views: the image with a map on top, two side by side with linked zoom and pan.

Every update goes through `hv.streams.Pipe`s into DynamicMaps, so Bokeh replaces the data of the
existing glyphs: no figure is re-rendered and zoom and pan survive a new selection.
"""
from __future__ import annotations

import functools

import holoviews as hv
import numpy as np
import panel as pn
import param
from holoviews.plotting.util import process_cmap

from .raster import plot_to_pixel
from .selection import Selection
from .tasks import Runner
from .workbench import MapResult, Workbench

CMAPS = ["inferno", "viridis", "jet", "turbo", "gray"]
DIVERGING = "RdBu_r"
SAME = "(same as left)"


class Display(param.Parameterized):
    """How maps are drawn: opacity, colormap (unsigned maps; evidence always uses a diverging one), threshold."""

    opacity = param.Number(default=0.5, bounds=(0, 1), step=0.05, label="Map opacity")
    cmap = param.Selector(objects=CMAPS, default="inferno", label="Colormap")
    threshold = param.Number(default=0.0, bounds=(0, 0.95), step=0.05, label="Hide values below",
                             doc="share of the map's maximum (of |value| for evidence) below which it is hidden")


def thresholded(values: np.ndarray, signed: bool, threshold: float) -> np.ndarray:
    """The map with values below threshold × max (|value| for signed maps) set to NaN (transparent)."""
    scale = float(np.nanmax(np.abs(values))) if values.size else 0.0
    out = values.astype(np.float32, copy=True)
    if threshold > 0 and scale > 0:
        out[(np.abs(out) if signed else out) < threshold * scale] = np.nan
    return out


@functools.lru_cache(maxsize=None)
def palette(name: str) -> list[str]:
    """The colormap as 256 hex colours, converted once (HoloViews would convert a name on every update)."""
    return process_cmap(name, 256)


class MapView(param.Parameterized):
    """One overlay: the image (hv.RGB) and a map on top (hv.Image), two DynamicMaps fed by one Pipe.

    Each selection sends one event, so the plot updates once, in place. While the image stays the same
    its DynamicMap returns the same element, which Bokeh then keeps without re-sending its pixels; the
    display settings are stream parameters of the map's DynamicMap.
    """

    title = param.String(default="")
    digest = param.String(default="", doc="hash of the map on show (changes whenever the map does)")

    def __init__(self, display: Display, shape: tuple[int, int], width: int = 270, **params):
        super().__init__(**params)
        self.display, self.shape = display, shape
        h, w = shape
        self.result: MapResult | None = None
        self.size = (width, int(width * h / w))
        self._rgb_cache: tuple = (None, None)
        self.pipe = hv.streams.Pipe(data=(None, np.zeros((h, w, 3), np.float32), np.zeros((h, w), np.float32),
                                          False, ""))
        self.image = hv.DynamicMap(self._rgb, streams=[self.pipe])
        heat = hv.DynamicMap(self._heat, streams=[self.pipe, *(display.param[p] for p in
                                                              ("opacity", "cmap", "threshold"))])
        self.plot = self.image * heat

    # options are set on the elements: on a DynamicMap they would wrap it in another, slower one
    def _rgb(self, data):
        key, image = data[:2]
        if self._rgb_cache[0] != key or key is None:
            h, w = self.shape
            self._rgb_cache = (key, hv.RGB(image, bounds=(0, 0, w, h)).opts(
                frame_width=self.size[0], frame_height=self.size[1], xaxis=None, yaxis=None))
        return self._rgb_cache[1]

    def _heat(self, data, opacity, cmap, threshold):
        h, w = self.shape
        values, signed, title = data[2:]
        scale = float(np.abs(values).max()) or 1e-6
        return hv.Image(thresholded(values, signed, threshold), bounds=(0, 0, w, h), vdims=["value"]).opts(
            alpha=opacity, cmap=palette(DIVERGING if signed else cmap), clim=(-scale, scale) if signed else (0.0, 1.0),
            colorbar=True, tools=["hover"], colorbar_opts={"width": 10}, title=title)

    @property
    def colormap(self) -> str:
        """The colormap the map is drawn with (diverging for signed maps)."""
        return DIVERGING if self.result is not None and self.result.signed else self.display.cmap

    def show(self, image_key, image: np.ndarray, result: MapResult, title: str) -> None:
        """Replace the map and title (and the image, if `image_key` names another one) in place."""
        self.result, self.title = result, title
        self.pipe.send((image_key, np.clip(image, 0, 1), result.values, result.signed, title))
        self.digest = result.digest


class OverlayPair(pn.viewable.Viewer):
    """Left: the selection's map; right: another method, layer or model version (e.g. before / after
    fine-tuning). Panel links the axes of the two plots, so zooming or panning one moves both."""

    compare_version = param.Selector(objects=[SAME], default=SAME, label="Right: model version")
    compare_method = param.Selector(objects=[SAME], default=SAME, label="Right: method")
    compare_layer = param.Selector(objects=[SAME], default=SAME, label="Right: layer")

    def __init__(self, workbench: Workbench, selection: Selection, runner: Runner, display: Display | None = None,
                 width: int = 270, **params):
        self.workbench, self.selection, self.runner = workbench, selection, runner
        super().__init__(**params)
        self.display = display or Display()
        shape = tuple(workbench.input_shape[1:])
        self.left = MapView(self.display, shape, width)
        self.right = MapView(self.display, shape, width)
        self.views = {"left": self.left, "right": self.right}
        self.sync_choices()
        methods = self.param.compare_method.objects
        self.compare_method = next((m for m in ("hirescam", "seg-hirescam", "layercam") if m in methods), SAME)
        self.info = pn.pane.Markdown("", sizing_mode="stretch_width", margin=(0, 10))
        self.layout = pn.Column(
            pn.Row(*[pn.pane.HoloViews(v.plot, linked_axes=True, margin=(5, 5)) for v in (self.left, self.right)],
                   css_classes=["xv-overlays"]),                  # Panel links their axes: zoom and pan together
            self.info, name="Explain")
        self.tap = hv.streams.Tap(source=self.left.image, x=None, y=None)
        self.tap.param.watch(lambda *_: self.click(self.tap.x, self.tap.y), ["x", "y"])
        selection.param.watch(lambda *_: self.sync_choices(), ["version"])
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
        wb = self.workbench
        return request, wb.image(request.split, request.sample), wb.saliency(request)

    def _apply(self, side: str, request, image: np.ndarray, result: MapResult) -> None:
        if request != self.request(side):           # the selection moved on meanwhile
            return
        names = self.workbench.class_names(request.split)
        what = request.method if request.method.startswith("evidence") else f"{request.method} · {request.layer}"
        title = f"{what} · {request.version} · {names[result.target_class]}"
        self.views[side].show((request.split, request.sample), image, result, title)
        if side == "left":
            self._describe(request, result)

    def _describe(self, request, result: MapResult) -> None:
        wb = self.workbench
        pred = wb.predictions(request.version, request.split).sel(sample=request.sample)
        names = wb.class_names(request.split)
        probs = " · ".join(f"{n} {p:.0%}" for n, p in zip(names, pred.probability.values))
        unit = "weight of evidence in bits: red for, blue against" if result.signed else "map scaled to [0, 1]"
        self.info.object = (f"**{request.sample}** · label **{names[int(pred.label)]}** · predicted "
                            f"**{names[int(pred.predicted)]}** ({probs}) · explaining "
                            f"**{names[result.target_class]}** · {unit} · {result.seconds * 1000:.0f} ms")

    def __panel__(self):
        return self.layout
