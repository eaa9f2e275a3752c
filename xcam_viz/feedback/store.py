"""`FeedbackStore`: explanation feedback in an append-only SQLite database that loses nothing.

Design
- One row per event in table `annotations`. `kind='add'` rows hold an annotation: relevant /
  irrelevant masks (`masks.encode`'s bytes with their height and width, and depth for a volume's
  D×H×W mask; rows of older stores hold 1-bit PNGs, which still read), a class correction, author,
  time (UNIX seconds) and the model version the feedback was given against. Rows are never
  updated or deleted.
- Undo appends a tombstone: a `kind='undo'` row whose `target` is the undone annotation's `uid`
  (and whose own uid is `undo:<target>`, so an annotation is undone at most once, also across
  imports). "Live" annotations are the `add` rows without a tombstone.
- Every `uid` is unique, so importing the same export twice adds nothing (idempotent merges).
- WAL journal, `synchronous=FULL` (a committed row survives a crash of the process or the
  machine), a busy timeout, and one short transaction per write (`add_many`: one for all).
  Each thread (and each forked process) uses its own connection, so one store object can be
  shared by the dashboard's server threads and by processes; SQLite serialises the writers.
"""
from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from ..data import ImageSet
from ..spatial import axis_names
from . import masks as maskcodec
from .feedbackset import NO_LABEL, FeedbackSet

