"""Sidebar controls: model version, layer (with its resolution), method, target, display and comparison."""
from __future__ import annotations

import panel as pn
import param

from .overlay import OverlayPair
from .selection import Selection
from .workbench import Workbench

METHOD_LABELS = {"efficient": "evidence · efficient (fast, signed)", "pda": "evidence · pda (slow, signed)"}
METHOD_NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "hirescam": "HiResCAM", "xgradcam": "XGrad-CAM",
                "layercam": "LayerCAM", "scorecam": "Score-CAM", "eigencam": "Eigen-CAM",
                "seg-gradcam": "Seg-Grad-CAM", "seg-hirescam": "Seg-HiRes-Grad-CAM"}


def cam_name(layer: str | None, method: str | None) -> str:
    """A CAM in words, e.g. 'block4 Grad-CAM' (what a pointing game or IoU was computed with)."""
    return " ".join(part for part in (layer, METHOD_NAMES.get(method, method)) if part)


def scored_with(metric: str, layer: str | None, method: str | None) -> str:
    """A localisation metric named with its CAM, e.g. 'pointing game (block4 Grad-CAM)'."""
    cam = cam_name(layer, method)
    return f"{metric} ({cam})" if cam else metric


def layer_options(workbench: Workbench, version: str) -> dict[str, str]:
    """Layer choices labelled with their output resolution, e.g. 'block3 · 64×16×16' (volumes: C×d×h×w)."""
    return {f"{name} · {'×'.join(map(str, shape))}": name for name, shape in workbench.layers(version)}


def method_options(workbench: Workbench, version: str) -> dict[str, str]:
    return {METHOD_LABELS.get(m, m): m for m in workbench.methods(version)}


class ExplainControls(pn.viewable.Viewer):
    """Widgets bound to a session's Selection and to its overlays' display and comparison settings."""

    back_event = param.Event(label="Back to parent")

    def __init__(self, workbench: Workbench, selection: Selection, overlays: OverlayPair):
        super().__init__()
        self.workbench, self.selection = workbench, selection
        size = {"sizing_mode": "stretch_width"}
        self.version = pn.widgets.Select.from_param(selection.param.version, name="Model version", **size)
        self.back = pn.widgets.Button.from_param(self.param.back_event, css_classes=["xv-back-to-parent"], **size)
        self.layer = pn.widgets.Select(label="Layer", css_classes=["xv-layer"], **size)
        self.method = pn.widgets.Select(label="Method", css_classes=["xv-method"], **size)
        self.target = pn.widgets.Select.from_param(selection.param.target, name="Explain class",
                                                   css_classes=["xv-target"], **size)
        self.region = pn.widgets.Select.from_param(selection.param.region, name="Region (segmenter)", **size)
        self._sync()
        self.layer.link(selection, value="layer", bidirectional=True)
        self.method.link(selection, value="method", bidirectional=True)
        selection.param.watch(lambda *_: self._sync(), ["version"])
        selection.param.watch(lambda *_: self.sync_back(), ["version"])
        selection.param.watch(lambda *_: self.sync_back(), ["version"], what="objects")
        self.sync_back()
        self.region.visible = workbench.is_segmenter(selection.version)
        display, compare = overlays.display, overlays.param
        self.layout = pn.Column(
            pn.pane.Markdown("### Explanation", margin=(0, 10)),
            self.version, self.back, self.layer, self.method, self.target, self.region,
            pn.pane.Markdown("### Display", margin=(0, 10)),
            pn.widgets.FloatSlider.from_param(display.param.opacity, **size),
            pn.widgets.Select.from_param(display.param.cmap, **size),
            pn.widgets.FloatSlider.from_param(display.param.threshold, **size),
            pn.pane.Markdown("### Right-hand view", margin=(0, 10)),
            pn.widgets.Select.from_param(compare.compare_version, name="Model version", **size),
            pn.widgets.Select.from_param(compare.compare_method, name="Method", **size),
            pn.widgets.Select.from_param(compare.compare_layer, name="Layer", **size),
            sizing_mode="stretch_width")

    def sync_back(self) -> None:
        """Name the selected version's parent on the button (disabled for a starting model)."""
        parent = self.workbench.parent(self.selection.version)
        self.back.label = f"Back to parent ({parent})" if parent else "Back to parent (none)"
        self.back.disabled = parent is None

    @param.depends("back_event", watch=True)
    def back_to_parent(self) -> None:
        """Select the parent of the selected version: what fine-tuning and every view start from."""
        parent = self.workbench.parent(self.selection.version)
        if parent is not None:
            self.selection.version = parent

    def _sync(self) -> None:
        version = self.selection.version
        self.layer.options = layer_options(self.workbench, version)
        self.method.options = method_options(self.workbench, version)
        self.layer.value, self.method.value = self.selection.layer, self.selection.method

    def __panel__(self):
        return self.layout

