"""The fine-tuning tab: settings, a background run with live progress and losses, before/after results.

It calls `xv.finetune` through the Workbench on the training split's saved feedback and only shows
what the run returns; every setting left untouched is passed as None, so the core's `DEFAULTS` (the
settings the repair benchmark picked) decide it. Runs wait in the server's fair queue
(`finetune.runqueue`) for a free slot; meanwhile the tab shows the place in line and the expected wait.
"""
from __future__ import annotations

import math

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param

from ..finetune import AUTO, DEFAULTS, STRATEGIES
from .controls import cam_name, scored_with
from .splits import HELD_OUT
from .tab import Tab
from .tasks import describe, notify
from .workbench import SHARED

POLL_MS = 250
WIDGET = 235                # a column of the tab; two side by side where they fit, else one above the other
ADVANCED = ("lam", "epochs", "lr")          # settings in the collapsed card; untouched: the core's defaults
SCORES = (("accuracy", "accuracy"), ("pointing_game", "pointing game"), ("iou", "IoU"))


def strategy_help(name: str) -> str:
    """What a strategy choice does, in words (from the core's registry)."""
    if name == "auto":
        picks = "; ".join(f"{kind} regions → {' + '.join(names)}" for kind, names in AUTO.items())
        return f"**auto**: the strategies the benchmark found best for the feedback given ({picks})."
    s = STRATEGIES[name]
    kinds = "relevant or irrelevant" if s.learns_from == "any" else s.learns_from
    return f"**{s.name}** ({s.kind}, learns from {kinds} regions): {s.summary}."


def _score(value: float | None, percent: bool) -> str:
    if value is None or not np.isfinite(value):
        return "—"
    return f"{value:.1%}" if percent else f"{value:.3f}"


def split_title(split: str, held_out: int | None = None) -> str:
    """A scored split in words: the validation and held-out splits say where they come from."""
    if split == "validation":
        return "validation (held out of training)"
    if split == HELD_OUT:
        return f"{HELD_OUT} ({held_out} training images, never trained on)" if held_out else split
    return split


def results_table(result, held_out: int | None = None) -> pd.DataFrame:
    """Before → after per split (the validation split included), each localisation score named with its CAM;
    columns no split has a value for are left out."""
    layer, method, m = result.settings["layer"], result.settings["method"], result.metrics
    rows = {split_title(str(split), held_out): {
        scored_with(label, layer, method) if key != "accuracy" else label:
            "—" if not (np.isfinite(before) or np.isfinite(after)) else
            f"{_score(before, key == 'accuracy')} → {_score(after, key == 'accuracy')}"
        for key, label in SCORES
        for before, after in [(float(m[key].sel(stage="before", split=split)),
                               float(m[key].sel(stage="after", split=split)))]}
        for split in m.split.values}
    table = pd.DataFrame.from_dict(rows, orient="index").rename_axis("split").reset_index()
    return table.loc[:, (table != "—").any()]


def versions_table(versions: list[tuple[str, dict, dict]], selected: str, splits: list[str]) -> pd.DataFrame:
    """The model versions as a table: one row per (name, saved metadata, scores) — its parent, strategy and
    flag — and per scored split its accuracy and, where any version has one, its pointing game (named with
    the CAM it was computed with: in the header when every version shares it, else in each cell)."""
    cams = {(sc["layer"], sc["method"]) for _, _, sc in versions if sc["metrics"]}
    shared = next(iter(cams)) if len(cams) == 1 else None
    columns = [(f"{split}/accuracy", f"{split} accuracy") for split in splits]
    columns += [(f"{split}/pointing_game", f"{split} " + scored_with("pointing game", *(shared or (None, None))))
                for split in splits]
    rows = []
    for name, meta, sc in versions:
        row = {"version": name + (" (selected)" if name == selected else "") + (" ⚠ flagged" if meta.get("flagged")
                                                                             else ""),
               "parent": meta.get("parent") or "—", "strategy": meta.get("strategy") or "—"}
        for key, label in columns:
            cell = _score(sc["metrics"].get(key), key.endswith("/accuracy"))
            row[label] = cell + (f" ({cam_name(sc['layer'], sc['method'])})" if shared is None and cell != "—"
                                 and not key.endswith("/accuracy") else "")
        rows.append(row)
    table = pd.DataFrame(rows, columns=["version", "parent", "strategy", *[label for _, label in columns]])
    keep = [c for c in table.columns if c in ("version", "parent", "strategy") or "accuracy" in c
            or (table[c] != "—").any()]
    return table[keep]


