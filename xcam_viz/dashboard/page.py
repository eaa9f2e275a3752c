"""Page setup, run when a dashboard is displayed (importing xcam_viz sets up nothing).

A served page gets Bokeh, Panel, Notyf and Font Awesome from the dashboard server itself. A notebook
gets them inline, so JupyterLab shows the dashboard with no network: `pn.extension(inline=True)`
inlines Bokeh and Panel, and this module adds what Panel 1.9 still links from its CDN there: the
Notyf script of the notifications, Font Awesome (its fonts as data URIs), and the style sheets of
panes updated after the first display.
"""
from __future__ import annotations

import base64
import functools
import re
import sys

import panel as pn
from bokeh.models import UIElement
from panel.io.notebook import LOAD_MIME, patch_inline_stylesheets
from panel.io.resources import BUNDLE_DIR
from panel.pane.base import Pane

from .tasks import describe, notify

NOTYF = BUNDLE_DIR / "notificationarea" / "notyf@3"
FONT_AWESOME = BUNDLE_DIR / "font-awesome"
_notebook_ready = False


def configure() -> None:
    """Page-wide Panel settings: notifications on, callback errors shown as notifications, resources
    inline in a notebook. A served page calls it per session; a notebook kernel sets it up once."""
    global _notebook_ready
    from bokeh.core.validation import silence
    from bokeh.core.validation.warnings import FIXED_SIZING_MODE

    notebook = pn.state.curdoc is None and _in_kernel()
    if notebook and _notebook_ready:
        return
    if notebook:
        _publish_notebook_assets()
        if not hasattr(Pane._update_object, "__wrapped__"):
            Pane._update_object = _restyled_inline(Pane._update_object)
    pn.extension(notifications=True, inline=True)        # inline: only notebooks use it (a server serves them)
    pn.config.exception_handler = lambda err: notify(describe(err))
    silence(FIXED_SIZING_MODE)             # HoloViews sizes plots by their frames
    _notebook_ready = notebook


def _in_kernel() -> bool:
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython else None
    return getattr(shell, "kernel", None) is not None


def _publish_notebook_assets() -> None:
    """Notyf (defined before Panel's loader, which then skips its CDN copy) and the style sheets of the
    notifications, into the notebook page."""
    from IPython.display import publish_display_data

    css = (NOTYF / "notyf.min.css").read_text() + font_awesome_css()
    js = (f"(function() {{ {(NOTYF / 'notyf.min.js').read_text()}\nwindow.Notyf = Notyf; }})();\n"
          f"(function() {{ const style = document.createElement('style'); style.textContent = {css!r};"
          " document.head.appendChild(style); })();")
    publish_display_data({"application/javascript": js, LOAD_MIME: js})


def font_awesome_css() -> str:
    """Font Awesome's solid and regular icons (the notifications use them), fonts as woff2 data URIs."""
    def inline(match: re.Match) -> str:
        font = base64.b64encode((FONT_AWESOME / "webfonts" / f"{match[1]}.woff2").read_bytes()).decode()
        return f'src:url(data:font/woff2;base64,{font}) format("woff2")'
    css = (FONT_AWESOME / "css" / "all.min.css").read_text()
    css = re.sub(r"src:url\(\.\./webfonts/(fa-[a-z]+-\d+)\.eot\);src:[^;}]*", inline, css)
    return css


def _restyled_inline(update_object):
    """Panel 1.9 inlines its CDN style sheets at a notebook's first display only; a pane's later updates
    (every Markdown or HTML pane's new text) link them from the CDN again: inline them after each one."""
    @functools.wraps(update_object)
    def update(self, ref, doc, root, parent, comm):
        update_object(self, ref, doc, root, parent, comm)
        if comm is not None and pn.config.inline and ref in self._models:
            for model in self._models[ref][0].select({"type": UIElement}):
                patch_inline_stylesheets(model)
    return update
