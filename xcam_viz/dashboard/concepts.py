"""The Concepts tab: draw a region, see the units that fire there, name the concept, watch the report grow.

The region is painted with the Feedback tab's brush (`painting.PAINTINGS`): over the image, or on any plane
of a volume, spread to neighbouring slices. A layer's units are dissected (`xv.concepts.dissect` over the
selected split) in the background the first time the tab needs them, and cached on the shared Workbench
per model version, split and layer. Every stroke ranks the units by the IoU of their masks with the
painted region, or for a region too large for any IoU to pass by the share of their masks inside it
(`Units.match`); the montage shows the best units' top images (unit_montage.py: a volume at each unit's
best slice). "Label" names every unit above the rule's threshold (`Units.label`, kept in the Workbench's
LabelStore beside the feedback), recolours the unit-embedding scatter and rebuilds the explanation report
(`xv.report`; a volume's maps are shown by their hottest axial slice) in the background.
"""
from __future__ import annotations

import copy
import io
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import panel as pn
import param
from bokeh.models import ColumnDataSource

from ..concepts import THRESHOLDS
from .controls import layer_options
from .freehand import merge_strokes
from .mapview import image_figure, rgba
from .painting import PAINTINGS
from .raster import Grid, Stroke, composite, mask_layer, strokes_to_masks
from .tab import Tab
from .tasks import bokeh_update, notify
from .unit_montage import unit_layer, unit_montage, unit_views
from .unit_scatter import UnitScatter
from .workbench import one_thread

TABLE_ROWS = 10               # units listed, best first
BEST_UNITS = 3                # units whose top images the montage shows, one row each
TOP_IMAGES = 5
MONTAGE_TILE = 96             # px per thumbnail: masks and captions legible
CONTROLS = 250
RULE_NAMES = {"iou": "IoU", "coverage": "share of the unit's mask inside"}
REPORT_IMAGES = 4             # images explained in detail in the report (the selected and the labelled ones first)
FAST_SCORES = 128 * 128       # input pixels up to which the report scores deletion / insertion by default


