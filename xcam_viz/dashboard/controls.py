"""Sidebar controls: model version, layer (with its resolution), method, target, display and comparison."""
from __future__ import annotations

import panel as pn

from .overlay import OverlayPair
from .selection import Selection
from .workbench import Workbench

METHOD_LABELS = {"evidence": "evidence (fast, signed)", "evidence-pda": "evidence (PDA, slow, signed)"}


def layer_options(workbench: Workbench, version: str) -> dict[str, str]:
    """Layer choices labelled with their output resolution, e.g. 'block3 · 64×16×16'."""
    return {f"{name} · {c}×{h}×{w}": name for name, (c, h, w) in workbench.layers(version)}


def method_options(workbench: Workbench, version: str) -> dict[str, str]:
    return {METHOD_LABELS.get(m, m): m for m in workbench.methods(version)}


class ExplainControls(pn.viewable.Viewer):
    """Widgets bound to a session's Selection and to its overlays' display and comparison settings."""

    def __init__(self, workbench: Workbench, selection: Selection, overlays: OverlayPair):
        super().__init__()
        self.workbench, self.selection = workbench, selection
        size = {"sizing_mode": "stretch_width"}
        self.version = pn.widgets.Select.from_param(selection.param.version, name="Model version", **size)
        self.layer = pn.widgets.Select(label="Layer", css_classes=["xv-layer"], **size)
        self.method = pn.widgets.Select(label="Method", css_classes=["xv-method"], **size)
        self.target = pn.widgets.Select.from_param(selection.param.target, name="Explain class", **size)
        self.region = pn.widgets.Select.from_param(selection.param.region, name="Region (segmenter)", **size)
        self._sync()
        self.layer.link(selection, value="layer", bidirectional=True)
        self.method.link(selection, value="method", bidirectional=True)
        selection.param.watch(lambda *_: self._sync(), ["version"])
        self.region.visible = workbench.is_segmenter(selection.version)
        display, compare = overlays.display, overlays.param
        self.layout = pn.Column(
            pn.pane.Markdown("### Explanation", margin=(0, 10)),
            self.version, self.layer, self.method, self.target, self.region,
            pn.pane.Markdown("### Display", margin=(0, 10)),
            pn.widgets.FloatSlider.from_param(display.param.opacity, **size),
            pn.widgets.Select.from_param(display.param.cmap, **size),
            pn.widgets.FloatSlider.from_param(display.param.threshold, **size),
            pn.pane.Markdown("### Right-hand view", margin=(0, 10)),
            pn.widgets.Select.from_param(compare.compare_version, name="Model version", **size),
            pn.widgets.Select.from_param(compare.compare_method, name="Method", **size),
            pn.widgets.Select.from_param(compare.compare_layer, name="Layer", **size),
            sizing_mode="stretch_width")

    def _sync(self) -> None:
        version = self.selection.version
        self.layer.options = layer_options(self.workbench, version)
        self.method.options = method_options(self.workbench, version)
        self.layer.value, self.method.value = self.selection.layer, self.selection.method

    def __panel__(self):
        return self.layout

