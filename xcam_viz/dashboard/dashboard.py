"""`xv.Dashboard`: the components composed into one app; a `panel serve` script's page (`session`).

Each browser session gets its own Dashboard (its own selection); the Workbench — model versions,
data, caches, feedback store — is built once per server process and shared.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import holoviews as hv
import holoviews.plotting.bokeh  # HoloViews draws with Bokeh; configure() sets up the page on display
import panel as pn
import param
from torch import nn

from ..data import load_splits
from .browser import ImageBrowser
from .brush import BrushFeedback
from .concepts import ConceptsPanel
from .controls import ExplainControls
from .overlay import OverlayPair
from .page import configure
from .selection import Selection
from .sessions import PROBES, VERSIONS
from .splits import demo_splits
from .stores import default_feedback_path
from .tab import Session
from .tasks import Runner
from .tuning import FinetunePanel
from .upload import MAX_UPLOAD_MB, ImageUpload
from .workbench import Workbench

hv.Store.set_current_backend("bokeh")

TABS = [OverlayPair, BrushFeedback, FinetunePanel, ConceptsPanel]   # adding a tab: one new file and this list
SIDEBAR_WIDTH = 250
BROWSER_WIDTH = 460


def load_model(spec: str | Path | nn.Module | None, num_classes: int = 2, in_channels: int = 3) -> nn.Module | None:
    """A model from a checkpoint path (xv.models.load) or a zoo name ("timm:<name>" too; random weights)."""
    from .. import models

    if spec is None or isinstance(spec, nn.Module):
        return spec
    if Path(spec).exists():
        return models.load(spec)
    if str(spec) in models.MODEL_NAMES or str(spec).startswith(models.TIMM_PREFIX):
        return models.build(str(spec), num_classes=num_classes, in_channels=in_channels)
    raise FileNotFoundError(f"--model {spec!r} is neither a checkpoint file nor one of {models.MODEL_NAMES} "
                            f"or {models.TIMM_PREFIX}<name>")


def demo_model_of(demo: str) -> nn.Module:
    """The trained model of a demo (an example set with a demo model: 'demo', 'volumes')."""
    from ..demo import LESIONS, VOLUMES, cached_model

    recipes = {recipe.example: recipe for recipe in (LESIONS, VOLUMES)}
    if demo not in recipes:
        raise ValueError(f"no demo {demo!r}; choose one of {', '.join(recipes)}")
    return cached_model(recipes[demo], progress=False)


def build_workbench(model=None, data=None, feedback=None, size: tuple[int, ...] | None = None,
                    channels: int | None = None, demo: str = "demo", window=None) -> Workbench:
    """A Workbench from the Dashboard's arguments; None everywhere gives the demo (`demo`: 'demo' or
    'volumes'). Data given as paths is fitted to the model: `size` (H, W; volumes D, H, W) or the model's own,
    `channels` (1 or 3) or what the model takes, medical volumes read through `window` (`xv.data.load_splits`);
    a zoo name is built for the data's classes and channels."""
    if model is None and data is None:
        model = demo_model_of(demo)                     # (an unknown demo fails here, naming the demos)
    known = model is None or isinstance(model, nn.Module) or Path(model).exists()
    model = load_model(model) if known else model
    splits = (load_splits(data, size=size, channels=channels, model=model if known else None, window=window)
              or demo_splits(demo))
    if not known:
        first = next(iter(splits.values()))
        model = load_model(model, len(first.class_names), first.image_shape[0])
    if feedback is None and data is None:               # each demo keeps its own feedback and versions
        feedback = default_feedback_path(demo)
    return Workbench(model or demo_model_of(demo), splits, feedback)


def shared_workbench(model=None, data=None, feedback=None, demo: str = "demo") -> Workbench:
    """One Workbench per (model, data, feedback, demo) spec and server process (pn.state.cache)."""
    key = ("xcam-viz-workbench", str(model), str(data), str(feedback), demo)
    if key not in pn.state.cache:
        pn.state.cache[key] = build_workbench(model, data, feedback, demo=demo).warm()
    return pn.state.cache[key]


