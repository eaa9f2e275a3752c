"""`ModelVersions`: a folder of numbered model checkpoints (v0, v1, ...) that are never overwritten."""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

from torch import nn

from .. import models

_NAME = re.compile(r"^v(\d+)$")


class ModelVersions:
    """Model versions in `directory`: `v<N>.pt` files written atomically by `xv.models.save`.

    A version, once written, is never replaced: `save_new` claims the next free number with an
    exclusive lock file, so concurrent writers (threads or processes) never collide. Each
    checkpoint's metadata records its `version`, `parent` and `created` time plus what the
    caller adds (e.g. the fine-tuning settings and metrics).
    """

    def __init__(self, directory):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"ModelVersions({str(self.directory)!r}: {', '.join(self.list()) or 'empty'})"

    def __contains__(self, name: str) -> bool:
        return name in self.list()

    def __len__(self) -> int:
        return len(self.list())

    def path(self, name: str) -> Path:
        if not _NAME.match(str(name)):
            raise ValueError(f"version names look like 'v0', 'v1', ...; got {name!r}")
        return self.directory / f"{name}.pt"

    def list(self) -> list[str]:
        """Version names, oldest first."""
        found = [p.stem for p in self.directory.glob("v*.pt") if _NAME.match(p.stem)]
        return sorted(found, key=lambda n: int(n[1:]))

    @property
    def latest(self) -> str | None:
        """The newest version's name (None when there is none)."""
        names = self.list()
        return names[-1] if names else None

    def load(self, name: str | None = None) -> nn.Module:
        """The model of version `name` (default: the latest); its metadata is in `model.xcam_meta`."""
        name = name or self.latest
        if name is None:
            raise FileNotFoundError(f"no model versions in {self.directory} yet; save one with save_new(model)")
        path = self.path(name)
        if not path.exists():
            raise KeyError(f"no version {name!r} in {self.directory}; there are {self.list()}")
        return models.load(path)

    def meta(self, name: str) -> dict:
        """The metadata stored with version `name`."""
        return self.load(name).xcam_meta

    def find(self, model: nn.Module) -> str | None:
        """The newest version holding exactly `model`'s weights (by fingerprint), or None."""
        fp = models.fingerprint(model)
        return next((n for n in reversed(self.list()) if self.meta(n).get("fingerprint") == fp), None)

    def register(self, model: nn.Module, meta: dict | None = None) -> str:
        """`model`'s version name: the one holding its weights, else a new version saved now."""
        return self.find(model) or self.save_new(model, meta={**_own_meta(model), **(meta or {})})

    def save_new(self, model: nn.Module, parent: str | None = None, meta: dict | None = None) -> str:
        """Save `model` as the next version (atomically: temporary file, fsync, rename); returns its name.

        The metadata gets `version`, `parent`, `created` and the weights' `fingerprint`."""
        while True:
            taken = [int(n[1:]) for n in self.list()]
            number = max(taken, default=-1) + 1
            lock = self.directory / f".v{number}.lock"
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:         # another writer claims it, or one died holding it
                try:
                    stale = time.time() - lock.stat().st_mtime > 600
                except FileNotFoundError:
                    continue
                if stale:
                    lock.unlink(missing_ok=True)
                time.sleep(0.05)
                continue
            os.close(fd)
            try:
                name = f"v{number}"
                if self.path(name).exists():    # written meanwhile by a writer that has released its lock
                    continue
                models.save(model, self.path(name), meta={**(meta or {}), "version": name, "parent": parent,
                                                          "created": time.time(),
                                                          "fingerprint": models.fingerprint(model)})
                return name
            finally:
                lock.unlink(missing_ok=True)


def _own_meta(model: nn.Module) -> dict:
    """A loaded checkpoint's metadata without what belongs to its old version (name, parent, time)."""
    return {k: v for k, v in getattr(model, "xcam_meta", {}).items()
            if k not in ("version", "parent", "created", "fingerprint")}
