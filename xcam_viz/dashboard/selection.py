"""One session's selection: which image, model version, layer, method and target every view shows."""
from __future__ import annotations

import param

from ..evidence import METHODS as EVIDENCE_METHODS
from .maps import MapRequest, mask_region
from .workbench import Workbench


class Selection(param.Parameterized):
    """The state a click or a selector changes; components watch it. One per browser session."""

    split = param.Selector(objects=[], doc="data split the image comes from")
    sample = param.String(default="", doc="id of the selected image")
    version = param.Selector(objects=[], doc="model version")
    layer = param.Selector(objects=[], doc="layer whose activations the CAM weighs")
    method = param.Selector(objects=[], doc="CAM method, or evidence (signed)")
    target = param.Selector(objects=["predicted"], doc="'predicted' or a class index")
    region = param.Selector(objects=["predicted", "all", "point", "painted"],
                            doc="segmenters: the pixels whose class logits are explained")
    point = param.Tuple(default=(0, 0), length=2, doc="(row, col) of the region 'point'")
    painted = param.Parameter(default=None, doc="bool mask of the region 'painted' (from the brush)")
    revision = param.Integer(default=0, doc="bumped whenever the feedback store changes")
    compare = param.String(default="", doc="a model version to show in the right-hand view with the left's method "
                                           "and layer (set by fine-tuning: a new version beside its parent)")

    def __init__(self, workbench: Workbench, **params):
        self.workbench = workbench
        super().__init__(**params)
        self.param.split.objects = list(workbench.splits)
        self.param.version.objects = workbench.versions
        self.param.target.objects = {"predicted class": "predicted",
                                     **{name: i for i, name in enumerate(workbench.class_names())}}
        self.split = self.split or workbench.opening_split
        self.version = self.version or workbench.base_version
        self.sync_version()
        self.sample = self.sample or workbench.splits[self.split].ids[0]

    @param.depends("version", watch=True)
    def sync_version(self) -> None:
        """Refresh the layer and method choices for the model version, keeping the current ones if valid."""
        wb = self.workbench
        self.param.version.objects = wb.versions
        layers = [name for name, _ in wb.layers(self.version)]
        methods = wb.methods(self.version)
        self.param.layer.objects, self.param.method.objects = layers, methods
        with param.parameterized.batch_call_watchers(self):
            if self.layer not in layers:
                self.layer = wb.default_layer(self.version)
            if self.method not in methods:
                self.method = methods[0]

    def show_right(self, version: str) -> None:
        """Ask the right-hand view to show `version` (again, if it asked for it before)."""
        if self.compare == version:
            self.param.trigger("compare")
        else:
            self.compare = version

    @param.depends("split", watch=True)
    def _first_sample(self) -> None:
        if self.sample not in self.workbench.splits[self.split].ids:
            self.sample = self.workbench.splits[self.split].ids[0]

    def region_key(self):
        """The hashable region of the current request (None for classifiers)."""
        if not self.workbench.is_segmenter(self.version):
            return None
        if self.region == "point":
            return tuple(int(v) for v in self.point)
        if self.region == "painted":
            if self.painted is None or not self.painted.any():
                return "predicted"
            return mask_region(self.painted)
        return self.region

    def request(self, version: str | None = None, method: str | None = None,
                layer: str | None = None) -> MapRequest:
        """The map request of the current selection, optionally with another version / method / layer."""
        version, method, layer = version or self.version, method or self.method, layer or self.layer
        if method in EVIDENCE_METHODS:
            layer = ""                                   # evidence does not depend on a layer
        elif layer not in dict(self.workbench.layers(version)):
            layer = self.workbench.default_layer(version)
        return MapRequest(version, self.split, self.sample, method, layer, self.target, self.region_key())