class StateProbe(param.Parameterized):
    """A hidden element carrying the session's state as JSON (read by the browser tests and tools): the
    selection, the browser's and every tab's `snapshot()`, and `seq`, the number of times it was published.
    The server gives a session's `seq` too (`/xcam-viz/stats?session=ID`): equal numbers say that the page
    shows the session's newest state."""

    def __init__(self, dashboard: Dashboard):
        super().__init__()
        self.dashboard = dashboard
        self.seq = 0
        self._scheduled = False
        self.pane = pn.pane.HTML("", css_classes=["xv-state"], visible=False, margin=0)
        watched = [(dashboard.selection, ["split", "sample", "version", "layer", "method", "target", "revision"]),
                   (dashboard.browser, ["ids", "page"]),
                   *((tab, ["active"]) for tab in dashboard.tab_list),
                   *(pair for tab in dashboard.tab_list for pair in tab.watched())]
        for obj, names in watched:                      # after the other watchers of these parameters
            obj.param.watch(self.update, names, precedence=1)
        PROBES[self.session] = self
        self.update()

    @property
    def session(self) -> str:
        doc = self.dashboard.runner.doc
        return doc.session_context.id if doc is not None and doc.session_context else "local"

    def state(self) -> dict:
        d = self.dashboard
        sel = d.selection
        out = {"session": self.session,
               "split": sel.split, "sample": sel.sample, "version": sel.version, "layer": sel.layer,
               "method": sel.method, "target": sel.target, "revision": sel.revision,
               **d.browser.snapshot(), "versions": d.workbench.versions,
               "image_shape": list(d.workbench.input_shape[1:]),
               "tabs": {tab.title: tab.active for tab in d.tab_list}}
        for tab in d.tab_list:
            snapshot = tab.snapshot()
            out.update({tab.probe_key: snapshot} if tab.probe_key else snapshot)
        return out

    def update(self, *_):
        """Publish the state; in a served session at most once per event-loop tick."""
        runner = self.dashboard.runner
        if not runner.background:
            self._publish()
        elif not self._scheduled:
            self._scheduled = True
            runner.soon(self._publish)

    def _publish(self):
        self._scheduled = False
        self.seq += 1
        text = json.dumps({**self.state(), "seq": self.seq}).replace("&", "&amp;").replace("<", "&lt;")
        self.pane.object = f'<pre class="xv-state-json">{text}</pre>'


