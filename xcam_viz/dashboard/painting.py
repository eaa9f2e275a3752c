"""Where the brush paints: the whole image, or any plane of a volume (the Feedback and Concepts tabs draw with either).

`ImagePainting` is one canvas over the image. The Concepts tab paints its region with the same classes
(`css` names their canvases apart). `VolumePainting` is one canvas per plane (`volume.PLANES`)
through its own point (slice sliders): a stroke keeps the slice it was drawn on and is rasterised into
the D×H×W mask there; the pending masks can be spread to the k slices on each side (`xv.feedback.extend`)
or filled between painted slices (`xv.feedback.interpolate`). Every plane shows the masks' slice through
the point, so a stroke's 3-D extent shows on all three. Canvases draw pixels square, indices growing to
the right and upwards, as the Explain tab's planes do.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import panel as pn
import param

from ..feedback import extend, interpolate
from .freehand import FreehandCanvas
from .raster import Stroke, stroke_mask
from .tasks import notify
from .volume import AXES, MIN_PLANE, PLANES, Crosshair


def spread_mask(mask: np.ndarray, spreads: list, strict: bool = False) -> np.ndarray:
    """`mask` with spreads (("extend", k, axis) or ("interpolate", 0, axis)) applied in order; one that does not
    apply (an empty mask, one painted slice to fill between) is passed over, or raises when `strict`."""
    for name, reach, axis in spreads:
        try:
            mask = extend(mask, reach, axis) if name == "extend" else interpolate(mask, axis)
        except ValueError:
            if strict:
                raise
    return np.asarray(mask, bool)


class ImagePainting:
    """One canvas over the image; strokes are drawn `where` ()."""

    def __init__(self, shape: tuple[int, int], receive: Callable[[dict, tuple], None], width: int, on_change,
                 painted, css: str = "xv-brush"):
        self.shape = shape
        self.canvas = FreehandCanvas(shape, lambda data: receive(data, ()), width, css_class=css)
        self.frame = self.canvas.frame
        self.panel = self.canvas.pane

    def widgets(self) -> list:
        return []

    def rasterise(self, stroke: Stroke) -> np.ndarray:
        return stroke_mask(stroke.xs, stroke.ys, stroke.width, self.shape)

    def spread(self, mask: np.ndarray) -> np.ndarray:
        return mask

    def draw(self, picture: np.ndarray) -> None:
        """Show the composited picture (H×W×3 float)."""
        self.canvas.show(picture)

    def show_strokes(self, strokes: list[Stroke]) -> None:
        self.canvas.show_strokes(strokes)

    def undo(self) -> bool:
        """Undo a spread (none on images): whether there was one."""
        return False

    def clear(self) -> None:
        """Nothing but strokes is pending on an image."""

    def snapshot(self) -> dict:
        return {}

    def watched(self) -> list:
        return []


class VolumePainting(Crosshair):
    """Three canvases, one per plane through (z, y, x); spreads of the pending masks along a plane's axis.
    `painted()` is what the pending strokes paint (relevant or irrelevant), `on_change()` redraws."""

    along = param.Selector(objects=[p.name for p in PLANES], default=PLANES[0].name, label="Slices of")
    reach = param.Integer(default=2, bounds=(1, 32), label="k (slices on each side)")
    spreads = param.List(default=[], doc="spreads of the pending masks, in order: (operation, k, axis)")
    extend_event = param.Event(label="Extend to ±k slices")
    fill_event = param.Event(label="Fill between painted slices")

    def __init__(self, shape: tuple[int, int, int], receive: Callable[[dict, tuple], None], width: int,
                 on_change: Callable[[], None], painted: Callable[[], np.ndarray], css: str = "xv-brush"):
        super().__init__(shape)
        self.painted, self.css = painted, css
        side = max(width, MIN_PLANE) / max(shape)
        self.canvases, columns = {}, []
        for plane in PLANES:
            grid = (shape[plane.rows], shape[plane.cols])
            canvas = FreehandCanvas(grid, lambda data, p=plane: receive(data, self.where(p)), round(grid[1] * side),
                                    css_class=f"{css}-{plane.name}")
            self.canvases[plane.name] = canvas
            slider = self.slider(plane, canvas.frame[0], f"{css}-slice-{plane.name}")
            columns.append(pn.Column(pn.pane.HTML(plane.name, margin=(0, 5)), canvas.pane, slider))
        self.canvas = self.canvases[PLANES[0].name]
        self.frame = self.canvas.frame
        self.panel = pn.FlexBox(*columns, flex_wrap="wrap")
        self.param.watch(lambda *_: on_change(), [*AXES, "spreads"])

    def where(self, plane) -> tuple[int, int]:
        """The slice a stroke on `plane` is drawn on now: (axis, index)."""
        return plane.axis, self.point[plane.axis]

    def widgets(self) -> list:
        size = {"width": 230}
        buttons = [pn.widgets.Button.from_param(self.param[f"{name}_event"], css_classes=[f"xv-{name}",
                                                f"{self.css}-{name}"], **size) for name in ("extend", "fill")]
        return [pn.widgets.Select.from_param(self.param.along, **size),
                pn.widgets.IntSlider.from_param(self.param.reach, **size), *buttons]

    def rasterise(self, stroke: Stroke) -> np.ndarray:
        """The D×H×W mask of a stroke on its slice (canvas rows go down, indices up)."""
        axis, index = stroke.where
        plane = PLANES[axis]
        grid = (self.shape[plane.rows], self.shape[plane.cols])
        mask = np.zeros(self.shape, bool)
        at = [slice(None)] * 3
        at[axis] = index
        mask[tuple(at)] = stroke_mask(stroke.xs, stroke.ys, stroke.width, grid)[::-1]
        return mask

    def spread(self, mask: np.ndarray) -> np.ndarray:
        """The mask with the pending spreads applied in order."""
        return spread_mask(mask, self.spreads)

    @param.depends("extend_event", watch=True)
    def _extend(self) -> None:
        self._add(("extend", self.reach, self._axis()))

    @param.depends("fill_event", watch=True)
    def _fill(self) -> None:
        self._add(("interpolate", 0, self._axis()))

    def _add(self, spread: tuple) -> None:
        """Add a spread if it applies to what is painted (else say why)."""
        try:
            spread_mask(self.painted(), [*self.spreads, spread], strict=True)
        except ValueError as err:
            notify(str(err), "warning", 5000)
            return
        self.spreads = [*self.spreads, spread]

    def _axis(self) -> int:
        return next(p.axis for p in PLANES if p.name == self.along)

    def draw(self, picture: np.ndarray) -> None:
        """Show each plane's slice of the composited picture (D×H×W×3 float) through the point."""
        for plane in PLANES:
            self.canvases[plane.name].show(plane.cut(picture, self.point)[::-1])

    def show_strokes(self, strokes: list[Stroke]) -> None:
        """Each canvas holds the strokes of the slice it shows."""
        for plane in PLANES:
            self.canvases[plane.name].show_strokes([s for s in strokes if s.where == self.where(plane)])

    def undo(self) -> bool:
        """Undo the last spread: whether there was one."""
        if not self.spreads:
            return False
        self.spreads = self.spreads[:-1]
        return True

    def clear(self) -> None:
        if self.spreads:
            self.spreads = []

    def watched(self) -> list:
        return [(self, [*AXES, "spreads"])]

    def snapshot(self) -> dict:
        return {"brush_point": list(self.point), "spreads": [list(s) for s in self.spreads],
                "brush_frames": {name: list(c.frame) for name, c in self.canvases.items()}}


PAINTINGS = {2: ImagePainting, 3: VolumePainting}     # spatial dims: where the brush paints
