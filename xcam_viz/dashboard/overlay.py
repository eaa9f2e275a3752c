"""The Explain tab: two map views side by side (two methods, layers or model versions), linked.

Images get 2-D `MapView`s (mapview.py) sharing one `Picture`; volumes get `VolumeView`s (volume.py)
sharing one `VolumeScene` (the volume's slices, crosshair and window). The tab itself is the same for both.
"""
from __future__ import annotations

import numpy as np
import panel as pn
import param

from .maps import MapResult, map_problem
from .mapview import Display, MapView, Picture
from .tab import Tab
from .tasks import log, notify
from .volume import VolumeScene, VolumeView

SAME = "(same as left)"
VIEWS = {2: (Picture, MapView), 3: (VolumeScene, VolumeView)}     # spatial dims: (what views share, a view)

TITLE_CHARS = 36          # a map's title fits its 200 px figure (9 pt); the class name gives way


def shortened(text: str, length: int) -> str:
    """`text` cut to `length` characters (at least 6) with an ellipsis."""
    length = max(length, 6)
    return text if len(text) <= length else text[:length - 1] + "…"


class OverlayPair(Tab):
    """The Explain tab. Left: the selection's map; right: another method, layer or model version (e.g.
    before / after fine-tuning). The two views are linked: zooming or panning one moves both (volumes: one
    crosshair and one window for both)."""

    title = param.String(default="Explain", constant=True)
    attribute = "overlays"

    compare_version = param.Selector(objects=[SAME], default=SAME, label="Right: model version")
    compare_method = param.Selector(objects=[SAME], default=SAME, label="Right: method")
    compare_layer = param.Selector(objects=[SAME], default=SAME, label="Right: layer")
    shown = param.Integer(default=0, doc="maps shown so far: the state probe republishes after every one, even of "
                                         "a map identical to the one before (two blank maps, one map under two names)")

    def __init__(self, session, display: Display | None = None, width: int = 200, **params):
        super().__init__(session, **params)
        workbench, selection = self.workbench, self.selection
        self.display = display or Display()
        shared, view = VIEWS[workbench.spatial_dims]
        self.picture = shared(workbench)                             # both sides show the selected image
        self._notified = None
        self._asked: dict = {}                                       # the request each side last submitted
        self.left = view(self.display, self.picture, width)
        self.right = view(self.display, self.picture, width, linked=self.left)
        self.views = {"left": self.left, "right": self.right}
        self.sync_choices()
        methods = self.param.compare_method.objects
        self.compare_method = next((m for m in ("hirescam", "seg-hirescam", "layercam") if m in methods), SAME)
        self.info = pn.pane.Markdown("", sizing_mode="stretch_width", margin=(0, 10), css_classes=["xv-map-info"])
        self.layout = pn.Column(
            *self.picture.widgets(),
            pn.FlexBox(*[v.panel for v in (self.left, self.right)],
                       css_classes=["xv-overlays"], flex_wrap="wrap", sizing_mode="stretch_width"),
            self.info, name=self.title, sizing_mode="stretch_width")
        self.left.on_click(self.click)
        selection.param.watch(lambda *_: self.sync_choices(), ["version"])
        selection.param.watch(lambda *_: self.sync_choices(), ["version"], what="objects")   # a new version
        selection.param.watch(lambda e: self.compare_with(e.new) if e.new else None, ["compare"])
        selection.param.watch(lambda *_: self.refresh(), ["split", "sample", "version", "layer", "method", "target",
                                                         "region", "point", "painted"])
        self.param.watch(lambda *_: self.refresh("right"), ["compare_version", "compare_method", "compare_layer"])
        self.refresh()

    def click(self, x: float | None, y: float | None) -> None:
        """A click at plot point (x, y) of the left map picks the pixel of the 'point' region (segmenters)."""
        sel = self.selection
        pixel = self.left.pixel_at(x, y)
        if pixel is not None and sel.region == "point" and self.workbench.is_segmenter(sel.version):
            sel.point = pixel

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
            if self._asked.get(side) == request:
                continue                                # e.g. the right side of a left-only change
            self._asked[side] = request
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
        """Show a side's map (the runner applies only the side's latest request)."""
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
        self.shown += 1

    def _describe(self, request, result: MapResult | None, problem: str, stored: tuple[int, int]) -> None:
        wb = self.workbench
        pred = wb.sample_predictions(request.version, request.split, [request.sample]).isel(sample=0)
        names = wb.class_names(request.split)
        top = np.argsort(-pred.probability.values, kind="stable")[:3]
        probs = " · ".join(f"{names[i]} {pred.probability.values[i]:.0%}" for i in top)
        grid, spatial = tuple(stored), tuple(wb.input_shape[1:])
        image = (f"{self.picture.kind} {_size(grid)}" + ("" if grid == spatial else f", model input {_size(spatial)}")
                 + self.picture.describe())
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
        return [(self, ["shown"])] + self.picture.watched()

    def snapshot(self) -> dict:
        """The digests and titles of the two maps on show, and which image the left map is of (two blank
        maps share a digest, so a digest alone cannot say that a new image's map arrived)."""
        shown = self.left.result
        return {"left": self.left.digest, "right": self.right.digest, "left_title": self.left.title,
                "right_title": self.right.title, "left_problem": self.left.problem, "picture": list(self.picture.shown),
                "left_sample": shown.request.sample if shown else (self.left.digest[5:] if self.left.problem else ""),
                **self.picture.snapshot()}


def _size(grid: tuple[int, ...]) -> str:
    """An image's (height, width) as 'W×H', a volume's (D, H, W) as 'W×H×D'."""
    return "×".join(map(str, grid[::-1]))
