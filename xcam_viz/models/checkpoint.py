"""Safe checkpoints: architecture + weights + metadata, written atomically, read without unpickling code."""
from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from pathlib import Path

import torch
from torch import nn

from .zoo import build

FORMAT = "xcam-viz/1"


def save(model: nn.Module, path, meta: dict | None = None) -> Path:
    """Write `model` (one that `build` made) to `path` atomically: temporary file, fsync, rename."""
    arch = getattr(model, "xcam_arch", None)
    if arch is None:
        raise ValueError("this model was not made by xv.models.build, so it cannot be rebuilt from a "
                         "checkpoint; save its state_dict with torch.save instead")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "arch": dict(arch), "meta": dict(meta or {}),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(path, map_location="cpu") -> nn.Module:
    """Rebuild a model saved by `save`. Files that are not ours, or carry code, are refused."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as err:
        raise ValueError(f"{path} is not a safe xcam-viz checkpoint (refused to unpickle it: "
                         f"{str(err).splitlines()[0][:200]}). Only files written by xv.models.save load.") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not an xcam-viz checkpoint (no '{FORMAT}' format tag); "
                         "for a plain state_dict use xv.models.build(name, weights=path)")
    arch = dict(payload["arch"])
    model = build(arch.pop("name"), **arch)
    model.load_state_dict(payload["state_dict"])
    model.xcam_meta = dict(payload.get("meta", {}))
    return model.eval()


def fingerprint(model: nn.Module) -> str:
    """A short hash of the model's parameters and buffers (changes whenever the weights do)."""
    h = hashlib.sha1()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]
