"""Brush feedback: paint where the model should look (relevant) and what it must ignore (irrelevant).

Strokes come from a `FreehandCanvas` (Bokeh syncs a stroke when the mouse is released), get the
brush kind and width current at that moment, and are rasterised to masks aligned with the image's
pixels (a volume's voxels: any plane, any slice; painting.py); Save writes the masks to the shared
feedback store.
"""
from __future__ import annotations

import numpy as np
import panel as pn
import param

from ..feedback import BRUSH_WIDTH, union_masks
from .freehand import merge_strokes
from .painting import PAINTINGS
from .raster import Stroke, composite, mask_layer, strokes_to_masks
from .tab import Tab
from .tasks import notify

CONTROLS = 230


class BrushFeedback(Tab):
    """The Feedback tab: paint, erase, undo, clear and save feedback for the selected image; saved
    feedback is shown."""

    title = param.String(default="Feedback", constant=True)
    attribute = "brush"
    probed = ("strokes",)

    mode = param.Selector(objects=["relevant", "irrelevant", "erase"], default="relevant", label="Brush")
    width = param.Integer(default=BRUSH_WIDTH, bounds=(1, 32), label="Brush width (image pixels)")
    label = param.Selector(objects={"(no correction)": -1}, default=-1, label="Corrected class (optional)")
    author = param.String(default="analyst", label="Author")
    strokes = param.List(default=[], item_type=Stroke, doc="pending (unsaved) strokes, oldest first")
    undo_event = param.Event(label="Undo")
    clear_event = param.Event(label="Clear")
    save_event = param.Event(label="Save")

    def __init__(self, session, plot_width: int = 320, **params):
        super().__init__(session, **params)
        workbench, selection = self.workbench, self.selection
        self.class_names = workbench.class_names()
        self.param.label.objects = {"(no correction)": -1, **{n: i for i, n in enumerate(self.class_names)}}
        self.shape = tuple(workbench.input_shape[1:])
        self._image: np.ndarray | None = None
        self._saved = np.zeros((*self.shape, 4), np.float32)
        self._key, self._stale = None, False
        self.painting = PAINTINGS[len(self.shape)](self.shape, self.receive, plot_width, self._moved, self._painted)
        self.canvas, self.frame = self.painting.canvas, self.painting.frame
        self.summary = pn.pane.Markdown("", margin=(0, 10), width=CONTROLS)
        buttons = [pn.widgets.Button.from_param(self.param[f"{name}_event"], color=kind, width=70,
                                                margin=(5, 3), css_classes=[f"xv-{name}"])
                   for name, kind in (("undo", "default"), ("clear", "default"), ("save", "primary"))]
        controls = pn.Column(
            pn.widgets.RadioButtonGroup.from_param(self.param.mode, color="light", width=CONTROLS,
                                                   css_classes=["xv-brush-mode"]),
            pn.widgets.IntSlider.from_param(self.param.width, width=CONTROLS),
            pn.widgets.Select.from_param(self.param.label, width=CONTROLS),
            pn.widgets.TextInput.from_param(self.param.author, width=CONTROLS),
            *self.painting.widgets(), pn.Row(*buttons), self.summary, width=CONTROLS + 10)
        self.layout = pn.FlexBox(self.painting.panel, controls, name=self.title, flex_wrap="wrap",
                                 sizing_mode="stretch_width")       # the controls go below the canvas when narrow
        selection.param.watch(lambda *_: self.load(), ["split", "sample", "revision"])
        self.load()

    # --- strokes ----------------------------------------------------------------------------------
    def receive(self, data: dict, where: tuple = ()) -> None:
        """Take the strokes a canvas's tool holds (those drawn `where`); new ones get the current brush."""
        self.strokes = merge_strokes(self.strokes, data, self.mode, self.width, where)

    def masks(self) -> tuple[np.ndarray, np.ndarray]:
        """(relevant, irrelevant) bool masks (H×W, row 0 at the top; volumes D×H×W) painted by the pending
        strokes, spread to other slices as asked."""
        return tuple(self.painting.spread(mask) for mask in self._stroked())

    def _stroked(self) -> tuple[np.ndarray, np.ndarray]:
        return strokes_to_masks(self.strokes, self.shape, self.painting.rasterise)

    def _painted(self) -> np.ndarray:
        relevant, irrelevant = self._stroked()
        return relevant | irrelevant

    def _moved(self) -> None:
        """The painted slices or the spreads changed: each canvas holds its slice's strokes, redrawn."""
        self.painting.show_strokes(self.strokes)
        self._show_pending()

    @param.depends("strokes", watch=True)
    def _show_pending(self) -> None:
        if self.workbench.is_segmenter(self.selection.version):
            self.selection.painted = self.masks()[0]
        self._redraw()

    def _redraw(self) -> None:
        """Draw image, saved and pending masks; while the view is off screen, only remember to."""
        self._stale = not self.active
        if self._stale:
            return
        if self._image is None:
            sel = self.selection
            self._image = self.workbench.image(sel.split, sel.sample)
            self._saved = mask_layer(*self.saved_masks(), alpha=0.3)
        self.painting.draw(composite(self._image, self._saved, mask_layer(*self.masks(), alpha=0.55)))
        self._describe()

    @param.depends("active", watch=True)
    def _shown(self) -> None:
        if self.active and self._stale:
            self._redraw()

    @param.depends("undo_event", watch=True)
    def undo(self) -> None:
        """Remove the last spread to other slices, else the last pending stroke; with none pending, the last
        saved annotation of the image."""
        if self.painting.undo():
            return
        if self.strokes:
            self.strokes = self.strokes[:-1]
            self.painting.show_strokes(self.strokes)
        elif self.workbench.feedback.annotations(self.selection.sample):
            self.workbench.feedback.undo(self.selection.sample)
            self.selection.revision += 1
        else:
            notify("nothing to undo for this image", "info", 2500)

    @param.depends("clear_event", watch=True)
    def clear(self) -> None:
        """Drop every pending stroke (and spread)."""
        self.painting.clear()
        self.strokes = []
        self.painting.show_strokes(self.strokes)

    @param.depends("save_event", watch=True)
    def save(self) -> None:
        """Write the pending masks to the feedback store as one annotation of the selected image."""
        relevant, irrelevant = self.masks()
        label = None if self.label < 0 else self.label
        if not relevant.any() and not irrelevant.any() and label is None:
            notify("paint a relevant or irrelevant region (or pick a corrected class) before saving", "warning", 3000)
            return
        sample = self.selection.sample
        self.workbench.feedback.add(sample, relevant=relevant if relevant.any() else None,
                                    irrelevant=irrelevant if irrelevant.any() else None, label=label,
                                    author=self.author or "analyst", model_version=self.selection.version)
        self.painting.clear()
        self.strokes = []
        self.painting.show_strokes(self.strokes)
        self.selection.revision += 1
        notify(f"feedback saved for {sample}", "success", 2500)

    # --- the selected image -----------------------------------------------------------------------
    def load(self) -> None:
        """Show the selected image and its saved feedback; pending strokes of another image are dropped."""
        sel = self.selection
        key = (sel.split, sel.sample)
        if self._key != key:
            if self.strokes:
                notify("unsaved strokes were discarded", "info", 2500)
                self.painting.show_strokes([])
            self.painting.clear()
            self._key = key
            with param.parameterized.discard_events(self):
                self.strokes = []
        self._image = None                             # (re)loaded with the saved masks when drawn
        self._redraw()

    def saved_masks(self) -> tuple[np.ndarray, np.ndarray]:
        """Union of the relevant and of the irrelevant masks saved for the selected image."""
        return union_masks(self.workbench.feedback.annotations(self.selection.sample), self.shape)

    def _describe(self) -> None:
        saved = self.workbench.feedback.annotations(self.selection.sample)
        relevant, irrelevant = self.masks()
        lines = [f"**Pending:** {len(self.strokes)} strokes · {int(relevant.sum())} px relevant · "
                 f"{int(irrelevant.sum())} px irrelevant",
                 f"**Saved for this image:** {len(saved)} annotation{'s' * (len(saved) != 1)}"]
        lines += [f"- {a.author}: {_px(a.relevant)} px relevant, {_px(a.irrelevant)} px irrelevant"
                  + ("" if a.label is None else f" · class *{self.class_names[a.label]}*") for a in saved[-5:]]
        self.summary.object = ("\n\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:])
                               + "\n\nGreen: relevant · red: irrelevant (saved ones paler)")

    def watched(self):
        return super().watched() + self.painting.watched()

    def snapshot(self) -> dict:
        """The pending strokes and where the image lies on the canvas (page pixels)."""
        return {"strokes": len(self.strokes), "brush_frame": list(self.frame), **self.painting.snapshot()}


def _px(mask) -> int:
    return 0 if mask is None else int(np.asarray(mask).sum())
