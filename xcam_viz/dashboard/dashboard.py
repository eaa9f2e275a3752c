"""`xv.Dashboard`: the components composed into one app; serving it (`serve`, `session`).

Each browser session gets its own Dashboard (its own selection); the Workbench — model versions,
data, caches, feedback store — is built once per server process and shared.
"""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import holoviews as hv
import holoviews.plotting.bokeh  # HoloViews draws with Bokeh; configure() sets up the page on display
import panel as pn
import param
from torch import nn

from ..data import ImageSet
from .browser import ImageBrowser
from .brush import BrushFeedback
from .concepts import ConceptsPanel
from .controls import ExplainControls
from .overlay import OverlayPair
from .page import configure
from .selection import Selection
from .splits import demo_splits
from .tasks import Runner, next_tick
from .tuning import FinetunePanel
from .upload import MAX_UPLOAD_MB, ImageUpload, websocket_limit
from .workbench import Workbench

hv.Store.set_current_backend("bokeh")


def load_model(spec: str | Path | nn.Module | None, num_classes: int = 2) -> nn.Module | None:
    """A model from a checkpoint path (xv.models.load) or a zoo name (random weights)."""
    from .. import models

    if spec is None or isinstance(spec, nn.Module):
        return spec
    if Path(spec).exists():
        return models.load(spec)
    if str(spec) in models.MODEL_NAMES:
        return models.build(str(spec), num_classes=num_classes)
    raise FileNotFoundError(f"--model {spec!r} is neither a checkpoint file nor one of {models.MODEL_NAMES}")


def load_data(spec) -> dict[str, ImageSet] | None:
    """Data splits from an ImageSet, a dict of them, or paths 'name=path' / 'path' (folder, CSV or MedMNIST .npz)."""
    from .. import data as xdata

    if spec is None or isinstance(spec, dict):
        return spec
    if isinstance(spec, ImageSet):
        return {spec.attrs.get("split", "data"): spec}
    splits = {}
    for item in [spec] if isinstance(spec, (str, Path)) else spec:
        name, _, path = str(item).rpartition("=")
        path = Path(path)
        ds = xdata.load_medmnist(path, split=name or "test") if path.suffix == ".npz" else xdata.load_folder(path)
        splits[name or path.stem] = ds
    return splits


def build_workbench(model=None, data=None, feedback=None) -> Workbench:
    """A Workbench from the Dashboard's arguments; None everywhere gives the demo."""
    from ..demo import demo_model

    splits = load_data(data) or demo_splits()
    num_classes = len(next(iter(splits.values())).class_names)
    model = load_model(model, num_classes) or demo_model(progress=False)
    return Workbench(model, splits, feedback)


def shared_workbench(model=None, data=None, feedback=None) -> Workbench:
    """One Workbench per (model, data, feedback) spec and server process (pn.state.cache)."""
    key = ("xcam-viz-workbench", str(model), str(data), str(feedback))
    if key not in pn.state.cache:
        pn.state.cache[key] = build_workbench(model, data, feedback).warm()
    return pn.state.cache[key]


class StateProbe(param.Parameterized):
    """A hidden element carrying the session's state as JSON (read by the browser tests and tools)."""

    def __init__(self, dashboard: "Dashboard"):
        super().__init__()
        self.dashboard = dashboard
        self._scheduled = False
        self.pane = pn.pane.HTML("", css_classes=["xv-state"], visible=False, margin=0)
        watched = [(dashboard.selection, ["split", "sample", "version", "layer", "method", "target", "revision"]),
                   *((view, ["digest"]) for view in dashboard.overlays.views.values()),
                   (dashboard.brush, ["strokes"]), (dashboard.tuning, ["progress", "phase", "new_version", "outcome"]),
                   (dashboard.browser, ["ids", "page"]),
                   (dashboard.concepts, ["layer", "phase", "strokes", "matches", "labelled", "report_version"])]
        for obj, names in watched:                      # after the other watchers of these parameters
            obj.param.watch(self.update, names, precedence=1)
        self.update()

    def state(self) -> dict:
        d = self.dashboard
        sel, views, grid = d.selection, d.overlays.views, d.browser.grid
        doc = d.runner.doc
        return {"session": doc.session_context.id if doc is not None and doc.session_context else "local",
                "split": sel.split, "sample": sel.sample, "version": sel.version, "layer": sel.layer,
                "method": sel.method, "target": sel.target, "revision": sel.revision,
                "left": views["left"].digest, "right": views["right"].digest,
                "left_title": views["left"].title, "right_title": views["right"].title,
                "strokes": len(d.brush.strokes),
                "page": d.browser.page, "page_ids": d.browser.page_ids(),
                "finetune": d.tuning.snapshot(),
                "versions": d.workbench.versions,
                "grid": {"cols": grid.cols, "rows": grid.rows, "size": list(grid.size), "tile": grid.tile},
                "image_shape": list(d.workbench.input_shape[1:]), "brush_frame": list(d.brush.frame),
                "concepts": d.concepts.snapshot()}

    def update(self, *_):
        """Publish the state; in a served session at most once per event-loop tick."""
        runner = self.dashboard.runner
        if not runner.background:
            self._publish()
        elif not self._scheduled:
            self._scheduled = True
            next_tick(runner.doc, self._publish)

    def _publish(self):
        self._scheduled = False
        text = json.dumps(self.state()).replace("&", "&amp;").replace("<", "&lt;")
        self.pane.object = f'<pre class="xv-state-json">{text}</pre>'


