"""Overlay views: the image with a map on top, two side by side with linked zoom and pan.

Every update goes through `hv.streams.Pipe`s into DynamicMaps, so Bokeh replaces the data of the
existing glyphs: no figure is re-rendered and zoom and pan survive a new selection.
"""
from __future__ import annotations

import holoviews as hv
import numpy as np
import panel as pn
import param

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


class MapView(param.Parameterized):
    """One overlay: the image (hv.RGB) and a map (hv.Image) fed by pipes; `show` swaps their data."""

    clim = param.Tuple(default=(0.0, 1.0), length=2)
    colormap = param.String(default="inferno")
    title = param.String(default="")
    digest = param.String(default="", doc="hash of the map on show (changes whenever the map does)")

    def __init__(self, display: Display, shape: tuple[int, int], width: int = 300, **params):
        super().__init__(**params)
        self.display, self.shape = display, shape
        h, w = shape
        self.result: MapResult | None = None
        self._image_key = None
        self.image_pipe = hv.streams.Pipe(data=np.zeros((h, w, 3), np.float32))
        self.map_pipe = hv.streams.Pipe(data=(np.zeros((h, w), np.float32), False))
        image = hv.DynamicMap(self._rgb, streams=[self.image_pipe])
        heat = hv.DynamicMap(self._heat, streams=[self.map_pipe, display.param.threshold, self.param.title])
        heat = heat.apply.opts(alpha=display.param.opacity, cmap=self.param.colormap, clim=self.param.clim)
        display.param.watch(lambda _: self._recolour(), ["cmap"])
        self.plot = (image.opts(frame_width=width, frame_height=int(width * h / w), xaxis=None, yaxis=None)
                     * heat.opts(colorbar=True, tools=["hover"], colorbar_opts={"width": 10}))

    def _rgb(self, data):
        h, w = self.shape
        return hv.RGB(np.clip(data, 0, 1), bounds=(0, 0, w, h))

    def _heat(self, data, threshold, title):
        h, w = self.shape
        values, signed = data
        return hv.Image(thresholded(values, signed, threshold), bounds=(0, 0, w, h),
                        vdims=[hv.Dimension("value")]).opts(title=title)

    def _recolour(self) -> None:
        signed = self.result is not None and self.result.signed
        self.colormap = DIVERGING if signed else self.display.cmap

    def show(self, image_key, image: np.ndarray | None, result: MapResult, title: str) -> None:
        """Put a new image (if its key changed) and map into the plot, replacing data in place."""
        if image_key != self._image_key and image is not None:
            self._image_key = image_key
            self.image_pipe.send(image)
        self.result = result
        values = result.values
        scale = float(np.abs(values).max()) or 1e-6
        with param.parameterized.batch_call_watchers(self):
            self._recolour()
            self.clim = (-scale, scale) if result.signed else (0.0, 1.0)
            self.title = title
        self.map_pipe.send((values, result.signed))
        self.digest = result.digest


class OverlayPair(pn.viewable.Viewer):
    """Left: the selection's map; right: another method, layer or model version (e.g. before / after
    fine-tuning). The two plots share their axes, so zooming one zooms both."""

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
        self.compare_method = next((m for m in ("hirescam", "layercam") if m in methods), SAME)
        self.info = pn.pane.Markdown("", sizing_mode="stretch_width", margin=(0, 10))
        self.layout = pn.Column(
            pn.pane.HoloViews((self.left.plot + self.right.plot).opts(shared_axes=True, toolbar="below"),
                              css_classes=["xv-overlays"], margin=(20, 5, 5, 5), linked_axes=False),
            self.info, name="Explain")
        selection.param.watch(lambda _: self.sync_choices(), ["version"])
        selection.param.watch(lambda _: self.refresh(), ["split", "sample", "version", "layer", "method", "target",
                                                         "region", "point", "painted"])
        self.param.watch(lambda _: self.refresh("right"), ["compare_version", "compare_method", "compare_layer"])
        self.refresh()

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
