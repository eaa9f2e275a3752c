"""An image to draw on: a Bokeh figure with an RGBA image under a freehand-draw tool (the brush and
the concepts tab use it).

Bokeh syncs a stroke when the mouse is released: the tool's data source then holds every stroke drawn
so far, in order. `merge_strokes` turns that into `Stroke`s, keeping the kind and width each had when
drawn. The image and the strokes live in separate sources, so a new image never resets the strokes
under the user's pen.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import panel as pn
from bokeh.models import ColumnDataSource, FreehandDrawTool

from .mapview import image_figure, rgba
from .raster import Stroke
from .tasks import bokeh_update


class FreehandCanvas:
    """The image (fed with `show`) and the strokes' paths; `on_draw(data)` gets the tool's data
    ({"xs": [...], "ys": [...]}, plot coordinates) after every stroke."""

    def __init__(self, shape: tuple[int, int], on_draw: Callable[[dict], None], plot_width: int = 400,
                 css_class: str = ""):
        h, w = self.shape = shape
        self.frame = (plot_width, int(plot_width * h / w))    # image area of the plot, at its top left
        fig = image_figure(shape, plot_width, tools="", toolbar_location=None, css_classes=[css_class])
        self._image = ColumnDataSource({"image": [rgba(np.zeros((h, w, 3), np.uint8))]})
        fig.image_rgba("image", x=0, y=0, dw=w, dh=h, source=self._image)
        self.paths = ColumnDataSource({"xs": [], "ys": []})
        lines = fig.multi_line("xs", "ys", source=self.paths, line_color="white", line_width=2, line_alpha=0.9)
        tool = FreehandDrawTool(renderers=[lines], num_objects=0)
        fig.add_tools(tool)
        fig.toolbar.active_drag = tool
        self._on_draw, self._sending = on_draw, False
        self.paths.on_change("data", lambda _attr, _old, new: self.drawn(dict(new)))
        self.pane = pn.pane.Bokeh(fig, margin=(5, 5))

    def drawn(self, data: dict) -> None:
        """The strokes the tool holds changed (in the browser, or in a test)."""
        if not self._sending:
            self._on_draw(data)

    @bokeh_update
    def show(self, rgb: np.ndarray) -> None:
        """Replace the image (H×W×3 float in [0, 1])."""
        self._image.data = {"image": [rgba(rgb)]}

    @bokeh_update
    def show_strokes(self, strokes: list[Stroke]) -> None:
        """Make the tool hold exactly these strokes (after an undo, a clear or a save).

        Clearing a tool that holds nothing sends nothing: a reset that reached the browser while the
        user had begun a new stroke would take that stroke from under the tool (a BokehJS error).
        """
        if not strokes and not len(self.paths.data["xs"]):
            return
        self._sending = True
        try:
            self.paths.data = {"xs": [list(s.xs) for s in strokes], "ys": [list(s.ys) for s in strokes]}
        finally:
            self._sending = False


def merge_strokes(strokes: list[Stroke], data: dict, kind: str, width: float, where: tuple = ()) -> list[Stroke]:
    """The strokes once the tool drawing `where` holds `data` (its index i is the i-th stroke drawn there): those
    drawn elsewhere stay; known ones get their new points and keep their kind and width; new ones get `kind`,
    `width` and `where`."""
    others = [s for s in strokes if s.where != where]
    merged = [s for s in strokes if s.where == where][:len(data.get("xs", []))]
    for i, (x, y) in enumerate(zip(data.get("xs", []), data.get("ys", []))):
        if i < len(merged):
            merged[i].xs, merged[i].ys = list(x), list(y)
        else:
            merged.append(Stroke(list(x), list(y), kind, float(width), where))
    return others + merged