class Dashboard(pn.viewable.Viewer):
    """The xcam-viz workbench: browse images, compare CAMs, paint feedback, fine-tune.

    Dashboard() is the demo; give a model (module, checkpoint path or zoo name), data (ImageSet, dict of
    splits or paths) and feedback (FeedbackStore or path) for your own; users may upload images up to
    max_upload_mb into an "uploads" split. Display it in JupyterLab (it sets up the page itself, offline),
    or call .servable() in a `panel serve` script. Dashboards given
    paths (or nothing) share one Workbench per process (pn.state.cache); given objects, they get their own.
    """

    def __init__(self, model=None, data=None, feedback=None, *, workbench: Workbench | None = None,
                 background: bool | None = None, max_upload_mb: float = MAX_UPLOAD_MB, **params):
        super().__init__(**params)
        specs = (model, feedback, *(data if isinstance(data, (list, tuple)) else [data]))
        shareable = all(x is None or isinstance(x, (str, Path)) for x in specs)
        self.workbench = workbench or (shared_workbench if shareable else build_workbench)(model, data, feedback)
        self.runner = Runner(background)
        self.selection = Selection(self.workbench)
        self.browser = ImageBrowser(self.workbench, self.selection, self.runner)
        self.overlays = OverlayPair(self.workbench, self.selection, self.runner)
        self.brush = BrushFeedback(self.workbench, self.selection)
        self.tuning = FinetunePanel(self.workbench, self.selection, self.overlays)
        self.concepts = ConceptsPanel(self.workbench, self.selection, self.runner)
        self.controls = ExplainControls(self.workbench, self.selection, self.overlays)
        self.upload = ImageUpload(self.workbench, self.selection, max_upload_mb)
        self.probe = StateProbe(self)
        self.tabs = pn.Tabs(self.overlays.layout, self.brush.layout, self.tuning.layout, self.concepts.layout,
                            dynamic=False, margin=(0, 10))
        self.brush.active = False                # the brush view redraws only while its tab is shown
        self.tabs.param.watch(lambda e: setattr(self.brush, "active", e.new == 1), "active")
        self.tabs.param.watch(lambda e: setattr(self.concepts, "active", e.new == 3), "active")   # computes when shown
        self.main = pn.Row(pn.Card(self.browser.layout, self.upload.layout, title="Images", collapsible=False,
                                   margin=(0, 10)),
                           self.tabs, self.probe.pane)
        if self.runner.background:             # versions other sessions fine-tune appear in the pickers
            pn.state.add_periodic_callback(self._refresh_versions, period=3000)

    def _refresh_versions(self) -> None:
        if self.workbench.versions != self.selection.param.version.objects:
            self.selection.sync_version()
            self.overlays.sync_choices()
            self.tuning.show_history()
            self.controls.sync_back()

    @property
    def sidebar(self) -> pn.Column:
        return self.controls.layout

    def __panel__(self):
        configure()
        return pn.Row(pn.Column(self.sidebar, width=280), self.main)

    def template(self, title: str = "xcam-viz") -> pn.template.BootstrapTemplate:
        """The dashboard in a page template: controls in the sidebar, browser and tabs in the main area."""
        configure()
        return pn.template.BootstrapTemplate(title=title, sidebar=[self.sidebar], main=[self.main],
                                             sidebar_width=300, header_background="#2f5d8a")

    def servable(self, title: str = "xcam-viz", **kw):
        """Mark the dashboard's page template to be served by `panel serve`."""
        return self.template(title).servable(title=title, **kw)


def serve(model=None, data=None, feedback=None, port: int = 5006, address: str = "127.0.0.1",
          show: bool = False, websocket_origin: list[str] | None = None, basic_auth: str | None = None,
          max_upload_mb: float = MAX_UPLOAD_MB, **kw):
    """Serve the dashboard (one Dashboard per browser session on one shared Workbench); blocks.

    basic_auth: a password, or a JSON file of {user: password}, asked for on Panel's login page.
    max_upload_mb: the largest image a user may upload; the server drops larger websocket messages.
    """
    workbench = build_workbench(model, data, feedback).warm()
    origins = websocket_origin or [f"{host}:{port}" for host in {address, "localhost", "127.0.0.1"}]
    if basic_auth:
        kw.update(basic_auth=basic_auth, cookie_secret=kw.get("cookie_secret") or secrets.token_hex(32))
    print(f"xcam-viz dashboard on http://{address}:{port}/", flush=True)
    return pn.serve({"/": lambda: Dashboard(workbench=workbench, max_upload_mb=max_upload_mb).template()},
                    port=port, address=address, show=show, title="xcam-viz", websocket_origin=origins,
                    websocket_max_message_size=websocket_limit(max_upload_mb), **kw)


def session() -> pn.template.BootstrapTemplate:
    """One browser session's page, on the process's shared Workbench.

    XCAM_VIZ_MODEL (checkpoint or zoo name), XCAM_VIZ_DATA ([name=]path entries separated by os.pathsep)
    and XCAM_VIZ_FEEDBACK (database) configure it; unset, it is the demo.
    """
    data = os.environ.get("XCAM_VIZ_DATA")
    return Dashboard(model=os.environ.get("XCAM_VIZ_MODEL"), data=data.split(os.pathsep) if data else None).template()
