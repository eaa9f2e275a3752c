"""The fine-tuning panel: settings, a background run with live progress and losses, before/after results."""
from __future__ import annotations

import holoviews as hv
import numpy as np
import panel as pn
import param

from .overlay import OverlayPair
from .selection import Selection, default_layer
from .tasks import describe, notify
from .workbench import Workbench

LOSSES = ["auto", "relevant", "irrelevant", "rrr", "relevant+irrelevant"]
POLL_MS = 250


class FinetunePanel(pn.viewable.Viewer):
    """Launch xv.finetune(..., background=True) from the selected model version on the saved feedback,
    follow it (progress bar and losses, polled by a periodic callback), cancel it, and when it is done
    show the before/after table and the new version's overlay beside the old one."""

    loss = param.Selector(objects=LOSSES, default="auto", label="Explanation loss")
    lam = param.Number(default=1.0, bounds=(0, 100), softbounds=(0, 10), step=0.1, label="λ (explanation weight)")
    epochs = param.Integer(default=2, bounds=(1, 50), label="Epochs")
    lr = param.Number(default=2e-3, bounds=(1e-6, 1), label="Learning rate")
    layer = param.Selector(objects=[], label="Layer")
    split = param.Selector(objects=[], label="Train on split")
    progress = param.Number(default=0, bounds=(0, 100))
    phase = param.String(default="idle")
    new_version = param.String(default="")

    def __init__(self, workbench: Workbench, selection: Selection, overlays: OverlayPair, **params):
        self.workbench, self.selection, self.overlays = workbench, selection, overlays
        super().__init__(**params)
        layers = [name for name, _ in workbench.layers(selection.version)]
        self.param.layer.objects, self.param.split.objects = layers, list(workbench.splits)
        self.layer = default_layer(workbench.layers(selection.version), workbench.is_segmenter(selection.version))
        self.split = selection.split
        self.job = None
        self._callback = None
        self._losses = hv.streams.Pipe(data={"step": [], "loss": [], "ce": [], "explanation": []})
        curves = hv.DynamicMap(self._curves, streams=[self._losses])
        self.launch_button = pn.widgets.Button(label="Launch fine-tuning", color="primary", css_classes=["xv-launch"])
        self.cancel_button = pn.widgets.Button(label="Cancel", color="danger", disabled=True,
                                               css_classes=["xv-cancel"])
        self.launch_button.on_click(lambda _: self.launch())
        self.cancel_button.on_click(lambda _: self.cancel())
        self.bar = pn.indicators.Progress(value=0, max=100, sizing_mode="stretch_width", bar_color="primary")
        self.status = pn.pane.Markdown("Paint feedback on a few images, save it, then launch.", margin=(0, 10))
        self.results = pn.pane.Markdown("", css_classes=["xv-finetune-results"], margin=(0, 10))
        self.history = pn.pane.Markdown("", margin=(0, 10))
        form = pn.Column(
            *[pn.widgets.Select.from_param(self.param[p], width=250) for p in ("split", "loss", "layer")],
            pn.widgets.FloatInput.from_param(self.param.lam, width=250),
            pn.widgets.IntInput.from_param(self.param.epochs, width=250, css_classes=["xv-finetune-epochs"]),
            pn.widgets.FloatInput.from_param(self.param.lr, width=250, step=1e-4, format="0.00000"),
            pn.Row(self.launch_button, self.cancel_button), width=280)
        self.layout = pn.Row(
            form,
            pn.Column(self.bar, self.status,
                      pn.pane.HoloViews(curves.opts(width=420, height=200, legend_position="top_right",
                                                    xlabel="step", ylabel="loss", toolbar=None),
                                        linked_axes=False),
                      self.results, self.history, width=460),
            name="Fine-tune")
        self.show_history()

    @staticmethod
    def _curves(data):
        """Loss terms per step; framewise, so the axes follow the growing curves."""
        return hv.NdOverlay({k: hv.Curve((data["step"], data[k]), "step", "loss").opts(framewise=True)
                             for k in ("loss", "ce", "explanation")}, kdims="term")

    def launch(self) -> None:
        """Start fine-tuning in the background (errors, e.g. no feedback yet, become notifications)."""
        if self.job is not None and not self.job.done:
            notify("a fine-tuning run is already going on", "warning", 3000)
            return
        sel = self.selection
        try:
            self.job = self.workbench.finetune(sel.version, self.split, layer=self.layer, lam=self.lam,
                                               epochs=self.epochs, lr=self.lr, loss=self.loss)
        except Exception as err:                  # noqa: BLE001 - e.g. no feedback on this split
            notify(describe(err))
            return
        self._base = sel.version
        self._steps = {"step": [], "loss": [], "ce": [], "explanation": []}
        self.progress, self.phase, self.results.object = 0, "starting", ""
        self.launch_button.disabled, self.cancel_button.disabled = True, False
        self._callback = pn.state.add_periodic_callback(self.poll, period=POLL_MS)   # server or notebook loop

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self.status.object = "cancelling after the current step…"

    def poll(self) -> None:
        """Show the job's progress and losses; when it has finished, its results."""
        job = self.job
        if job is None:
            return
        p = job.progress
        self.progress = self.bar.value = int(round(100 * p["fraction"]))
        if p["losses"] and (not self._steps["step"] or self._steps["step"][-1] != p["step"]):
            self._steps["step"].append(p["step"])
            for k in ("loss", "ce", "explanation"):
                self._steps[k].append(p["losses"].get(k, np.nan))
            self._losses.send(self._steps)
        losses = " · ".join(f"{k} {v:.3f}" for k, v in p["losses"].items())
        self.status.object = (f"**{p['phase']}** · epoch {p['epoch']}/{p['epochs']} · step {p['step']}/"
                              f"{p['total_steps']} · {p['seconds']:.0f} s" + (f"<br>{losses}" if losses else ""))
        if job.done:
            self.phase = self._finish()
        else:
            self.phase = p["phase"]

    def _finish(self) -> str:
        """Stop polling and show the outcome (results, new version beside the old); returns the final phase."""
        if self._callback is not None:
            self._callback.stop()
            self._callback = None
        self.launch_button.disabled, self.cancel_button.disabled = False, True
        try:
            result = self.job.result()
        except Exception as err:                  # noqa: BLE001
            notify(f"fine-tuning failed: {describe(err)}")
            return "failed"
        if result.cancelled:
            self.status.object = "cancelled: no version was saved"
            return "cancelled"
        self.progress = self.bar.value = 100
        self.workbench.add_version(result.version, result.model)
        self.results.object = (f"**{result.base_version} → {result.version}** ({result.seconds:.0f} s, "
                               f"loss {result.settings['loss']}, λ {result.settings['lam']})\n\n" + result.summary())
        self.workbench.measured.setdefault(result.base_version, {
            f"{split}/{name}": float(result.metrics[name].sel(stage="before", split=split))
            for split in result.metrics.split.values for name in result.metrics.data_vars})
        self.new_version = result.version
        self.selection.sync_version()
        self.overlays.sync_choices()
        self.overlays.compare_version = result.base_version      # the old version on the right
        self.selection.version = result.version                  # the new one on the left
        self.show_history()
        notify(f"fine-tuned {result.base_version} → {result.version}", "success", 4000)
        return "done"

    def show_history(self) -> None:
        """The registry's versions with their parents and the metrics saved with them."""
        splits = list(self.workbench.splits)
        cols = [(f"{split}/{metric}", f"{split} {label}") for split in splits
                for metric, label in (("accuracy", "acc."), ("pointing_game", "pointing game"))]
        rows = ["| version | parent | " + " | ".join(label for _, label in cols) + " |",
                "|---" * (len(cols) + 2) + "|"]
        for name in self.workbench.versions:
            meta = self.workbench.version_meta(name)
            m = meta.get("metrics") or self.workbench.measured.get(name, {})
            rows.append(f"| {name} | {meta.get('parent') or '—'} | "
                        + " | ".join(f"{m[key]:.3f}" if key in m else "—" for key, _ in cols) + " |")
        self.history.object = "**Model versions** (switch or roll back in the sidebar)\n\n" + "\n".join(rows)

    def __panel__(self):
        return self.layout
