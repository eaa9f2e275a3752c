"""The instructor's page (`/instructor`): every participant's progress, live, and as a CSV file.

One row per workspace: the annotations saved, the model versions fine-tuned, the newest version's
accuracy on the splits runs are scored on, the state of their fine-tuning (queued, running, done,
flagged...), and a thumbnail of the image they painted last. One periodic callback of this page
reads the stores (SQLite counts, the versions folder) and redraws the table only when it changed.
"""
from __future__ import annotations

import base64
import html
import io
import time

import numpy as np
import pandas as pd
import panel as pn
from PIL import Image

from .workbench import Workbench
from .workspaces import Workspaces

PERIOD_MS = 2000
THUMB_PX = 48


def participant_state(ticket, flagged: bool, tuned: int, annotations: int) -> str:
    """In words: queued, running, failed or cancelled (the newest run), else flagged or done (the newest
    version), else annotating or not started."""
    if ticket is not None and ticket.state != "done":
        return ticket.state
    if tuned:
        return "flagged" if flagged else "done"
    return "annotating" if annotations else "not started"


def scored_splits(workbench: Workbench) -> list[str]:
    """The splits runs are scored on (those of the first training split), whose accuracies the table shows."""
    train = workbench.training_splits()
    return list(workbench.evaluation_data(train[0])) if train else []


def participant_row(name: str, workbench: Workbench, queue) -> dict:
    """One participant's row of the table (JSON-ready values; None where there is nothing yet)."""
    store, base = workbench.feedback, workbench.base_version
    tuned = [v for v in workbench.versions if v != base]
    latest = tuned[-1] if tuned else None
    meta = workbench.version_meta(latest) if latest else {}
    scores = workbench.scores(latest)["metrics"] if latest else {}
    ticket = queue.latest(workbench.workspace)
    waiting = ticket is not None and ticket.state == "queued"
    running = ticket is not None and ticket.state == "running"
    annotations = len(store)
    return {"participant": name, "annotations": annotations, "images annotated": len(store.sample_ids()),
            "versions": len(tuned), "latest version": latest,
            **{f"{split} accuracy": _finite(scores.get(f"{split}/accuracy")) for split in scored_splits(workbench)},
            "state": participant_state(ticket, bool(meta.get("flagged")), len(tuned), annotations),
            "queue position": ticket.position if waiting else None,
            "progress": round(100 * ticket.progress["fraction"]) if running else None,
            "last painted": store.latest_sample_id()}


def participants(spaces: Workspaces) -> pd.DataFrame:
    """The table of every participant (`participant_row`), in the order they joined."""
    rows = [participant_row(name, spaces.workbench(name), spaces.queue) for name in spaces.names()]
    return pd.DataFrame(rows)


def participants_csv(spaces: Workspaces) -> str:
    """The table as CSV (accuracies as fractions, empty cells where there is nothing yet)."""
    return participants(spaces).to_csv(index=False)