FORMAT = "xcam-viz-feedback/1"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS annotations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uid TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL CHECK (kind IN ('add', 'undo')),
    sample_id TEXT NOT NULL,
    target TEXT,
    relevant BLOB,
    irrelevant BLOB,
    height INTEGER,
    width INTEGER,
    depth INTEGER,
    label INTEGER,
    author TEXT,
    time REAL NOT NULL,
    model_version TEXT
);
CREATE INDEX IF NOT EXISTS annotations_sample ON annotations (sample_id);
CREATE INDEX IF NOT EXISTS annotations_target ON annotations (target);
"""
_INHERITED: list[sqlite3.Connection] = []   # connections a forked child inherited (kept open, unused)
_LIVE = ("SELECT * FROM annotations a WHERE kind = 'add' AND NOT EXISTS "
         "(SELECT 1 FROM annotations u WHERE u.kind = 'undo' AND u.target = a.uid)")


@dataclass(frozen=True)
class Annotation:
    """One annotation: masks are H×W (images) or D×H×W (volumes) bool arrays or None, label an int
    or None, time in UTC."""

    id: int
    sample_id: str
    relevant: np.ndarray | None
    irrelevant: np.ndarray | None
    label: int | None
    author: str
    time: datetime
    model_version: str | None
    uid: str = field(repr=False)
    undone: bool = False

    @property
    def shape(self) -> tuple[int, ...] | None:
        """H×W or D×H×W of its masks, None for a label-only annotation."""
        m = self.relevant if self.relevant is not None else self.irrelevant
        return None if m is None else m.shape


class FeedbackStore:
    """Explanation feedback for samples, kept in the SQLite file `path` (created if missing).

    Every `add` is one committed transaction, so nothing reported as saved is lost on a crash; several
    processes and threads may write at once (WAL mode, `timeout` seconds of waiting for a lock).

    Args:
        path: the database file (not ":memory:").
        dataset: an optional `ImageSet`; when bound, annotations for ids it does not hold, masks of
            another size than its images (H×W, or D×H×W for volumes) and labels outside its classes
            are refused.
        timeout: seconds to wait for another writer's lock.

    Example:
        >>> import tempfile, numpy as np, xcam_viz as xv
        >>> store = xv.FeedbackStore(tempfile.mkdtemp() + "/feedback.db")
        >>> mask = np.zeros((64, 64), bool); mask[:8, :8] = True
        >>> store.add("test-0001", irrelevant=mask, author="ana") > 0
        True
        >>> len(store), store.sample_ids()
        (1, ['test-0001'])
    """

    def __init__(self, path, dataset: ImageSet | None = None, timeout: float = 60.0):
        if str(path) == ":memory:":
            raise ValueError("a FeedbackStore lives in a file (each connection would see another "
                             "in-memory database); give a path, e.g. a temporary file")
        self.path = Path(path)
        self.dataset = dataset
        self.timeout = timeout
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        con = self._connect()
        con.execute("PRAGMA journal_mode=WAL")
        with self._write() as con:
            for statement in filter(str.strip, _SCHEMA.split(";")):
                con.execute(statement)
            columns = {r["name"] for r in con.execute("PRAGMA table_info(annotations)")}
            if "depth" not in columns:          # a store made before volumes: its rows stay as they are
                con.execute("ALTER TABLE annotations ADD COLUMN depth INTEGER")

    def __repr__(self) -> str:
        return f"FeedbackStore({str(self.path)!r}, {len(self)} annotations on {len(self.sample_ids())} samples)"

    def _connect(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use, and again in a forked child)."""
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            if hasattr(local, "con"):       # inherited through fork: never use, never close it here
                _INHERITED.append(local.con)
            local.con = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
            local.con.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
            local.con.execute("PRAGMA synchronous=FULL")
            local.con.row_factory = sqlite3.Row
            local.pid = os.getpid()
        return local.con

    def close(self) -> None:
        """Close this thread's connection (the next call opens a new one)."""
        local = self._local
        if getattr(local, "pid", None) == os.getpid():
            local.con.close()
            del local.con, local.pid

    @contextmanager
    def _write(self):
        """A short write transaction, taken at once (BEGIN IMMEDIATE) so it never deadlocks."""
        con = self._connect()
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    def _query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with closing(self._connect().execute(sql, args)) as cur:
            return cur.fetchall()

    # -- writing ---------------------------------------------------------------------------
    def add(self, sample_id, relevant=None, irrelevant=None, label: int | None = None,
            author: str = "anonymous", model_version: str | None = None) -> int:
        """Record one annotation of `sample_id`; returns its id.

        relevant: "look here" mask; irrelevant: "this is a shortcut" mask (H×W, or D×H×W for a
        volume; bool or 0/1, floats thresholded at 0.5); label: the corrected class index. Give at
        least one.
        """
        return self.add_many([dict(sample_id=sample_id, relevant=relevant, irrelevant=irrelevant, label=label,
                                   author=author, model_version=model_version)])[0]

    def add_many(self, annotations) -> list[int]:
        """Record several annotations (dicts of `add`'s arguments) in one transaction: all or none.

        Returns their ids."""
        rows = [self._row(**a) for a in annotations]
        with self._write() as con:
            return [self._insert(con, r) for r in rows]

    def _row(self, sample_id, relevant=None, irrelevant=None, label=None, author: str = "anonymous",
             model_version=None, uid: str | None = None, when: float | None = None) -> dict:
        """Validate one annotation and turn it into a table row."""
        sample_id = str(sample_id)
        if relevant is None and irrelevant is None and label is None:
            raise ValueError(f"annotation of {sample_id!r} holds nothing: give relevant=, irrelevant= or label=")
        if not isinstance(author, str) or not author:
            raise ValueError("author must be a non-empty string (who gave this feedback)")
        ds = self.dataset
        if ds is not None and sample_id not in ds._index:
            raise KeyError(f"unknown sample id {sample_id!r}: the store is bound to a data set without it "
                           f"(ids look like {ds.ids[:3]}); annotate one of its samples, or open the "
                           "store without dataset=")
        spatial = None if ds is None else tuple(ds.image_shape[1:])
        masks = {k: None if m is None else maskcodec.as_mask(m, f"{k} mask of sample {sample_id!r}",
                                                              spatial_dims=None if ds is None else ds.spatial_dims)
                 for k, m in (("relevant", relevant), ("irrelevant", irrelevant))}
        shapes = {m.shape for m in masks.values() if m is not None}
        if len(shapes) > 1:
            raise ValueError(f"the relevant and irrelevant masks of sample {sample_id!r} differ in size "
                             f"({sorted(shapes)}); give both at the image's size")
        shape = shapes.pop() if shapes else None
        if shape is not None and spatial is not None and shape != spatial:
            raise ValueError(f"mask of sample {sample_id!r} is {_size(shape)} but its image is {_size(spatial)}; "
                             "give masks at the image's size (resize the mask to the image first)")
        if label is not None:
            if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or label < 0:
                raise ValueError(f"label of sample {sample_id!r} must be a class index >= 0, got {label!r}")
            if ds is not None and label >= len(ds.class_names):
                raise ValueError(f"label {label} of sample {sample_id!r} is not a class of the data set "
                                 f"(0..{len(ds.class_names) - 1}: {ds.class_names})")
        return {"uid": uid or uuid.uuid4().hex, "kind": "add", "sample_id": sample_id, "target": None,
                "relevant": None if masks["relevant"] is None else maskcodec.encode(masks["relevant"]),
                "irrelevant": None if masks["irrelevant"] is None else maskcodec.encode(masks["irrelevant"]),
                "height": None if shape is None else shape[-2], "width": None if shape is None else shape[-1],
                "depth": shape[0] if shape is not None and len(shape) == 3 else None,
                "label": None if label is None else int(label), "author": author,
                "time": time.time() if when is None else when,
                "model_version": None if model_version is None else str(model_version)}

    @staticmethod
    def _insert(con: sqlite3.Connection, row: dict) -> int:
        cols = ", ".join(row)
        cur = con.execute(f"INSERT OR IGNORE INTO annotations ({cols}) VALUES ({', '.join('?' * len(row))})",
                          tuple(row.values()))
        return cur.lastrowid if cur.rowcount else 0

    def undo(self, sample_id) -> int | None:
        """Undo the newest live annotation of `sample_id` (appends a tombstone row).

        Returns the undone annotation's id, or None when the sample has nothing left to undo.
        """
        with self._write() as con:
            last = con.execute(_LIVE + " AND sample_id = ? ORDER BY id DESC LIMIT 1", (str(sample_id),)).fetchone()
            if last is None:
                return None
            con.execute("INSERT INTO annotations (uid, kind, sample_id, target, time) VALUES (?, 'undo', ?, ?, ?)",
                        (f"undo:{last['uid']}", last["sample_id"], last["uid"], time.time()))
            return last["id"]

    # -- reading ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._query(f"SELECT COUNT(*) FROM ({_LIVE})")[0][0]

    def sample_ids(self) -> list[str]:
        """Ids of the samples with live annotations, in the order they were first annotated."""
        return [r[0] for r in self._query(f"SELECT sample_id FROM ({_LIVE}) GROUP BY sample_id ORDER BY MIN(id)")]

    def latest_sample_id(self) -> str | None:
        """The sample of the newest live annotation (None when there is none)."""
        rows = self._query(_LIVE + " ORDER BY id DESC LIMIT 1")
        return rows[0]["sample_id"] if rows else None

    def annotations(self, sample_id=None) -> list[Annotation]:
        """Live annotations of one sample (all samples when None), oldest first."""
        where, args = ("", ()) if sample_id is None else (" AND sample_id = ?", (str(sample_id),))
        return [_annotation(r) for r in self._query(_LIVE + where + " ORDER BY id", args)]

    def history(self, sample_id=None) -> list[Annotation]:
        """Every annotation ever added (undone ones flagged `undone=True`), oldest first."""
        where, args = ("", ()) if sample_id is None else (" AND a.sample_id = ?", (str(sample_id),))
        rows = self._query("SELECT a.*, EXISTS (SELECT 1 FROM annotations u WHERE u.kind = 'undo' AND "
                           "u.target = a.uid) AS undone FROM annotations a WHERE a.kind = 'add'"
                           + where + " ORDER BY a.id", args)
        return [_annotation(r) for r in rows]

    def feedback(self, dataset: ImageSet | None = None) -> FeedbackSet:
        """The union of the live annotations per sample (the newest label wins) as a `FeedbackSet`.

        With `dataset` (default: the bound one) the set is restricted to, and ordered like, its samples.
        """
        dataset = dataset if dataset is not None else self.dataset
        per_sample: dict[str, list[Annotation]] = {}
        for a in self.annotations():
            per_sample.setdefault(a.sample_id, []).append(a)
        ids = list(per_sample)
        if dataset is not None:
            ids = sorted((s for s in ids if s in dataset._index), key=dataset._index.__getitem__)
        shapes = {a.shape for s in ids for a in per_sample[s] if a.shape is not None}
        if dataset is not None:
            shapes.add(tuple(dataset.image_shape[1:]))
        if len(shapes) > 1:
            raise ValueError(f"the store holds masks of several sizes {sorted(shapes)}; collect feedback "
                             "per data set with store.feedback(dataset)")
        if not ids:
            return FeedbackSet.empty(shapes.pop() if shapes else (0, 0))
        shape = shapes.pop() if shapes else (0, 0)
        out = {k: torch.zeros(len(ids), *shape, dtype=torch.bool) for k in ("relevant", "irrelevant")}
        has = {k: torch.zeros(len(ids), dtype=torch.bool) for k in out}
        labels = torch.full((len(ids),), NO_LABEL, dtype=torch.long)
        for i, sid in enumerate(ids):
            for kind, mask in zip(out, maskcodec.union_masks(per_sample[sid], shape)):
                out[kind][i], has[kind][i] = torch.from_numpy(mask), bool(mask.any())   # masks are never empty
            for a in per_sample[sid]:
                if a.label is not None:
                    labels[i] = a.label
        return FeedbackSet(ids, out["relevant"], out["irrelevant"], has["relevant"], has["irrelevant"], labels)

    def masks(self, dataset: ImageSet, kind: str = "relevant") -> tuple[torch.Tensor, torch.Tensor]:
        """Dense masks for every sample of `dataset` (N×H×W bool, union of live annotations) and
        which samples have one (N bool). kind: "relevant" or "irrelevant"."""
        if kind not in ("relevant", "irrelevant"):
            raise ValueError(f"kind must be 'relevant' or 'irrelevant', got {kind!r}")
        fb = self.feedback(dataset)
        dense = torch.zeros(len(dataset), *dataset.image_shape[1:], dtype=torch.bool)
        has = torch.zeros(len(dataset), dtype=torch.bool)
        pos = torch.tensor([dataset.index_of(s) for s in fb.sample_ids], dtype=torch.long)
        if len(pos):
            dense[pos] = getattr(fb, kind)
            has[pos] = getattr(fb, f"has_{kind}")
        return dense, has

    # -- exchange --------------------------------------------------------------------------
    def to_xarray(self) -> xr.Dataset:
        """The whole history as an xr.Dataset along `annotation` (undone ones flagged), masks padded
        to the largest size with their own `height` / `width`. When any mask is a volume's, the masks
        have a `z` axis and a `depth` (0: an image's H×W mask, stored in z = 0)."""
        items = self.history()
        spatial_dims = max([len(a.shape) for a in items if a.shape is not None], default=2)
        shapes = np.array([_padded_shape(a.shape, spatial_dims) for a in items], np.int32).reshape(-1, spatial_dims)
        largest = tuple(shapes.max(0)) if len(items) else (0,) * spatial_dims
        dims = ("annotation", *axis_names(spatial_dims))
        data = {}
        for kind in ("relevant", "irrelevant"):
            padded = np.zeros((len(items), *largest), bool)
            for i, a in enumerate(items):
                m = getattr(a, kind)
                if m is not None:
                    m = m.reshape(_padded_shape(m.shape, spatial_dims, fill=1))
                    padded[(i, *(slice(0, n) for n in m.shape))] = m
            data[kind] = (dims, padded)
            data[f"has_{kind}"] = ("annotation", np.array([getattr(a, kind) is not None for a in items], bool))
        if spatial_dims == 3:
            data["depth"] = ("annotation", shapes[:, 0])
        data.update(
            uid=("annotation", np.array([a.uid for a in items], dtype=object)),
            sample_id=("annotation", np.array([a.sample_id for a in items], dtype=object)),
            height=("annotation", shapes[:, -2]),
            width=("annotation", shapes[:, -1]),
            label=("annotation", np.array([NO_LABEL if a.label is None else a.label for a in items], np.int64)),
            author=("annotation", np.array([a.author for a in items], dtype=object)),
            time=("annotation", np.array([round(a.time.timestamp() * 1e6) for a in items], "datetime64[us]")),
            model_version=("annotation", np.array([a.model_version or "" for a in items], dtype=object)),
            undone=("annotation", np.array([a.undone for a in items], bool)))
        return xr.Dataset(data, coords={"annotation": np.array([a.id for a in items], np.int64)},
                          attrs={"format": FORMAT})

    def to_netcdf(self, path) -> Path:
        """Export the whole history to a netCDF file (masks zlib-compressed)."""
        ds = self.to_xarray()
        enc = {k: {"zlib": True} for k in ("relevant", "irrelevant")} if ds.sizes["annotation"] else {}
        ds.to_netcdf(path, encoding=enc)
        return Path(path)

    def import_xarray(self, ds: xr.Dataset) -> int:
        """Merge an export (`to_xarray`) into this store; annotations it already holds (same uid) are
        skipped. Returns how many annotations were added."""
        if ds.attrs.get("format") != FORMAT:
            raise ValueError(f"not an xcam-viz feedback export (attribute format={ds.attrs.get('format')!r}, "
                             f"want {FORMAT!r}); write one with FeedbackStore.to_netcdf")
        rows, undone = [], []
        for i in range(ds.sizes["annotation"]):
            box = (slice(0, int(ds.height[i])), slice(0, int(ds.width[i])))
            if "depth" in ds:            # an export with volumes: depth 0 marks an image's mask, kept in z = 0
                depth = int(ds.depth[i])
                box = (slice(0, depth) if depth else 0, *box)
            m = {k: ds[k].values[i][box] if bool(ds[f"has_{k}"][i]) else None for k in ("relevant", "irrelevant")}
            label = int(ds.label[i])
            uid = str(ds.uid.values[i])
            rows.append(self._row(str(ds.sample_id.values[i]), m["relevant"], m["irrelevant"],
                                  None if label == NO_LABEL else label, str(ds.author.values[i]),
                                  str(ds.model_version.values[i]) or None, uid=uid, when=_seconds(ds.time.values[i])))
            if bool(ds.undone[i]):
                undone.append({"uid": f"undo:{uid}", "kind": "undo", "sample_id": rows[-1]["sample_id"],
                               "target": uid, "time": _seconds(ds.time.values[i])})
        with self._write() as con:
            added = sum(self._insert(con, r) > 0 for r in rows)
            for r in undone:
                self._insert(con, r)
        return added

    def import_netcdf(self, path) -> int:
        """Merge a netCDF export into this store (see `import_xarray`); returns how many were added."""
        if not os.path.exists(path):
            raise FileNotFoundError(f"feedback export {path} does not exist")
        with xr.open_dataset(path) as ds:
            return self.import_xarray(ds.load())

    @classmethod
    def from_xarray(cls, ds: xr.Dataset, path, dataset: ImageSet | None = None) -> FeedbackStore:
        """A store at `path` holding the export `ds` (merged into it if the file already exists)."""
        store = cls(path, dataset=dataset)
        store.import_xarray(ds)
        return store

    @classmethod
    def from_netcdf(cls, nc_path, path, dataset: ImageSet | None = None) -> FeedbackStore:
        """A store at `path` holding the netCDF export `nc_path`."""
        store = cls(path, dataset=dataset)
        store.import_netcdf(nc_path)
        return store


def _annotation(r: sqlite3.Row) -> Annotation:
    return Annotation(id=r["id"], sample_id=r["sample_id"],
                      relevant=None if r["relevant"] is None else maskcodec.decode(r["relevant"]),
                      irrelevant=None if r["irrelevant"] is None else maskcodec.decode(r["irrelevant"]),
                      label=r["label"], author=r["author"],
                      time=datetime.fromtimestamp(r["time"], timezone.utc), model_version=r["model_version"],
                      uid=r["uid"], undone=bool(r["undone"]) if "undone" in r.keys() else False)


def _size(shape: tuple[int, ...]) -> str:
    return "×".join(map(str, shape))


def _padded_shape(shape: tuple[int, ...] | None, spatial_dims: int, fill: int = 0) -> tuple[int, ...]:
    """`shape` (None: a label only, all 0) with `fill` in front up to `spatial_dims` axes."""
    shape = tuple(shape or (0, 0))
    return (fill,) * (spatial_dims - len(shape)) + shape


def _seconds(t: np.datetime64) -> float:
    """UNIX seconds of a (UTC) datetime64."""
    return float((t - np.datetime64(0, "us")) / np.timedelta64(1, "us")) / 1e6
