"""Workspaces: one shared by a team annotating together, or one per participant of a workshop.

A participant's workspace is their own feedback store and model lineage, starting from the server's
base model (the same v0 for everyone); the data, the caches and the base model's maps are shared
(`Workbench.for_participant`). Per-user workspaces live under one folder and survive a restart:

    <folder>/workspaces.json         the fingerprint of the model every workspace starts from
    <folder>/.secret                 signs anonymous participants' cookies and the instructor's link
    <folder>/<name>/workspace.json   the participant's name as given
    <folder>/<name>/feedback.db      their feedback (SQLite); feedback-versions/ and feedback-concepts.db beside it

Folder names are participants' names made safe for any file system (`folder_name`).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
import unicodedata
from pathlib import Path

from .. import models
from ..finetune.runqueue import RunQueue
from .workbench import SHARED, Workbench

MODES = ("shared", "per-user")
COOKIE = "xcam_viz_participant"          # an anonymous participant's signed name
INFO = "workspace.json"


def folder_name(name: str) -> str:
    """A participant's name as a folder name: lower-case letters, digits, - and _, at most 48 characters;
    a name that had to change gets a hash of the original, so two names never share a folder (nor do
    "Ana" and "ana" on a case-insensitive disk)."""
    text = unicodedata.normalize("NFKC", str(name)).strip()
    if not text:
        raise ValueError("a participant needs a name (got an empty one)")
    safe = re.sub(r"[^a-z0-9_-]+", "_", text.lower()).strip("_-")[:40]
    if safe != text:
        safe = f"{safe or 'participant'}-{hashlib.sha256(text.encode()).hexdigest()[:7]}"
    return safe


def default_folder(feedback_path) -> Path:
    """Where per-user workspaces go when no folder is given: `<feedback database stem>-workspaces/` beside it."""
    path = Path(feedback_path)
    return path.with_name(f"{path.stem}-workspaces")


class Workspaces:
    """The workspaces of a server: `workbench(name)` is the Workbench a participant works in.

    Args:
        root: the server's Workbench (the data, the base model, the caches); in "shared" mode everyone's.
        mode: "shared" (one workspace for everyone) or "per-user" (one per participant, made on first use).
        folder: where per-user workspaces live (default: `default_folder` of the root's feedback database).
        queue: the fine-tuning queue every workspace shares (default: the root's).
    """

    def __init__(self, root: Workbench, mode: str = "shared", folder=None, queue: RunQueue | None = None):
        if mode not in MODES:
            raise ValueError(f"workspaces must be one of {', '.join(MODES)}, got {mode!r}")
        self.root, self.mode = root, mode
        root.queue = queue or root.queue
        self._open: dict[str, Workbench] = {}
        self._lock = threading.Lock()
        self.folder = Path(folder or default_folder(root.feedback.path)) if self.per_user else None
        self.secret = self._prepare() if self.per_user else secrets.token_bytes(32)

    @property
    def per_user(self) -> bool:
        return self.mode == "per-user"

    @property
    def queue(self) -> RunQueue:
        return self.root.queue

    def __repr__(self) -> str:
        where = f" in {self.folder}" if self.per_user else ""
        return f"Workspaces({self.mode}{where}: {len(self.names())})"

    def _prepare(self) -> bytes:
        """Make the folder (checking it can be written), check it was made for this model; returns its secret."""
        folder = self.folder
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".write-test-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as err:
            raise ValueError(f"cannot write workspaces to {folder} ({err.strerror or err}): give a folder you may "
                             "write to with --workspace-dir") from None
        base = self.root.model(self.root.base_version)
        fingerprint = models.fingerprint(base)
        info = folder / "workspaces.json"
        if info.exists():
            made_for = json.loads(info.read_text()).get("model")
            if made_for != fingerprint:
                raise ValueError(f"the workspaces in {folder} were made for another model (fingerprint {made_for}, "
                                 f"this one's is {fingerprint}): give another --workspace-dir, or remove that folder "
                                 "to start the workshop again")
        else:
            info.write_text(json.dumps({"model": fingerprint, "created": time.time()}))
        return _secret(folder / ".secret")

    def workbench(self, name: str | None = None) -> Workbench:
        """The Workbench of participant `name` (per-user: opened, or made from the base model, on first use);
        in shared mode everyone's."""
        if not self.per_user:
            return self.root
        folder = self.folder / folder_name(name)
        with self._lock:
            if folder.name not in self._open:
                folder.mkdir(exist_ok=True)
                if not (folder / INFO).exists():
                    (folder / INFO).write_text(json.dumps({"name": name, "created": time.time()}))
                self._open[folder.name] = self.root.for_participant(name, folder / "feedback.db")
            return self._open[folder.name]

    def names(self) -> list[str]:
        """The participants, in the order they joined (per-user: every workspace in the folder; shared: one)."""
        if not self.per_user:
            return [SHARED]
        found = []
        for info in self.folder.glob(f"*/{INFO}"):
            try:
                meta = json.loads(info.read_text())
            except (OSError, ValueError):           # being written, or damaged: listed once readable
                continue
            if folder_name(meta.get("name", "")) == info.parent.name:
                found.append((meta.get("created", 0), meta["name"]))
        return [name for _, name in sorted(found)]

    # --- anonymous participants and the instructor's link ------------------------------------------
    def _signature(self, text: str) -> str:
        return hmac.new(self.secret, text.encode(), hashlib.sha256).hexdigest()[:24]

    def new_guest(self) -> tuple[str, str]:
        """A name for an anonymous participant and its signed cookie value."""
        name = f"guest-{secrets.token_hex(3)}"
        return name, f"{name}.{self._signature(name)}"

    def guest(self, cookie: str | None) -> str | None:
        """The name a cookie value made by `new_guest` carries (None if missing or not signed here)."""
        name, _, signature = (cookie or "").rpartition(".")
        return name if name and hmac.compare_digest(signature, self._signature(name)) else None

    @property
    def instructor_key(self) -> str:
        """The key of the instructor's link (`/instructor?key=...`): the same across restarts of a folder."""
        return self._signature("instructor")


def _secret(path: Path) -> bytes:
    """A random key kept in `path` (readable by this user only), made on first use."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return bytes.fromhex(path.read_text().strip())
    key = secrets.token_bytes(32)
    with os.fdopen(fd, "w") as out:
        out.write(key.hex())
    return key
