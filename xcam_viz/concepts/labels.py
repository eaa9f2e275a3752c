"""Concept labels of units, persisted in SQLite with their full history."""
from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import xarray as xr

_SCHEMA = """
CREATE TABLE IF NOT EXISTS unit_labels (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    layer TEXT NOT NULL, unit INTEGER NOT NULL, name TEXT NOT NULL, iou REAL NOT NULL,
    sample_id TEXT NOT NULL, author TEXT NOT NULL, time REAL NOT NULL
);
"""


class LabelStore:
    """Append-only unit labels: the current label of a unit is its latest row."""

    def __init__(self, path: str | Path = ":memory:"):
        self.path = str(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        if self.path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def add(self, layer: str, units: dict[int, float], name: str, sample_id: str, author: str = "") -> None:
        """Label `units` (unit -> IoU) of `layer` as `name`, in one transaction."""
        now = time.time()
        with self._lock, self._db:
            self._db.executemany(
                "INSERT INTO unit_labels (layer, unit, name, iou, sample_id, author, time) VALUES (?,?,?,?,?,?,?)",
                [(layer, u, name, iou, sample_id, author, now) for u, iou in units.items()])

    def current(self, layer: str) -> dict[int, tuple[str, float]]:
        """unit -> (label, IoU that gave it) for every labelled unit of `layer`."""
        with self._lock:
            rows = self._db.execute("SELECT unit, name, iou FROM unit_labels WHERE layer=? ORDER BY id",
                                    (layer,)).fetchall()
        return {u: (name, iou) for u, name, iou in rows}

    def names(self, presets: tuple[str, ...] | list[str] = ()) -> list[str]:
        """`presets` (e.g. a data set's attrs["concepts"]) followed by every label used so far."""
        with self._lock:
            used = [r[0] for r in self._db.execute("SELECT DISTINCT name FROM unit_labels ORDER BY name")]
        return list(dict.fromkeys([*presets, *used]))

    def history(self) -> xr.Dataset:
        """Every labelling event, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT id, layer, unit, name, iou, sample_id, author, time "
                                    "FROM unit_labels ORDER BY id").fetchall()
        cols = list(zip(*rows)) if rows else [[]] * 8
        return xr.Dataset({k: ("event", list(v)) for k, v in
                           zip(["layer", "unit", "name", "iou", "sample_id", "author", "time"], cols[1:])},
                          coords={"event": list(cols[0])})