def table_pane(css_class: str) -> pn.pane.DataFrame:
    """A table the tab fills with a DataFrame: an HTML table (its cells escaped), scrolling sideways when wide."""
    return pn.pane.DataFrame(pd.DataFrame(), index=False, escape=True, justify="left", text_align="start",
                             css_classes=[css_class], sizing_mode="stretch_width", margin=(0, 10),
                             styles={"font-size": "0.85em", "overflow-x": "auto"},
                             stylesheets=["th { text-align: start !important; }"])     # headers over their cells


def duration(seconds: float) -> str:
    """A wait in words, rounded as far as an estimate deserves."""
    if seconds < 60:
        return f"{max(5, 5 * round(seconds / 5)):.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def queue_text(ticket) -> str:
    """Where a waiting run stands: its place in line, the runs going on, the expected wait."""
    queue, estimate = ticket.queue.snapshot(), ticket.estimate
    wait = ("it should start in about " + duration(estimate) if estimate is not None else
            "the wait is estimated once a run has shown its pace")
    return (f"**Waiting for a free slot: position {ticket.position} in the queue** ({queue['running']} running, "
            f"at most {queue['max_runs']} at once); {wait}. It trains on the feedback saved when you launched it.")


def _plain(markdown: str) -> str:
    """Markdown without its emphasis (a tooltip shows text)."""
    return markdown.replace("**", "")


def _finite(values: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}


