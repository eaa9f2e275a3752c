"""An image to draw on: an RGB plot under a freehand-draw tool (the brush and the concepts tab use it).

Bokeh syncs a stroke when the mouse is released: the tool then holds every stroke drawn so far, in
order. `merge_strokes` turns that into `Stroke`s, keeping the kind and width each had when drawn.
"""
from __future__ import annotations

from typing import Callable

import holoviews as hv
import numpy as np
import panel as pn

from .raster import Stroke


class FreehandCanvas:
    """The image (fed with `show`) and the strokes' paths; `on_draw(data)` gets the tool's data
    ({"xs": [...], "ys": [...]}, plot coordinates) after every stroke."""

    def __init__(self, shape: tuple[int, int], on_draw: Callable[[dict], None], plot_width: int = 400,
                 css_class: str = ""):
        h, w = self.shape = shape
        self._image = hv.streams.Pipe(data=np.zeros((h, w, 3), np.float32))
        self._paths = hv.streams.Pipe(data=[])
        paths = hv.DynamicMap(lambda data: hv.Path(data).opts(color="white", line_width=2, alpha=0.9,
                                                             active_tools=["freehand_draw"]), streams=[self._paths])
        self.draw = hv.streams.FreehandDraw(source=paths, num_objects=0)
        self.draw.param.watch(lambda e: on_draw(e.new), "data")
        height = int(plot_width * h / w)
        self.frame = (plot_width, height)          # image area of the plot, at its top left (border 0)
        view = hv.DynamicMap(lambda data: hv.RGB(data, bounds=(0, 0, w, h)).opts(
            frame_width=plot_width, frame_height=height, xaxis=None, yaxis=None, border=0), streams=[self._image])
        self.plot = view * paths
        self.pane = pn.pane.HoloViews(self.plot, css_classes=[css_class], margin=(5, 5), linked_axes=False)

    def show(self, rgb: np.ndarray) -> None:
        """Replace the image (H×W×3 float in [0, 1])."""
        self._image.send(rgb)

    def show_strokes(self, strokes: list[Stroke]) -> None:
        """Make the tool hold exactly these strokes (after an undo or a clear)."""
        self._paths.send([np.column_stack([s.xs, s.ys]) for s in strokes])


def merge_strokes(strokes: list[Stroke], data: dict, kind: str, width: float) -> list[Stroke]:
    """The strokes the tool holds (index i is stroke i): known ones get their new points and keep their
    kind and width; new ones get `kind` and `width`."""
    merged = list(strokes[:len(data.get("xs", []))])
    for i, (x, y) in enumerate(zip(data.get("xs", []), data.get("ys", []))):
        if i < len(merged):
            merged[i].xs, merged[i].ys = list(x), list(y)
        else:
            merged.append(Stroke(list(x), list(y), kind, float(width)))
    return merged