def thumbnail_uri(workbench: Workbench, sample: str | None) -> str | None:
    """A small PNG data URI of a sample's thumbnail with its saved regions on it (images: relevant green,
    irrelevant red, as the Feedback tab paints them); None when no split holds the sample."""
    split = next((name for name, data in workbench.splits.items() if sample in data.ids), None)
    if split is None:
        return None
    picture = Image.fromarray(np.ascontiguousarray(workbench.thumbnail(split, sample))).convert("RGB")
    if workbench.spatial_dims == 2:                 # a volume's thumbnail is one slice: its masks are not drawn
        rgb = np.asarray(picture, dtype=np.float32).copy()
        saved = workbench.feedback.annotations(sample)
        for kind, colour in (("relevant", (0, 170, 0)), ("irrelevant", (220, 0, 0))):
            masks = [getattr(a, kind) for a in saved if getattr(a, kind) is not None]
            if masks:
                union = Image.fromarray(np.logical_or.reduce(masks).astype(np.uint8) * 255)
                shown = np.asarray(union.resize(picture.size, Image.NEAREST)) > 0
                rgb[shown] = 0.35 * rgb[shown] + 0.65 * np.array(colour, np.float32)
        picture = Image.fromarray(rgb.round().astype(np.uint8))
    picture.thumbnail((THUMB_PX, THUMB_PX))
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def _finite(value) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def _cell(column: str, value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "—"
    if column.endswith("accuracy"):
        return f"{value:.1%}"
    if column == "progress":
        return f"{value:.0f}%"
    if isinstance(value, float) and value.is_integer():
        return f"{value:.0f}"
    return html.escape(str(value))


def table_html(frame: pd.DataFrame, thumbnails: list[str | None]) -> str:
    """The participants as an HTML table (every text escaped), a thumbnail beside each last painted image."""
    if frame.empty:
        return "<p>No participant has opened the dashboard yet.</p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in frame.columns)
    body = []
    for (_, row), uri in zip(frame.iterrows(), thumbnails):
        cells = [_cell(c, row[c]) for c in frame.columns]
        if uri:
            cells[-1] = f'<img src="{uri}" width="{THUMB_PX}" height="{THUMB_PX}" alt=""> {cells[-1]}'
        body.append(f'<tr class="xv-state-{html.escape(str(row["state"])).replace(" ", "-")}">'
                    + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


STYLE = """
table { border-collapse: collapse; font-size: 0.9em; }
th, td { padding: 4px 10px; border-bottom: 1px solid #ddd; text-align: start; vertical-align: middle; }
td img { vertical-align: middle; image-rendering: pixelated; margin-right: 6px; }
tr.xv-state-running td, tr.xv-state-queued td { background: #eef4fb; }
tr.xv-state-flagged td, tr.xv-state-failed td { background: #fdf1e6; }
"""


class InstructorPage:
    """The instructor's page: a summary line, the participants' table (updated every `period_ms` while the
    page is open) and a CSV download of it."""

    def __init__(self, spaces: Workspaces, period_ms: int = PERIOD_MS):
        self.spaces, self.period_ms = spaces, period_ms
        self.summary = pn.pane.Markdown("", css_classes=["xv-instructor-summary"], margin=(0, 10))
        self.table = pn.pane.HTML("", css_classes=["xv-participants"], stylesheets=[STYLE],
                                  sizing_mode="stretch_width", margin=(0, 10))
        self.download = pn.widgets.FileDownload(callback=self.csv_file, filename="workshop-participants.csv",
                                                label="Download the table (CSV)", color="primary",
                                                css_classes=["xv-csv"], width=260, margin=(5, 10))
        self.frame = pd.DataFrame()
        self._thumbnails: dict[str, tuple[tuple, str | None]] = {}     # per participant: (what it shows, URI)
        self.refresh()

    def csv_file(self) -> io.StringIO:
        return io.StringIO(participants_csv(self.spaces))

    def refresh(self) -> None:
        """Read every workspace again; redraw what changed."""
        self.frame = participants(self.spaces)
        rows = self.frame.to_dict("records")
        table = table_html(self.frame, [self._thumbnail(row) for row in rows])
        if table != self.table.object:
            self.table.object = table
        queue = self.spaces.queue.snapshot()
        mode = ("one workspace per participant, in " + f"`{self.spaces.folder}`" if self.spaces.per_user
                else "one workspace shared by everyone")
        summary = (f"**{len(self.frame)} participant{'s' * (len(self.frame) != 1)}** ({mode}) · fine-tuning: "
                   f"{queue['running']} running, {queue['waiting']} waiting, at most {queue['max_runs']} at once · "
                   f"updated {time.strftime('%H:%M:%S')}")
        self.summary.object = summary

    def _thumbnail(self, row: dict) -> str | None:
        """The participant's last painted image, drawn again only when their annotations changed."""
        shows = (row["annotations"], row["last painted"])
        known = self._thumbnails.get(row["participant"])
        if known is None or known[0] != shows:
            known = shows, thumbnail_uri(self.spaces.workbench(row["participant"]), row["last painted"])
            self._thumbnails[row["participant"]] = known
        return known[1]

    def template(self) -> pn.template.BootstrapTemplate:
        """The page, updating itself while a browser shows it."""
        if pn.state.curdoc is not None and pn.state.curdoc.session_context is not None:
            pn.state.add_periodic_callback(self.refresh, period=self.period_ms)
        return pn.template.BootstrapTemplate(title="xcam-viz · instructor", header_background="#2f5d8a",
                                             main=[self.summary, self.download, self.table])