class ConceptsPanel(Tab):
    """The Concepts tab: match a painted region against a layer's units, name the concept, and follow the
    concept dictionary, the unit embedding and the report as labels accumulate."""

    title = param.String(default="Concepts", constant=True)
    attribute = probe_key = "concepts"
    probed = ("layer", "phase", "strokes", "matches", "labelled", "report_version")
    layer = param.Selector(objects={}, label="Layer")
    width = param.Integer(default=6, bounds=(1, 32), label="Brush width (image pixels)")
    preset = param.Selector(objects=[], label="Concept")
    concept = param.String(default="", label="…or a new concept")
    threshold = param.Number(default=THRESHOLDS["iou"], bounds=(0, 1), step=0.05, label="Label units with IoU above")
    coverage = param.Number(default=THRESHOLDS["coverage"], bounds=(0, 1), step=0.05,
                            label="…large regions: share of the unit's mask inside above")
    report_evidence = param.Boolean(default=False, label="Evidence maps in the report (slow)")
    report_faithfulness = param.Boolean(default=True, label="Deletion / insertion scores in the report (slow)")
    strokes = param.List(default=[], item_type=Stroke, doc="the strokes painting the region, oldest first (before "
                         "the spreads to other slices of a volume)")
    phase = param.String(default="idle", doc="idle | dissecting | ready")
    rule = param.String(default="iou", doc="the matching rule of the ranking on show (iou | coverage)")
    matches = param.List(default=[], doc="[unit, score] of the best-matching units, best first")
    labelled = param.Dict(default={}, doc="concept -> number of units of the layer carrying it")
    report_version = param.Integer(default=0, doc="version of the latest report (0: none yet)")
    undo_event = param.Event(label="Undo")
    clear_event = param.Event(label="Clear")
    label_event = param.Event(label="Label")
    update_event = param.Event(label="Update")

    def __init__(self, session, plot_width: int = 320, **params):
        super().__init__(session, **params)
        workbench, selection = self.workbench, self.selection
        self.shape = tuple(workbench.input_shape[1:])
        self.report_faithfulness = int(np.prod(self.shape)) <= FAST_SCORES     # 66 model passes per image
        self.sync_layers()
        self.report = None
        self._html = b""
        self._ready = self._shown = None              # units prepared (key, split size); (split, sample) shown
        self._image = np.zeros((*self.shape, 3), np.float32)
        self._best = np.zeros(self.shape, bool)       # mask of the best-matching unit on the image
        self._roi, self._picture = np.zeros(self.shape, bool), self._image     # the region and picture drawn
        self.painting = PAINTINGS[len(self.shape)](self.shape, self.receive, plot_width, self._moved, self._painted,
                                                   css="xv-concept-roi")
        self.canvas = self.painting.canvas
        self.grid = Grid(cols=TOP_IMAGES, rows=BEST_UNITS, tile=MONTAGE_TILE)
        self.montage_image = np.full((*self.grid.size, 3), 245, np.uint8)     # H×W×3, the montage on show
        self._montage = ColumnDataSource({"image": [rgba(self.montage_image)]})
        self.scatter = UnitScatter()
        self.table = pn.pane.DataFrame(pd.DataFrame(columns=["unit", "IoU", "concept"]), index=False, width=230,
                                       css_classes=["xv-concept-units"])
        self.table_title = pn.pane.Markdown("**Units ranked by IoU with the region**", margin=(0, 10))
        self.status = pn.pane.Markdown("", margin=(0, 10), width=CONTROLS)
        self.dictionary = pn.pane.Markdown("", margin=(0, 10), css_classes=["xv-concept-dictionary"])
        self.report_info = pn.pane.Markdown("No report yet: label a concept (or press Update).", margin=(0, 10),
                                            width=CONTROLS, css_classes=["xv-report-info"])
        self.download = pn.widgets.FileDownload(callback=self._download, disabled=True, width=190,
                                                filename="xcam-viz-report.html", label="Download the HTML report",
                                                css_classes=["xv-report-download"])
        buttons = {name: pn.widgets.Button.from_param(
            self.param[f"{name}_event"], width=75, margin=(5, 4), css_classes=[f"xv-concept-{name}"],
            color="primary" if name == "label" else "default") for name in ("undo", "clear", "label", "update")}
        size = {"width": CONTROLS}
        self.preset_select = pn.widgets.Select.from_param(self.param.preset, css_classes=["xv-concept-preset"], **size)
        self.concept_input = pn.widgets.TextInput.from_param(self.param.concept, css_classes=["xv-concept-name"],
                                                             placeholder="what the painted region shows", **size)
        self.sync_presets()
        controls = pn.Column(
            pn.widgets.Select.from_param(self.param.layer, css_classes=["xv-concept-layer"], **size),
            pn.widgets.IntSlider.from_param(self.param.width, **size), *self.painting.widgets(),
            pn.Row(buttons["undo"], buttons["clear"]),
            self.preset_select, self.concept_input,
            pn.widgets.FloatSlider.from_param(self.param.threshold, **size),
            pn.widgets.FloatSlider.from_param(self.param.coverage, **size), buttons["label"], self.status,
            width=CONTROLS + 20)
        h, w = self.grid.size
        montage_figure = image_figure((h, w), w, toolbar_location=None, tools="", css_classes=["xv-concept-montage"])
        montage_figure.image_rgba("image", x=0, y=0, dw=w, dh=h, source=self._montage)
        wrap = {"flex_wrap": "wrap", "sizing_mode": "stretch_width"}       # boxes go below each other when narrow
        self.report_panel = pn.Column(
            "### Report", self.report_info, pn.widgets.Checkbox.from_param(self.param.report_evidence),
            pn.widgets.Checkbox.from_param(self.param.report_faithfulness), pn.Row(buttons["update"], self.download),
            margin=0)
        self.layout = pn.FlexBox(
            self.painting.panel, controls, pn.Column(self.table_title, self.table, width=260),
            pn.Column("**Top images of the best units** · one row per unit, its mask in amber"
                      + (" on its best slice" if len(self.shape) > 2 else ""), pn.pane.Bokeh(montage_figure),
                      width=w + 20),
            pn.pane.Bokeh(self.scatter.figure),
            pn.Column(self.report_panel, self.dictionary, width=CONTROLS + 60), name=self.title, **wrap)
        selection.param.watch(lambda *_: self.sync_layers(), ["version"])
        selection.param.watch(lambda *_: self.refresh(), ["split", "sample", "version"])

    @property
    def key(self) -> tuple[str, str, str]:
        """(model version, split, layer) of the units on show."""
        return self.selection.version, self.selection.split, self.layer

    @property
    def ready(self) -> bool:
        """Whether the units on show are dissected (a split that grew, e.g. by uploads, needs it again)."""
        return self._ready == (self.key, len(self.workbench.splits[self.selection.split]))

    def sync_presets(self) -> None:
        """Offer the data sets' concept presets and the names used so far (none: type a name)."""
        names = self.workbench.concept_names()
        self.param.preset.objects = names
        if names and self.preset not in names:
            self.preset = names[0]
        self.preset_select.visible = bool(names)
        self.concept_input.name = "…or a new concept" if names else "Concept (type its name)"

    def sync_layers(self) -> None:
        """Offer the spatial layers of the selected model version, keeping the current one if it has it."""
        wb, version = self.workbench, self.selection.version
        options = layer_options(wb, version)
        self.param.layer.objects = options
        if self.layer not in options.values():
            self.layer = wb.default_layer(version)

    # --- the image and its region ---------------------------------------------------------------
    @param.depends("active", "layer", watch=True)
    def refresh(self) -> None:
        """Show the selected image (dropping the region of another image) and prepare the layer's units."""
        if not self.active:
            return
        sel = self.selection
        if self._shown != (sel.split, sel.sample):
            self._shown = (sel.split, sel.sample)
            self._image = self.workbench.image(sel.split, sel.sample)
            with param.parameterized.discard_events(self):
                self.strokes = []
            self.painting.clear()
            self.painting.show_strokes([])
            self._show_matches(None)
            self._draw_canvas()
        self._prepare()

    def receive(self, data: dict, where: tuple = ()) -> None:
        """Take the strokes a canvas's tool holds (those drawn `where`); new ones get the current width."""
        self.strokes = merge_strokes(self.strokes, data, "relevant", self.width, where)

    def roi(self) -> np.ndarray:
        """The painted region (H×W bool, row 0 at the top; a volume's D×H×W, spread to other slices as asked)."""
        return self.painting.spread(self._painted())

    def _painted(self) -> np.ndarray:
        return strokes_to_masks(self.strokes, self.shape, self.painting.rasterise)[0]

    def _moved(self) -> None:
        """A volume's planes moved or the spreads changed: each canvas holds its slice's strokes; a new region
        is matched, else only the planes are redrawn."""
        self.painting.show_strokes(self.strokes)
        if np.array_equal(self.roi(), self._roi):
            self.painting.draw(self._picture)
        else:
            self._strokes_changed()

    @param.depends("strokes", watch=True)
    def _strokes_changed(self) -> None:
        if self.strokes and self.ready:
            self.match()
        elif not self.strokes:
            self._show_matches(None)
        self._draw_canvas()

    def _draw_canvas(self) -> None:
        self._roi = self.roi()
        self._picture = composite(self._image, unit_layer(self._best, 0.45),
                                  mask_layer(self._roi, np.zeros(self.shape, bool), alpha=0.45))
        self.painting.draw(self._picture)

    @param.depends("undo_event", watch=True)
    def undo(self) -> None:
        """Remove the last spread to other slices, else the last stroke."""
        if not self.painting.undo():
            self.strokes = self.strokes[:-1]
            self.painting.show_strokes(self.strokes)

    @param.depends("clear_event", watch=True)
    def clear(self) -> None:
        """Drop every stroke (and spread)."""
        self.painting.clear()
        self.strokes = []
        self.painting.show_strokes(self.strokes)

    # --- units: dissection, matching, labelling ---------------------------------------------------
    def _prepare(self) -> None:
        """Dissect the layer (and embed its units) in the background unless that is done already."""
        key = self.key
        if self.ready:
            return
        self.phase = "dissecting"
        self.status.object = f"dissecting **{key[2]}** over the {key[1]} split…"

        def work():
            self.workbench.unit_embedding(*key)
            return key, len(self.workbench.units(*key).data)
        self.runner.submit("concepts-units", work, lambda done: self._prepared(*done))

    def _prepared(self, key, size: int) -> None:
        if key != self.key:                          # the layer or version changed meanwhile
            return
        self._ready, self.phase = (key, size), "ready"
        self.status.object = f"**{key[2]}**: {len(self.workbench.units(*key))} units. Paint over a region of the image."
        self._show_labels()
        if self.strokes:
            self.match()

    def match(self) -> None:
        """Rank the units against the painted region (`Units.match`, in the background); show the best ones."""
        key, sample, roi = self.key, self.selection.sample, self.roi()
        self.runner.submit("concepts-match", lambda: self._match(key, sample, roi),
                           lambda out: self._matched(key, sample, out))

    def _match(self, key, sample: str, roi: np.ndarray):
        """The ranking, the best unit's mask on the image and the montage of the best units' top images."""
        wb = self.workbench
        units = wb.units(*key)
        with wb.lock, one_thread():
            ranked = units.match(sample, roi)
            chosen = unit_views(units, ranked, sample, roi, BEST_UNITS, self.grid.cols)
        best_mask = chosen.views[chosen.best[0], sample][1] if chosen.best else np.zeros(self.shape, bool)
        return ranked, best_mask, unit_montage(wb, key[0], key[1], sample, chosen, self.grid)

    def _matched(self, key, sample: str, out) -> None:
        if key != self.key or sample != self.selection.sample:
            return
        self._show_matches(out)
        self._draw_canvas()

    @bokeh_update
    def _show_matches(self, out) -> None:
        """Fill the table, the montage and the best unit's mask (None: clear them)."""
        if out is None:
            self.matches, self._best = [], np.zeros(self.shape, bool)
            self.montage_image = np.full((*self.grid.size, 3), 245, np.uint8)
        else:
            ranked, self._best, self.montage_image = out
            self.rule = ranked.attrs["rule"]
            self.matches = [[int(u), round(float(v), 4)] for u, v in
                            zip(ranked.unit.values[:TABLE_ROWS], ranked.values[:TABLE_ROWS])]
        self._montage.data = {"image": [rgba(self.montage_image)]}
        self._fill_table()

    def _fill_table(self) -> None:
        current = self.workbench.labels.current(self.layer)
        score = RULE_NAMES[self.rule]
        self.table_title.object = f"**Units ranked by {score} with the region**" + (
            " (a region too large for any unit's IoU to pass)" if self.rule == "coverage" else "")
        self.table.object = pd.DataFrame([(u, v, current.get(u, ("",))[0]) for u, v in self.matches],
                                         columns=["unit", "IoU" if self.rule == "iou" else "share inside", "concept"])

    @param.depends("label_event", watch=True)
    def label(self) -> None:
        """Give the chosen name to every unit whose score with the region passes the threshold of the rule
        `Units.match` picks (IoU; the share of the unit's mask inside, for a large region)."""
        key, sample, roi = self.key, self.selection.sample, self.roi()
        name, thresholds = (self.concept or self.preset or "").strip(), {"iou": self.threshold,
                                                                         "coverage": self.coverage}
        wb = self.workbench

        def work():
            units = wb.units(*key)
            with wb.lock, one_thread():
                rule = units.match(sample, roi).attrs["rule"]
                return rule, units.label(sample, roi, name, threshold=thresholds[rule], rule=rule)
        self.runner.submit("concepts-label", work, lambda out: self._labelled(key, name, *out, thresholds))

    def _labelled(self, key, name: str, rule: str, chosen: list[int], thresholds: dict) -> None:
        if not chosen:
            notify(f"'{name}': no unit of {key[2]} passes {RULE_NAMES[rule]} {thresholds[rule]:.2f} with this "
                   "region (or each has a better match already): paint the region more tightly or lower the threshold",
                   "warning", 5000)
            return
        notify(f"{len(chosen)} unit{'s' * (len(chosen) != 1)} of {key[2]} labelled '{name}'", "success", 3000)
        self.sync_presets()
        self.preset, self.concept = name, ""
        self._show_labels()
        self._fill_table()
        self.build_report()

    # --- labels: scatter, dictionary, report ------------------------------------------------------
    def _show_labels(self) -> None:
        """Recolour the scatter and rewrite the concept dictionary from the stored labels."""
        if not self.ready:
            return
        current = self.workbench.labels.current(self.layer)
        self.scatter.show(self.workbench.unit_embedding(*self.key), current, self.workbench.concept_names())
        self.labelled = dict(Counter(name for name, _ in current.values()))
        rows = [f"| {name} | {count} | {', '.join(str(u) for u, (n, _) in sorted(current.items()) if n == name)} |"
                for name, count in sorted(self.labelled.items())]
        header = f"**Concept dictionary** · {self.layer}\n\n| concept | units | which |\n|---|---|---|\n"
        self.dictionary.object = header + "\n".join(rows) if rows else f"No concept labelled in {self.layer} yet."

    @param.depends("update_event", watch=True)
    def build_report(self) -> None:
        """Rebuild the report (xv.report on a copy of the model, so other sessions' maps do not wait)."""
        from ..report import report

        key, sample, wb = self.key, self.selection.sample, self.workbench
        evidence = "efficient" if self.report_evidence else None
        self.report_info.object = f"building report v{self.report_version + 1} of model {key[0]}…"

        def work():
            start = time.perf_counter()
            with wb.lock:
                model = copy.deepcopy(wb.model(key[0]))
            data = wb.splits[key[1]]
            ids = set(data.ids)
            labelled = [s for s in reversed(wb.labels.history().sample_id.values.tolist()) if s in ids]
            samples = list(dict.fromkeys([sample, *labelled, *data.ids]))[:REPORT_IMAGES]
            rep = report(model, data, samples=samples, methods=(wb.methods(key[0])[0],), layers=(key[2],),
                         evidence=evidence, splits=wb.splits, feedback=wb.feedback, units=wb.units(*key),
                         previous=self.report, model_version=key[0],
                         faithfulness=self.report_faithfulness)
            with tempfile.TemporaryDirectory() as tmp:
                html = rep.save(Path(tmp) / "report.html").read_bytes()
            return rep, html, time.perf_counter() - start
        self.runner.submit("concepts-report", work, lambda out: self._reported(*out))

    def _download(self) -> io.BytesIO:
        """The report's HTML for the download button (and a notification that it was sent)."""
        notify(f"downloading {self.download.filename}", "success", 3000)
        return io.BytesIO(self._html)

    def _reported(self, rep, html: bytes, seconds: float) -> None:
        self.report, self._html = rep, html
        self.download.filename = f"xcam-viz-report-v{rep.version}-model-{rep.overview.attrs['model_version']}.html"
        self.download.disabled = False
        self.report_info.object = (f"**{rep.title.capitalize()}** ({rep.images.sizes['sample']} images, built in "
                                   f"{seconds:.0f} s)\n\nWhat is new: " + "; ".join(rep.changes))
        self.report_version = rep.version

    def watched(self):
        return super().watched() + self.painting.watched()

    def snapshot(self) -> dict:
        """What the tab shows, for the state probe (browser tests)."""
        return {"layer": self.layer, "phase": self.phase, "strokes": len(self.strokes), "matches": self.matches[:5],
                "labelled": self.labelled, "scatter": dict(Counter(self.scatter.labels)),
                "report": self.report_version, "frame": list(self.canvas.frame), **self.painting.snapshot()}

