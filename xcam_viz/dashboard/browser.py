"""The image browser: one montage image of a page of thumbnails, filters, sorting, click to select.

A volume's thumbnail is the axial slice through its map's maximum when that map is known already (computed
for the Explain tab, or for sorting by a metric), else its middle axial slice: no map is computed for it.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import panel as pn
import param
from bokeh.events import DoubleTap, Tap
from bokeh.models import ColumnDataSource, HoverTool, TapTool

from ..data.views import axial_thumbnail
from ..evidence import METHODS as EVIDENCE_METHODS
from ..spatial import hottest_point
from .controls import cam_name, scored_with
from .mapview import image_figure, rgba
from .raster import Grid, montage
from .selection import Selection
from .tasks import Runner, bokeh_update, notify
from .workbench import Workbench

SORTS = {"id": "id", "confidence, high first": "-confidence", "confidence, low first": "confidence"}
MASK_SORTS = {"pointing game, misses first": "pointing_game", "energy in mask, low first": "energy_pointing_game",
              "energy in mask, high first": "-energy_pointing_game"}     # offered for splits with masks
METRICS = ("pointing_game", "energy_pointing_game")
TILE_INFO = ("id", "label", "predicted", "confidence", "feedback")
HIGHLIGHT = "#ffc400"
DEFAULT_GRID = Grid()


class ImageBrowser(pn.viewable.Viewer):
    """A paged grid of thumbnails (caption: prediction and confidence, green if correct, red if wrong,
    a yellow dot if the image has feedback); clicking a thumbnail selects the image everywhere."""

    true_class = param.Selector(objects={"any": -1}, default=-1, label="True class")
    predicted_class = param.Selector(objects={"any": -1}, default=-1, label="Predicted class")
    outcome = param.Selector(objects=["any", "correct", "wrong"], label="Outcome")
    feedback = param.Selector(objects=["any", "with feedback", "without"], label="Feedback")
    sort = param.Selector(objects=SORTS, default="id", label="Sort by")
    page = param.Integer(default=0, bounds=(0, None))
    ids = param.List(default=[], doc="the filtered, sorted sample ids")
    previous_page = param.Event(label="◀")
    next_page = param.Event(label="▶")

    def __init__(self, workbench: Workbench, selection: Selection, runner: Runner, grid: Grid = DEFAULT_GRID, **params):
        self.workbench, self.selection, self.runner, self.grid = workbench, selection, runner, grid
        super().__init__(**params)
        classes = {"any": -1, **{n: i for i, n in enumerate(workbench.class_names())}}
        self.param.true_class.objects = self.param.predicted_class.objects = classes
        self._montage = ColumnDataSource({"image": [rgba(np.zeros((*grid.size, 3), np.uint8))]})
        self._tiles = ColumnDataSource({k: [] for k in ("x0", "y0", "x1", "y1", *TILE_INFO)})
        self._scores: dict[tuple, dict[str, float]] = {}
        self._clicked: str | None = None
        self.figure = self._montage_figure()
        for kind in (Tap, DoubleTap):            # two quick clicks on two thumbnails arrive as a double tap
            self.figure.on_event(kind, lambda event: self.click(event.x, event.y))
        self.pager = pn.pane.HTML("", margin=(0, 10), styles={"line-height": "31px", "white-space": "nowrap"},
                                  css_classes=["xv-pager"])
        pager_buttons = [pn.widgets.Button.from_param(self.param[name], width=40, margin=(0, 5))
                         for name in ("previous_page", "next_page")]
        size = {"width": 140, "margin": (2, 4)}
        filters = pn.GridBox(pn.widgets.Select.from_param(selection.param.split, name="Split", css_classes=["xv-split"],
                                                     **size),
                             *[pn.widgets.Select.from_param(self.param[p], **size) for p in
                               ("true_class", "predicted_class", "outcome", "feedback", "sort")], ncols=3)
        self.layout = pn.Column(filters, pn.pane.Bokeh(self.figure, margin=(5, 5)),
                                pn.Row(pager_buttons[0], self.pager, pager_buttons[1], align="center"), name="Images")
        selection.param.watch(lambda *_: self._sorts(), ["split"])
        selection.param.watch(lambda *_: self.refilter(), ["split", "version", "revision"])
        self._sorts()
        self._slices: dict[str, int | None] = {}          # the axial slice of each volume's thumbnail drawn
        self._ids_split = selection.split                 # the split `ids` lists
        selection.param.watch(lambda *_: self._draw_highlight(), ["sample"])
        if workbench.spatial_dims == 3:
            selection.param.watch(lambda *_: self._redraw_slices(), ["sample", "method", "layer", "target"])
        self.refilter()

    def _sorts(self) -> None:
        """Localisation sorts only for a split with ground-truth masks."""
        masks = self.workbench.splits[self.selection.split].has_masks
        self.param.sort.objects = {**SORTS, **(MASK_SORTS if masks else {})}
        if self.sort not in self.param.sort.objects.values():
            self.sort = "id"

    # --- filtering and paging ---------------------------------------------------------------------
    def filtered(self) -> list[str]:
        """Sample ids of the split passing the filters, in the chosen order."""
        wb, sel = self.workbench, self.selection
        data = wb.splits[sel.split]
        needs_predictions = self.predicted_class >= 0 or self.outcome != "any" or self.sort.lstrip("-") == "confidence"
        pred = wb.predictions(sel.version, sel.split) if needs_predictions else None   # else only the page's
        ids = np.asarray(data.ids)
        keep = np.ones(len(ids), bool)
        if self.true_class >= 0:
            keep &= data.labels.numpy() == self.true_class
        if self.predicted_class >= 0:
            keep &= pred.predicted.values == self.predicted_class
        if self.outcome != "any":
            keep &= pred.correct.values == (self.outcome == "correct")
        if self.feedback != "any":
            marked = wb.feedback_ids(sel.split)
            has = np.array([sid in marked for sid in ids])
            keep &= has if self.feedback == "with feedback" else ~has
        order = np.arange(len(ids))
        key = self.sort.lstrip("-")
        if key == "confidence":
            order = np.argsort(pred.confidence.values, kind="stable")
        elif key in METRICS:
            scores = self._scores[self._metric_key()][key]
            order = np.argsort([scores[s] for s in ids], kind="stable")
        if self.sort.startswith("-"):
            order = order[::-1]
        return [str(ids[i]) for i in order if keep[i]]

    def _metric_key(self) -> tuple:
        sel = self.selection
        method = "gradcam" if sel.method in EVIDENCE_METHODS else sel.method
        return sel.version, sel.split, method, sel.layer

    def metric_scores(self, key: tuple) -> dict[str, dict[str, float]]:
        """Per metric (pointing game, energy in the ground-truth mask), the score of every image of a (version, split,
        method, layer)."""
        from .. import metrics

        version, split, method, layer = key
        data = self.workbench.splits[split]
        cams = self.workbench.explain_split(version, split, method, layer)
        return {name: dict(zip(data.ids, getattr(metrics, name)(cams, data).values)) for name in METRICS}

    @param.depends("true_class", "predicted_class", "outcome", "feedback", "sort", watch=True)
    def refilter(self) -> None:
        """Apply filters and sorting (computing the sort metric in the background first if needed)."""
        key = self._metric_key()
        if self.sort.lstrip("-") in METRICS and key not in self._scores:
            if self.workbench.splits[key[1]].masks is None:
                notify("sorting by a localisation metric needs ground-truth masks; this split has none")
                self.sort = "id"
                return
            self.pager.object = (f"computing the {self.sort.lstrip('-').replace('_', ' ')} of every {key[1]} image "
                                 f"({cam_name(key[3], key[2])})…")
            self.runner.submit("metric", lambda: self.metric_scores(key),
                               lambda scores: (self._scores.__setitem__(key, scores), self.refilter()))
            return
        self.ids, self._ids_split = self.filtered(), self.selection.split
        self.page = 0
        self.draw()

    @property
    def pages(self) -> int:
        per = self.grid.cols * self.grid.rows
        return max(1, -(-len(self.ids) // per))

    def page_ids(self) -> list[str]:
        per = self.grid.cols * self.grid.rows
        return self.ids[self.page * per:(self.page + 1) * per]

    @param.depends("previous_page", watch=True)
    def _previous(self) -> None:
        self._turn(-1)

    @param.depends("next_page", watch=True)
    def _next(self) -> None:
        self._turn(1)

    def _turn(self, step: int) -> None:
        self.page = int(np.clip(self.page + step, 0, self.pages - 1))
        self.draw()

    def show(self, sample: str) -> None:
        """Turn to the page holding `sample` (if it passes the filters)."""
        if sample in self.ids:
            self.page = self.ids.index(sample) // (self.grid.cols * self.grid.rows)
            self.draw()

    def _montage_figure(self):
        """The montage (one RGBA image) under invisible rectangles, one per thumbnail: their hover shows each
        image's details, and the selected one is outlined. A click selects a rectangle in the browser (Bokeh's
        tap tool), so the outline moves at once, without a round trip to the server."""
        h, w = self.grid.size
        fig = image_figure((h, w), w, toolbar_location=None, tools="", css_classes=["xv-montage"])
        fig.image_rgba("image", x=0, y=0, dw=w, dh=h, source=self._montage)
        tiles = fig.quad(left="x0", right="x1", bottom="y0", top="y1", source=self._tiles, fill_alpha=0,
                         line_alpha=0, selection_fill_alpha=0, selection_line_alpha=1, selection_line_color=HIGHLIGHT,
                         selection_line_width=3, nonselection_fill_alpha=0, nonselection_line_alpha=0)
        fig.add_tools(HoverTool(renderers=[tiles], tooltips=[(k, f"@{k}") for k in TILE_INFO]),
                      TapTool(renderers=[tiles]))
        fig.toolbar.active_tap = fig.tools[-1]
        return fig

    # --- drawing and clicking ---------------------------------------------------------------------
    @bokeh_update
    def draw(self) -> None:
        """Render the current page into the montage and the hover points. Thumbnails come first: when the
        page's predictions are not known yet they are computed in the background and the page is redrawn."""
        wb, sel = self.workbench, self.selection
        ids = self.page_ids()
        self._slices = self.hottest_slices(ids)
        images = [self.thumbnail(s, self._slices[s]) for s in ids]
        pred = wb.sample_predictions(sel.version, sel.split, ids, compute=False) if ids else None
        if ids and pred is None:
            version, split = sel.version, sel.split
            self.runner.submit("page-predictions", lambda: wb.sample_predictions(version, split, ids),
                               lambda _: self.draw())
            if not self.runner.background:                  # inline: the page has just been drawn whole
                return
        marked = wb.feedback_ids(sel.split)
        names = wb.class_names(sel.split)
        labels = wb.splits[sel.split].labels[[wb.splits[sel.split].index_of(s) for s in ids]].tolist()
        known = pred is not None
        captions = [(names[p][:10], f"{c:.0%}") for p, c in zip(pred.predicted.values, pred.confidence.values)] \
            if known else ["…"] * len(ids)
        correct = wb.outcomes(sel.version, sel.split, ids) if known else [None] * len(ids)
        boxes = np.array([self.grid.box(i) for i in range(len(ids))]).reshape(-1, 4)
        self._tiles.data = {**dict(zip(("x0", "y0", "x1", "y1"), boxes.T.tolist())), "id": ids,
                            "label": [wb.true_label(sel.split, v) for v in labels],
                            "predicted": [names[v] for v in pred.predicted.values] if known else ["…"] * len(ids),
                            "confidence": [round(float(v), 3) for v in pred.confidence.values] if known
                            else [float("nan")] * len(ids),
                            "feedback": ["yes" if s in marked else "no" for s in ids]}
        self._montage.data = {"image": [rgba(montage(images, captions, correct, [s in marked for s in ids],
                                                     self.grid))]}
        metric, (_, _, method, layer) = self.sort.lstrip("-"), self._metric_key()
        order = f" · sorted by {scored_with(metric.replace('_', ' '), layer, method)}" if metric in METRICS else ""
        self.pager.object = (f"page {self.page + 1} of {self.pages} · {len(self.ids)} of "
                             f"{len(wb.splits[sel.split])} {sel.split} images{order}")
        self._clicked = None
        self._draw_highlight()

    def thumbnail(self, sample: str, z: int | None = None) -> np.ndarray:
        """The sample's thumbnail (decoded once, then cached); a volume's through axial slice `z` of its picture
        (the model input's grid, as its maps) when given."""
        wb, split = self.workbench, self.selection.split
        if z is None:
            return wb.thumbnail(split, sample)
        return wb.thumbnails.get_or_compute(("thumbnail", split, sample, z),
                                            lambda: axial_thumbnail(wb.picture(split, sample)[0], z))

    def hottest_slices(self, ids: list[str]) -> dict[str, int | None]:
        """Per sample, the axial slice through the maximum of its volume's map for the selected version, method,
        layer and target when that map is known already (None: unknown, or an image; the middle slice is shown)."""
        wb = self.workbench
        if wb.spatial_dims != 3:
            return dict.fromkeys(ids)
        request = self.selection.request()
        split_maps = None                                 # all of a split's maps, computed to sort by a metric
        if request.target == "predicted" and request.region is None:
            split_maps = wb.explain_split(request.version, request.split, request.method, request.layer,
                                          compute=False)
        return {s: self._hottest_slice(dataclasses.replace(request, sample=s), split_maps) for s in ids}

    def _hottest_slice(self, request, split_maps) -> int | None:
        """The hottest slice of one request's map, found once per map."""
        wb = self.workbench
        key = ("hottest-slice", wb.version_key(request.version), request)
        z = wb.thumbnails.get(key)
        if z is None:
            known = wb.saliency(request, compute=False)
            if known is None and split_maps is None:
                return None
            values = known.values if known is not None else split_maps.sel(sample=request.sample).values
            z = hottest_point(values)[0]
            wb.thumbnails.put(key, z)
        return z

    @bokeh_update
    def _redraw_slices(self) -> None:
        """Redraw the thumbnails whose slice has changed: a map has become known (e.g. of the volume selected
        before), or another method's is asked for. Only their pixels are sent (a montage is ~0.7 MB). Nothing
        while the page still lists another split's volumes: refiltering for the new split draws it whole."""
        if self._ids_split != self.selection.split:
            return
        ids = self.page_ids()
        slices = self.hottest_slices(ids)
        montage_rgba = self._montage.data["image"][0]
        height = montage_rgba.shape[0]
        patches = []
        for i, sample in enumerate(ids):
            if slices[sample] == self._slices.get(sample):
                continue
            picture = rgba(self.grid.picture(self.thumbnail(sample, slices[sample])))   # row 0 at the bottom
            top, left = self.grid.picture_corner(i)
            rows = slice(height - top - len(picture), height - top)
            patches.append(((0, rows, slice(left, left + picture.shape[1])), picture.ravel()))
        self._slices = slices
        if patches:
            self._montage.patch({"image": patches})

    @bokeh_update
    def _draw_highlight(self) -> None:
        """Outline the selected image (unless a click in the browser has outlined it already)."""
        sample = self.selection.sample
        if sample == self._clicked:
            return
        self._clicked = None
        ids = self.page_ids()
        self._tiles.selected.indices = [ids.index(sample)] if sample in ids else []

    def click(self, x: float, y: float) -> None:
        """Select the image under montage point (x, y)."""
        i = self.grid.tile_at(x, y)
        ids = self.page_ids()
        if i is not None and i < len(ids):
            self._clicked = ids[i]                      # the browser has outlined it already
            self.selection.sample = ids[i]
        else:                                           # a click beside the thumbnails cleared the outline
            self._clicked = None
            self._draw_highlight()

    def snapshot(self) -> dict:
        """The page on show, each volume's thumbnail slice (None: the middle one, or an image) and the montage's
        geometry, for the state probe."""
        grid = self.grid
        ids = self.page_ids()
        return {"page": self.page, "page_ids": ids, "slices": [self._slices.get(s) for s in ids],
                "grid": {"cols": grid.cols, "rows": grid.rows, "size": list(grid.size), "tile": grid.tile}}

    def __panel__(self):
        return self.layout
