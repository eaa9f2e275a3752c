"""Where a server keeps what it writes: the feedback database, model versions and concept labels beside it."""
from __future__ import annotations

import os
from pathlib import Path

from torch import nn


def default_versions_dir(feedback) -> Path:
    """Model versions live next to the feedback database: <name>-versions/."""
    path = Path(feedback.path)
    return path.with_name(f"{path.stem}-versions")


def versions_registry(model: nn.Module, directory):
    """A ModelVersions registry in `directory`, or None for a model that cannot be saved (not built by xv)."""
    from ..finetune import ModelVersions

    return ModelVersions(directory) if getattr(model, "xcam_arch", None) else None


def default_labels_path(feedback) -> Path:
    """Concept labels of units live next to the feedback database: <name>-concepts.db."""
    path = Path(feedback.path)
    return path.with_name(f"{path.stem}-concepts.db")


def default_feedback_path(demo: str = "demo") -> Path:
    """Where feedback goes when no store is given: $XCAM_VIZ_FEEDBACK, else <demo>-feedback.db in
    $XCAM_VIZ_CACHE or ~/.cache/xcam-viz (each demo its own, so their model versions never mix)."""
    if os.environ.get("XCAM_VIZ_FEEDBACK"):
        return Path(os.environ["XCAM_VIZ_FEEDBACK"])
    root = os.environ.get("XCAM_VIZ_CACHE") or Path.home() / ".cache" / "xcam-viz"
    return Path(root) / f"{demo}-feedback.db"
