"""Volumes in the dashboard: three orthogonal planes through one crosshair, as radiologists' viewers show them.

`VolumeScene` is what the two views of the Explain tab share: the selected volume as 8-bit voxels (windowed
once per image, so a slice change only slices), the crosshair point, the display window and the planes'
image sources. A `VolumeView` draws one map over the three planes; the map's colours, opacity and threshold
are the 2-D view's (`MapLayer`). A plane is one entry of `PLANES`.

Plot coordinates are millimetres: voxel i of an axis with spacing s covers [i·s, (i+1)·s], indices growing
to the right and upwards (axial: y up; coronal and sagittal: z up), so anisotropic voxels are drawn to
scale. The window changes in the browser (a JS callback moves the grey colour mapper's low and high; no
voxel is sent again); the server follows the sliders' values.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import panel as pn
import param
from bokeh.events import Tap
from bokeh.models import ColorBar, ColumnDataSource, HoverTool, LinearColorMapper, Span

from ..data.windows import WINDOWS, Percentiles, window_bounds
from ..spatial import hottest_point
from .mapview import Display, MapLayer, image_figure, palette
from .tasks import bokeh_update, notify

AXES = ("z", "y", "x")
MIN_PLANE = 256                 # px: the longer side of the largest plane
CROSSHAIR = "#ffd400"
GREYS = 255                     # the volume travels as uint8 0..255

# the grey mapper's range for the sliders' window, in 8-bit units (the volume's 0..255 are `low`..`high`)
WINDOW_JS = """
const scale = 255 / (high - low);
mapper.low = (level.value - width.value / 2 - low) * scale;
mapper.high = (level.value + width.value / 2 - low) * scale;
"""
PRESET_JS = """
const chosen = presets[cb_obj.value];
if (chosen) { level.value = chosen[0]; width.value = chosen[1]; }
"""


@dataclass(frozen=True)
class Plane:
    """A plane through the volume: it cuts `axis` (0 z, 1 y, 2 x) at the crosshair and shows the other two,
    `rows` going up and `cols` going right."""

    name: str
    axis: int

    @property
    def rows(self) -> int:
        return min(a for a in range(3) if a != self.axis)

    @property
    def cols(self) -> int:
        return max(a for a in range(3) if a != self.axis)

    def cut(self, volume: np.ndarray, point: tuple[int, int, int]) -> np.ndarray:
        """The slice of a D×H×W array through `point` (rows × cols)."""
        return np.take(volume, point[self.axis], axis=self.axis)


PLANES = (Plane("axial", 0), Plane("coronal", 1), Plane("sagittal", 2))


class Crosshair(param.Parameterized):
    """A voxel (z, y, x) of a D×H×W grid, the slices the planes show; it starts at the centre."""

    z = param.Integer(default=0, bounds=(0, None), label="Axial slice (z)")
    y = param.Integer(default=0, bounds=(0, None), label="Coronal slice (y)")
    x = param.Integer(default=0, bounds=(0, None), label="Sagittal slice (x)")

    def __init__(self, shape: tuple[int, int, int], **params):
        super().__init__(**params)
        self.shape = tuple(shape)
        for axis, n in zip(AXES, self.shape):
            self.param[axis].bounds = (0, n - 1)
        with param.parameterized.discard_events(self):
            self.param.update(**{axis: n // 2 for axis, n in zip(AXES, self.shape)})

    @property
    def point(self) -> tuple[int, int, int]:
        return self.z, self.y, self.x

    def move(self, point) -> None:
        """Put the crosshair on voxel (z, y, x)."""
        self.param.update(**{axis: int(v) for axis, v in zip(AXES, point)})

    def slider(self, plane: Plane, width: int, css_class: str) -> pn.widgets.IntSlider:
        """The slice slider of a plane."""
        return pn.widgets.IntSlider.from_param(self.param[AXES[plane.axis]], width=width, margin=(0, 5),
                                               css_classes=[css_class])


class VolumeScene(Crosshair):
    """The selected volume, the crosshair (z, y, x voxel indices) and the window, shared by the views.

    The window is (level, width) in the data's units: Hounsfield units when the data was loaded through a
    fixed window (`xv.data.WINDOWS`' CT presets are then offered), else the loaded intensities 0..1. It can
    only show what the loaded window kept.
    """

    preset = param.Selector(objects=[], label="Window")
    level = param.Number(default=0.5, label="Window level")
    width = param.Number(default=1.0, label="Window width")
    hottest = param.Event(label="Go to the hottest point")

    kind = "volume"

    def __init__(self, workbench, **params):
        super().__init__(workbench.input_shape[1:], **params)
        self.spacing = workbench.spacing
        self.loaded = workbench.window
        bounds = window_bounds(self.loaded)
        self.low, self.high = bounds or (0.0, 1.0)       # the values the volume's 0 and 255 stand for
        self.presets = {f"as loaded ({self.loaded})": ((self.low + self.high) / 2, self.high - self.low)}
        if bounds is not None:                           # per-volume (percentile) presets have no fixed unit
            self.presets.update({name: w for name, w in WINDOWS.items() if not isinstance(w, Percentiles)})
        self._window_bounds()
        self.param.preset.objects = list(self.presets)
        self.key, self.shown, self.volume = None, (0, 0, 0), np.zeros(self.shape, np.uint8)
        self.mapper = LinearColorMapper(palette=palette("gray"), low=0, high=GREYS)
        self.views: list[VolumeView] = []
        self._hottest: tuple[str, tuple] = ("", ())
        with param.parameterized.discard_events(self):
            self.preset = self.param.preset.objects[0]
        self.sources = {p.name: ColumnDataSource({"image": [p.cut(self.volume, self.point)]}) for p in PLANES}
        self._preset()
        self._window()
        self.param.watch(self._moved, list(AXES))

    def _window_bounds(self) -> None:
        """Slider ranges that hold the loaded range (and as much again on each side) and every preset."""
        span = self.high - self.low
        levels, widths = zip(*self.presets.values())
        self.param.level.bounds = (min(self.low - span, *levels), max(self.high + span, *levels))
        self.param.width.bounds = (min(span / 100, *widths), max(2 * span, *widths))
        self.param.level.step = self.param.width.step = span / 200

    def click(self, plane: Plane, x: float | None, y: float | None) -> None:
        """A click at plot point (x, y) mm of a plane moves the crosshair there (the other planes' slices)."""
        if x is not None and y is not None:
            self.param.update(**{AXES[plane.rows]: self.index(plane.rows, y),
                                 AXES[plane.cols]: self.index(plane.cols, x)})

    def index(self, axis: int, mm: float) -> int:
        """The voxel index along `axis` at `mm` from the volume's edge (clipped to the volume)."""
        return int(np.clip(np.floor(mm / self.spacing[axis]), 0, self.shape[axis] - 1))

    @bokeh_update
    def show(self, key, volume: np.ndarray) -> None:
        """Show `volume` (uint8 D×H×W) unless `key` names the one on show; the crosshair stays."""
        if key == self.key and key is not None:
            return
        self.key, self.shown, self.volume = key, tuple(volume.shape), volume
        for plane in PLANES:
            self.sources[plane.name].data = {"image": [plane.cut(volume, self.point)]}

    @bokeh_update
    def _moved(self, *events) -> None:
        axes = {AXES.index(event.name) for event in events}
        for plane in PLANES:
            if plane.axis in axes:
                self.sources[plane.name].data = {"image": [plane.cut(self.volume, self.point)]}
        for view in self.views:
            view.moved(axes)

    @param.depends("preset", watch=True)
    def _preset(self) -> None:
        level, width = self.presets[self.preset]
        self.param.update(level=level, width=width)

    @param.depends("level", "width", watch=True)
    @bokeh_update
    def _window(self) -> None:
        """What the browser's JS callback does (WINDOW_JS), for changes made on the server."""
        scale = GREYS / (self.high - self.low)
        self.mapper.update(low=(self.level - self.width / 2 - self.low) * scale,
                           high=(self.level + self.width / 2 - self.low) * scale)

    def hottest_point(self) -> tuple[int, int, int] | None:
        """The voxel (z, y, x) of the first view's map maximum (`hottest_point`; None without a map); found once
        per map."""
        result = self.views[0].result if self.views else None
        if result is None:
            return None
        if self._hottest[0] != result.digest:
            self._hottest = (result.digest, hottest_point(result.values))
        return self._hottest[1]

    @param.depends("hottest", watch=True)
    def go_hottest(self) -> None:
        """Move the crosshair to the maximum of the first view's map."""
        point = self.hottest_point()
        if point is None:
            notify("there is no map to find the hottest point of", "info", 2500)
            return
        self.move(point)

    def widgets(self) -> list:
        """The window (preset, level, width; changed in the browser) and the hottest-point button."""
        size = {"width": 180, "margin": (5, 8)}
        preset = pn.widgets.Select.from_param(self.param.preset, css_classes=["xv-window"], **size)
        level = pn.widgets.FloatSlider.from_param(self.param.level, css_classes=["xv-level"], format="0[.]00", **size)
        width = pn.widgets.FloatSlider.from_param(self.param.width, css_classes=["xv-width"], format="0[.]00", **size)
        args = {"mapper": self.mapper, "level": level, "width": width, "low": self.low, "high": self.high}
        level.jscallback(value=WINDOW_JS, args=args)
        width.jscallback(value=WINDOW_JS, args=args)
        preset.jscallback(value=PRESET_JS, args={"presets": {k: list(v) for k, v in self.presets.items()},
                                                 "level": level, "width": width})
        hottest = pn.widgets.Button.from_param(self.param.hottest, css_classes=["xv-hottest"], width=190,
                                               margin=(24, 8, 5, 8))
        return [pn.FlexBox(preset, level, width, hottest, flex_wrap="wrap", sizing_mode="stretch_width")]

    def describe(self) -> str:
        """The voxel size and the window the data was loaded with, for the info line."""
        sz, sy, sx = self.spacing
        return f" · voxels {sx:.3g}×{sy:.3g}×{sz:.3g} mm · loaded with window {self.loaded}"

    def snapshot(self) -> dict:
        hottest = self.hottest_point()
        return {"volume": {"crosshair": list(self.point), "window": [self.level, self.width], "preset": self.preset,
                           "hottest": list(hottest) if hottest else None, "grid": list(self.shape),
                           "spacing": list(self.spacing),
                           "slices": {p.name: list(self.sources[p.name].data["image"][0].shape) for p in PLANES}}}

    def watched(self) -> list:
        return [(self, [*AXES, "level", "width", "preset"])]


class VolumeView(MapLayer):
    """One map over a volume: the three planes of the scene, each with the map on top, the crosshair as
    two spans and a slice slider; clicking a plane moves the crosshair. A view `linked` to another shares
    each plane's zoom and pan."""

    def __init__(self, display: Display, scene: VolumeScene, width: int = MIN_PLANE,
                 linked: VolumeView | None = None, **params):
        super().__init__(display, scene.shape, **params)
        self.scene, self._values = scene, None
        extents = [n * s for n, s in zip(scene.shape, scene.spacing)]          # mm per axis
        px_per_mm = max(width, MIN_PLANE) / max(extents)
        self.figures, self.map_sources, self.spans = {}, {}, {}
        columns = []
        for plane in PLANES:
            w, h = extents[plane.cols], extents[plane.rows]
            ranges = (linked.figures[plane.name].x_range, linked.figures[plane.name].y_range) if linked else ()
            fig = image_figure((h, w), round(w * px_per_mm), *ranges, tools="pan,wheel_zoom,reset",
                               toolbar_location=None, title=plane.name, css_classes=[f"xv-plane-{plane.name}"])
            fig.title.text_font_size = "9pt"
            fig.image("image", x=0, y=0, dw=w, dh=h, source=scene.sources[plane.name], color_mapper=scene.mapper)
            source = ColumnDataSource({"value": [plane.cut(np.full(scene.shape, np.nan, np.float32), scene.point)]})
            heat = fig.image("value", x=0, y=0, dw=w, dh=h, source=source, color_mapper=self.mapper,
                             global_alpha=display.opacity)
            spans = (Span(dimension="height", line_color=CROSSHAIR, line_alpha=0.7),     # at the column
                     Span(dimension="width", line_color=CROSSHAIR, line_alpha=0.7))      # at the row
            for span in spans:
                fig.add_layout(span)
            fig.add_tools(HoverTool(renderers=[heat], tooltips=[("value", "@value{0.000}")]))
            fig.on_event(Tap, lambda event, p=plane: scene.click(p, event.x, event.y))
            self.heat_glyphs.append(heat)
            self.figures[plane.name], self.map_sources[plane.name], self.spans[plane.name] = fig, source, spans
            slider = scene.slider(plane, fig.frame_width, f"xv-slice-{plane.name}")
            columns.append(pn.Column(pn.pane.Bokeh(fig, margin=(5, 5)), slider))
        last = self.figures[PLANES[-1].name]               # the other planes' canvases are their frames
        last.add_layout(ColorBar(color_mapper=self.mapper, width=10, padding=2), "right")
        self.heading = pn.pane.HTML("", margin=(0, 10), styles={"font-size": "9pt", "font-weight": "bold"})
        self.panel = pn.Column(self.heading, *columns, css_classes=["xv-volume-view"])
        scene.views.append(self)
        self.moved(set(range(3)))

    def on_click(self, callback) -> None:
        """A click moves the crosshair (the scene's); volumes pick no 'point' region of segmenters."""

    @bokeh_update
    def moved(self, axes: set[int]) -> None:
        """The crosshair moved along `axes`: new map slices where a plane cuts one of them, spans moved."""
        point, spacing = self.scene.point, self.scene.spacing
        for plane in PLANES:
            if plane.axis in axes and self._values is not None:
                self.map_sources[plane.name].data = {"value": [self.visible(plane.cut(self._values, point))]}
            at_column, at_row = self.spans[plane.name]
            at_column.location = (point[plane.cols] + 0.5) * spacing[plane.cols]
            at_row.location = (point[plane.rows] + 0.5) * spacing[plane.rows]

    def _send(self, values: np.ndarray) -> None:
        self._values = values
        for plane in PLANES:
            self.map_sources[plane.name].data = {"value": [self.visible(plane.cut(values, self.scene.point))]}

    def _set_title(self, text: str) -> None:
        self.heading.object = text
