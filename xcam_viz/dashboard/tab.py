"""What every tab of the dashboard is: a `Viewer` with a title, an `active` flag and a `snapshot()`.

A tab is built from the session's shared pieces (`Session`: the Workbench, the session's Selection and
its Runner) and talks to other tabs only through the Selection. The Dashboard builds its tabs from
`dashboard.TABS`; the state probe publishes each tab's `snapshot()` whenever one of its `probed`
parameters changes.
"""
from __future__ import annotations

from dataclasses import dataclass

import panel as pn
import param

from .selection import Selection
from .tasks import Runner
from .workbench import Workbench


@dataclass
class Session:
    """What a tab is built from: the shared Workbench, one browser session's Selection and Runner."""

    workbench: Workbench
    selection: Selection
    runner: Runner


class Tab(pn.viewable.Viewer):
    """One tab: `layout` is what it shows; `snapshot()` what the state probe publishes of it.

    attribute: the Dashboard attribute naming the tab (e.g. `dash.brush`); probe_key: where the probe puts the
    snapshot (None: merged into the top level, as the first tabs did); probed: parameters whose changes
    republish it.
    """

    title = param.String(default="", constant=True, doc="the tab's heading")
    active = param.Boolean(default=False, doc="whether the tab is on screen")

    attribute: str = ""
    probe_key: str | None = None
    probed: tuple[str, ...] = ()
    spatial_dims: tuple[int, ...] = (2, 3)      # the data it works on: images (2), volumes (3)

    def __init__(self, session: Session, **params):
        self.session = session
        self.workbench, self.selection, self.runner = session.workbench, session.selection, session.runner
        super().__init__(**params)

    def snapshot(self) -> dict:
        """What the tab shows, as JSON-ready values (read by the browser tests and tools)."""
        raise NotImplementedError

    def watched(self) -> list[tuple[param.Parameterized, list[str]]]:
        """(object, parameter names) pairs whose changes change the snapshot."""
        return [(self, list(self.probed))]

    def __panel__(self):
        return self.layout