class FinetunePanel(Tab):
    """Launch xv.finetune(..., background=True) from the selected model version on the training split's
    saved feedback, follow it (progress bar and losses, polled by a periodic callback), cancel it, and
    when it is done show the before/after table; a good new version becomes the selection (its parent on
    the right-hand view), a flagged one is only shown on the right, with its warning."""

    title = param.String(default="Fine-tune", constant=True)
    attribute, probe_key = "tuning", "finetune"
    probed = ("progress", "phase", "new_version", "outcome", "position")
    launch_event = param.Event(label="Launch fine-tuning")
    cancel_event = param.Event(label="Cancel")
    split = param.Selector(objects=[], label="Train on split")
    strategy = param.Selector(objects=["auto", *STRATEGIES], default="auto", label="Strategy")
    layer = param.Selector(objects=[], label="Grad-CAM layer (scored, corrected)")
    lam = param.Number(default=DEFAULTS["lam"], bounds=(0, 100), softbounds=(0, 10), step=0.1,
                       label="λ (weight of explanation losses)")
    epochs = param.Integer(default=DEFAULTS["epochs"], bounds=(1, 50), label="Epochs (at most; early stopping)")
    lr = param.Number(default=DEFAULTS["lr"], bounds=(1e-6, 0.5), label="Learning rate")
    progress = param.Number(default=0, bounds=(0, 100))
    phase = param.String(default="idle")
    position = param.Integer(default=0, doc="place in the fine-tuning queue while waiting (1: next); 0 otherwise")
    new_version = param.String(default="")
    outcome = param.Dict(default={}, doc="the last finished run: versions, flag, warning, metrics, settings")

    def __init__(self, session, **params):
        super().__init__(session, **params)
        workbench, selection = self.workbench, self.selection
        self.param.layer.objects = [name for name, _ in workbench.layers(selection.version)]
        self.layer = workbench.default_layer(selection.version)
        self.param.split.objects = workbench.training_splits()
        self.split = workbench.training_splits()[0] if workbench.training_splits() else None
        self.job = None
        self._callback = None
        self._losses = hv.streams.Pipe(data={"step": [], "loss": [], "ce": [], "explanation": []})
        curves = hv.DynamicMap(self._curves, streams=[self._losses])
        self.launch_button = pn.widgets.Button.from_param(self.param.launch_event, color="primary",
                                                          css_classes=["xv-launch"])
        self.cancel_button = pn.widgets.Button.from_param(self.param.cancel_event, color="danger",
                                                          disabled=True, css_classes=["xv-cancel"])
        self.bar = pn.indicators.Progress(value=0, max=100, sizing_mode="stretch_width", bar_color="primary")
        self.status = pn.pane.Markdown("", margin=(0, 10), css_classes=["xv-finetune-status"])
        self.help = pn.pane.Markdown(strategy_help(self.strategy), margin=(0, 10), width=WIDGET,
                                     css_classes=["xv-strategy-help"], styles={"font-size": "0.85em"})
        self.warning = pn.pane.Alert("", alert_type="warning", visible=False, css_classes=["xv-finetune-warning"],
                                     sizing_mode="stretch_width", margin=(5, 10))
        self.results = pn.pane.Markdown("", css_classes=["xv-finetune-summary"], sizing_mode="stretch_width",
                                        margin=(0, 10), styles={"font-size": "0.85em"})
        self.results_table = table_pane("xv-finetune-results")
        self.results_table.visible = False
        self.history = table_pane("xv-versions")
        size = {"width": WIDGET}
        self.strategy_select = pn.widgets.Select.from_param(self.param.strategy, css_classes=["xv-strategy"],
                                                            description=_plain(self.help.object), **size)
        advanced = pn.Card(
            pn.widgets.FloatInput.from_param(self.param.lam, **size),
            pn.widgets.IntInput.from_param(self.param.epochs, css_classes=["xv-finetune-epochs"], **size),
            pn.widgets.FloatInput.from_param(self.param.lr, step=1e-4, format="0.00000", **size),
            pn.pane.Markdown("Shown: the defaults `xv.finetune` uses (chosen by the repair benchmark).",
                             margin=(0, 10), width=WIDGET - 10, styles={"font-size": "0.85em"}),
            title="Advanced", collapsed=True, css_classes=["xv-finetune-advanced"], width=WIDGET + 10, margin=(5, 5))
        form = pn.Column(
            pn.widgets.Select.from_param(self.param.split, disabled=len(self.param.split.objects) < 2, **size),
            self.strategy_select, self.help,
            pn.widgets.Select.from_param(self.param.layer, **size), advanced,
            pn.Row(self.launch_button, self.cancel_button), width=WIDGET + 15)
        legend = {"label_text_font_size": "8pt", "glyph_height": 10, "label_height": 10, "padding": 2, "spacing": 6,
                  "title": None, "orientation": "horizontal"}
        plot = pn.pane.HoloViews(curves.opts(width=WIDGET, height=210, legend_position="top", legend_opts=legend,
                                             xlabel="step", ylabel="loss", toolbar=None), linked_axes=False)
        self.layout = pn.Column(pn.FlexBox(form, pn.Column(self.bar, self.status, plot, width=WIDGET + 10),
                                           flex_wrap="wrap", sizing_mode="stretch_width"),
                                self.warning, self.results, self.results_table,
                                pn.pane.Markdown("**Model versions** (choose one, or go back to a parent, in the "
                                                 "sidebar)", margin=(10, 10, 0, 10)),
                                self.history, name=self.title, sizing_mode="stretch_width")
        selection.param.watch(lambda *_: self.show_history(), ["version"])
        selection.param.watch(lambda *_: self.show_history(), ["version"], what="objects")    # a new version
        selection.param.watch(lambda *_: self._hint(), ["revision"])
        self._hint()
        self.show_history()

    @param.depends("strategy", watch=True)
    def _describe_strategy(self) -> None:
        self.help.object = strategy_help(self.strategy)
        self.strategy_select.description = _plain(self.help.object)

    @staticmethod
    def _curves(data):
        """Loss terms per step; framewise, so the axes follow the growing curves. Before the first step one
        point at (0, 0): Bokeh warns about ranges of empty data."""
        steps = data["step"] or [0]
        return hv.NdOverlay({k: hv.Curve((steps, data[k] or [0.0]), "step", "loss").opts(framewise=True)
                             for k in ("loss", "ce", "explanation")}, kdims="term")

    def _hint(self) -> None:
        """Before a run: how much feedback the training split has."""
        if self.phase not in ("idle", "done", "cancelled", "failed"):
            return
        if self.split is None:
            self.status.object = ("No training split: fine-tuning needs a labelled split named 'train' "
                                  "(or any labelled split not named 'test').")
            return
        count = len(self.workbench.feedback_ids(self.split))
        todo = ("Launch to fine-tune on them." if count else
                f"Paint feedback on a few images of {self.split} (Feedback tab), save it, then launch.")
        scored = self.workbench.evaluation_data(self.split)
        held = self._held_out()
        where = (f"No other split to score on: {held} {self.split} images are held out as **{HELD_OUT}**, never "
                 "trained on, and every version is scored on them." if held else
                 f"Versions are scored on {', '.join(scored)}." if scored else
                 "No split to score versions on (too few images to hold any out).")
        self.status.object = (f"{count} image{'s' * (count != 1)} of **{self.split}** "
                              f"{'has' if count == 1 else 'have'} saved feedback. {todo} "
                              + where)

    def settings(self) -> dict:
        """What launch passes to the core: the strategy and layer, and each advanced setting the user
        changed (None for the others: the core's default)."""
        chosen = {name: getattr(self, name) for name in ADVANCED}
        return {"strategy": self.strategy, "layer": self.layer,
                **{k: (None if v == DEFAULTS[k] else v) for k, v in chosen.items()}}

    @param.depends("launch_event", watch=True)
    def launch(self) -> None:
        """Queue fine-tuning; it runs in the background when a slot is free (errors, e.g. no feedback yet,
        become notifications)."""
        if self.job is not None and not self.job.done:
            notify("a fine-tuning run is already going on", "warning", 3000)
            return
        try:
            self.job = self.workbench.finetune(self.selection.version, self.split, self.owner(), **self.settings())
        except Exception as err:                  # noqa: BLE001 - e.g. no feedback on this split
            notify(describe(err))
            return
        self._steps = {"step": [], "loss": [], "ce": [], "explanation": []}
        self.progress, self.results.object = 0, ""
        self.warning.visible = False
        self.launch_button.disabled, self.cancel_button.disabled = True, False
        self.poll()                                                     # queued or started: say which at once
        if not self.job.done:
            self._callback = pn.state.add_periodic_callback(self.poll, period=POLL_MS)   # server or notebook loop

    def owner(self) -> str:
        """Who launches runs (one at a time each): the participant of a per-user workspace, else this browser
        session's user or the session itself (a team shares the workspace)."""
        if self.workbench.workspace != SHARED:
            return self.workbench.workspace
        doc = self.runner.doc
        return pn.state.user or (doc.session_context.id if doc is not None and doc.session_context else
                                 f"session-{id(self)}")

    @param.depends("cancel_event", watch=True)
    def cancel(self) -> None:
        if self.job is not None:
            waiting = self.job.state == "queued"
            self.job.cancel()
            self.status.object = "cancelled before it started" if waiting else "cancelling after the current step…"

    def poll(self) -> None:
        """Show the run's place in the queue, then its progress and losses; when it has finished, its results."""
        job = self.job
        if job is None:
            return
        self.position = job.position
        if job.state == "queued":
            self.status.object, self.phase = queue_text(job), "queued"
            return
        p = job.progress
        self.progress = self.bar.value = int(round(100 * p["fraction"]))
        if p["losses"] and (not self._steps["step"] or self._steps["step"][-1] != p["step"]):
            self._steps["step"].append(p["step"])
            for k in ("loss", "ce", "explanation"):
                self._steps[k].append(p["losses"].get(k, np.nan))
            self._losses.send(self._steps)
        lines = [f"**{p['phase']}** · epoch {p['epoch']}/{p['epochs']} · step {p['step']}/{p['total_steps']} · "
                 f"{p['seconds']:.0f} s"]
        if p["losses"]:
            lines.append(" · ".join(f"{k} {v:.3f}" for k, v in p["losses"].items()))
        if p.get("validation"):
            lines.append(f"validation accuracy after epoch {p['validation']['epoch']}: "
                         f"{p['validation']['accuracy']:.1%}")
        self.status.object = "<br>".join(lines)
        ended = p["phase"] in ("done", "cancelled", "failed")     # said by the run before its result is here
        self.phase = self._finish() if job.done else "finishing" if ended else p["phase"]

    def _finish(self) -> str:
        """Stop polling and show the outcome; returns the final phase."""
        if self._callback is not None:
            self._callback.stop()
            self._callback = None
        self.launch_button.disabled, self.cancel_button.disabled = False, True
        try:
            result = self.job.result()
        except Exception as err:                  # noqa: BLE001
            notify(f"fine-tuning failed: {describe(err)}")
            return "failed"
        if result is None or result.cancelled:
            self.status.object = ("cancelled before it started" if result is None else
                                  "cancelled: no version was saved")
            return "cancelled"
        self.progress = self.bar.value = 100
        self.workbench.add_version(result.version, result.model)
        self._remember_base_scores(result)
        self._show_result(result)
        self.selection.sync_version()          # every view offers the new version
        if result.flagged:                    # saved, but not switched to: look first (right-hand view)
            self.selection.show_right(result.version)
            notify(f"{result.version} is flagged: {result.warning}", "warning", 12000)
        else:                                 # the new version on the left, its parent on the right
            self.selection.show_right(result.base_version)
            self.selection.version = result.version
            notify(f"fine-tuned {result.base_version} → {result.version}", "success", 4000)
        self.new_version = result.version
        self.show_history()
        return "done"

    def _remember_base_scores(self, result) -> None:
        """The base version's scores of this run ("before"), for a base saved without metrics (v0)."""
        self.workbench.measured.setdefault(result.base_version, {
            "metrics": result.scores("before"),
            "layer": result.settings["layer"], "method": result.settings["method"]})

    def _show_result(self, result) -> None:
        s = result.settings
        epochs_run = len(result.validation)
        self.results.object = (
            f"**{result.base_version} → {result.version}**" + (" ⚠ **flagged**" if result.flagged else "")
            + f" · {result.seconds:.0f} s · strategy *{s['strategy']}* on {s['feedback_samples']} annotated images "
            f"· best epoch {result.best_epoch} of {epochs_run} run (at most {s['epochs']}) · λ {s['lam']:g} · "
            f"learning rate {s['lr']:g}")
        self.results_table.object = results_table(result, self._held_out())
        self.results_table.visible = True
        self.warning.object = (f"**{result.version} is flagged:** {result.warning}. It is saved, but the dashboard "
                               f"stays on {self.selection.version}; the right-hand view of the Explain tab shows "
                               f"{result.version}. Select it in the sidebar only if you accept it.")
        self.warning.visible = result.flagged
        self.outcome = {"version": result.version, "base": result.base_version, "flagged": result.flagged,
                        "warning": result.warning, "best_epoch": result.best_epoch, "run_settings": _finite(s),
                        "metrics": {stage: _finite(result.scores(stage)) for stage in ("before", "after")}}

    def show_history(self) -> None:
        """The registry's versions with their parents, strategies, flags and the metrics saved with them."""
        wb = self.workbench
        versions = [(name, wb.version_meta(name), wb.scores(name)) for name in wb.versions]
        self.history.object = versions_table(versions, self.selection.version, list(wb.evaluation_data(self.split)))

    def _held_out(self) -> int | None:
        """How many training images are held out for scoring (None: another split scores runs)."""
        held = self.workbench.held_out.get(self.split)
        return None if held is None else len(held)

    def snapshot(self) -> dict:
        """What the tab shows, for the state probe (browser tests)."""
        job = self.job
        queue = {"state": job.state, "position": self.position, "estimate_s": job.estimate} if job else {}
        return {"phase": self.phase, "progress": self.progress, "version": self.new_version,
                "workspace": self.workbench.workspace, "queue": queue,
                "results": bool(self.results.object), "warning_shown": bool(self.warning.visible),
                "split": self.split, "strategy": self.strategy, "settings": self.settings(), **self.outcome}