class Dashboard(pn.viewable.Viewer):
    """The xcam-viz workbench: browse images, compare CAMs, paint feedback, fine-tune.

    Display it in JupyterLab (it sets up the page itself, offline), or call .servable() in a `panel serve`
    script. Dashboards given paths (or nothing) share one Workbench per process (pn.state.cache); given
    objects, they get their own. Its tabs are built from `TABS`; each is reachable as the attribute its
    `attribute` names (`dash.brush`), and `show(title)` brings one on screen.

    Args:
        model: a module, a checkpoint path or a zoo name ("resnet18", "timm:<name>"); None: the demo.
        data: an ImageSet, a dict of named splits, or paths (folders, CSV manifests, .npz).
        feedback: a FeedbackStore or the path of its SQLite file.
        workbench: a Workbench to share between dashboards (instead of model / data / feedback).
        background: run model work in a background thread (default: when served or in a notebook).
        max_upload_mb: the largest image file users may upload into the "uploads" split.
        demo: the demo opened when neither model nor data is given: "demo" (2-D lesions) or "volumes"
            (3-D chest CT: three planes, window/level, the hottest point).

    Example:
        >>> import tempfile, xcam_viz as xv
        >>> from xcam_viz.demo import demo_data, demo_model
        >>> dash = xv.Dashboard(demo_model(progress=False), {"test": demo_data("test", n=8)},
        ...                     tempfile.mkdtemp() + "/feedback.db", background=False)
        >>> dash.selection.layer, [tab.title for tab in dash.tab_list]
        ('block4', ['Explain', 'Feedback', 'Fine-tune', 'Concepts'])
    """

    def __init__(self, model=None, data=None, feedback=None, *, workbench: Workbench | None = None,
                 background: bool | None = None, max_upload_mb: float = MAX_UPLOAD_MB, demo: str = "demo",
                 **params):
        super().__init__(**params)
        specs = (model, feedback, *(data if isinstance(data, (list, tuple)) else [data]))
        shareable = all(x is None or isinstance(x, (str, Path)) for x in specs)
        self.workbench = workbench or (shared_workbench if shareable else build_workbench)(model, data, feedback,
                                                                                          demo=demo)
        self.runner = Runner(background)
        self.selection = Selection(self.workbench)
        session = Session(self.workbench, self.selection, self.runner)
        self.browser = ImageBrowser(self.workbench, self.selection, self.runner)
        self.tab_list = [tab(session) for tab in TABS if self.workbench.spatial_dims in tab.spatial_dims]
        self.controls = ExplainControls(self.workbench, self.selection, self.overlays)
        self.upload = ImageUpload(self.workbench, self.selection, max_upload_mb)
        self.tabs = pn.Tabs(*[(tab.title, tab) for tab in self.tab_list], dynamic=False, margin=(0, 10),
                            css_classes=["xv-tabs"], sizing_mode="stretch_width")
        self.tabs.param.watch(self._show_tab, "active")     # tabs compute and redraw only while shown
        self._show_tab()
        self.probe = StateProbe(self)
        self.main = pn.Row(pn.Column(self.browser.layout, self.upload.layout, width=BROWSER_WIDTH,
                                     css_classes=["xv-images"], margin=(0, 10)),
                           self.tabs, self.probe.pane, sizing_mode="stretch_width")
        if self.runner.background:             # versions other sessions fine-tune appear in the pickers
            VERSIONS.add(self)

    def __getattr__(self, name: str):
        """A tab by its attribute name (dash.overlays, dash.brush, dash.tuning, dash.concepts)."""
        for tab in self.__dict__.get("tab_list", ()):
            if tab.attribute == name:
                return tab
        raise AttributeError(f"{type(self).__name__!r} has no attribute {name!r}")

    def show(self, title: str) -> None:
        """Bring the tab with this title on screen."""
        titles = [tab.title for tab in self.tab_list]
        if title not in titles:
            raise ValueError(f"no tab {title!r}; tabs: {titles}")
        self.tabs.active = titles.index(title)

    def _show_tab(self, *_) -> None:
        for i, tab in enumerate(self.tab_list):
            tab.active = i == self.tabs.active

    @property
    def sidebar(self) -> pn.Column:
        return self.controls.layout

    def __panel__(self):
        configure()
        return pn.Row(pn.Column(self.sidebar, width=SIDEBAR_WIDTH), self.main, sizing_mode="stretch_width")

    def template(self, title: str = "xcam-viz") -> pn.template.BootstrapTemplate:
        """The dashboard in a page template: controls in the sidebar, browser and tabs in the main area."""
        configure()
        return pn.template.BootstrapTemplate(title=title, sidebar=[self.sidebar], main=[self.main],
                                             sidebar_width=SIDEBAR_WIDTH, header_background="#2f5d8a",
                                             busy_indicator=None)   # Panel's is one for all sessions

    def servable(self, title: str = "xcam-viz", **kw):
        """Mark the dashboard's page template to be served by `panel serve`."""
        return self.template(title).servable(title=title, **kw)


def session() -> pn.template.BootstrapTemplate:
    """One browser session's page, on the process's shared Workbench.

    XCAM_VIZ_MODEL (checkpoint or zoo name), XCAM_VIZ_DATA ([name=]path entries separated by os.pathsep)
    and XCAM_VIZ_FEEDBACK (database) configure it; unset, it is the demo.
    """
    data = os.environ.get("XCAM_VIZ_DATA")
    return Dashboard(model=os.environ.get("XCAM_VIZ_MODEL"), data=data.split(os.pathsep) if data else None).template()
