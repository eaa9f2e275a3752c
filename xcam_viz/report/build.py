"""Explanation reports: what the model does on chosen images and on whole data sets, in numbers.

A report is two xarray Datasets: `images` (per chosen image: prediction, CAMs per method and
layer, evidence, faithfulness metrics, active concepts, feedback) and `overview` (accuracy and
confusion by split, class-mean CAMs, the shortcut indicator, concept dictionary, fine-tuning
history). Each report carries a version; building one from a `previous` report lists what is
new (concept labels, model weights, feedback), so reports grow finer with every interaction.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import xarray as xr
from torch import nn

from .. import metrics
from ..data import ImageSet
from ..evidence import evidence as evidence_map
from ..explain import explain
from ..feedback import union_masks
from ..models import default_layer, fingerprint, predict
from ..spatial import axis_names


class Report:
    """The numbers of one report version; `save` writes HTML (interactive, offline) or netCDF."""

    def __init__(self, images: xr.Dataset, overview: xr.Dataset, version: int, changes: list[str]):
        self.images, self.overview, self.version, self.changes = images, overview, version, changes

    @property
    def title(self) -> str:
        """The report's name: the model version it was built from (when given) and its own version."""
        model = self.overview.attrs.get("model_version")
        return f"report v{self.version} of model {model}" if model else f"report v{self.version}"

    def __repr__(self) -> str:
        return (f"{self.title}: {self.images.sizes.get('sample', 0)} images, splits "
                f"{list(self.overview.split.values)}, {self.overview.sizes.get('concept', 0)} concepts")

    def save(self, path) -> Path:
        """Write `*.html` (one self-contained page) or `*.nc` (netCDF with groups images / overview)."""
        path = Path(path)
        if path.suffix == ".html":
            from .html import write_html
            return write_html(self, path)
        if path.suffix == ".nc":
            path.unlink(missing_ok=True)
            meta = {"version": self.version, "changes": "\n".join(self.changes)}
            self.images.assign_attrs(meta).to_netcdf(path, group="images", mode="w")
            self.overview.to_netcdf(path, group="overview", mode="a")
            return path
        raise ValueError(f"save to a .html or .nc path, got {path.name!r}")


def report(model: nn.Module, data: ImageSet, samples=4, methods=("gradcam", "hirescam"), layers=None,
           evidence: str | None = "efficient", splits: dict[str, ImageSet] | None = None, feedback=None,
           units=None, history: xr.Dataset | None = None, previous: Report | None = None,
           model_version: str | None = None, faithfulness: bool = True) -> Report:
    """Build a report of `model` on `data`: per-image CAMs, evidence and scores, and data-set sections.

    Args:
        model: the classifier to report on. data: the ImageSet whose images are explained in detail.
        samples: how many images (the first n) or a list of sample ids to explain in detail.
        methods, layers: the CAM methods and layers (default layers: `xv.models.default_layer`).
        evidence: the evidence method for the chosen images ("efficient", "pda") or None.
        splits: named data sets for accuracy / confusion / shortcut (default {"data": data}).
        feedback: a FeedbackStore (annotations per image; user-marked relevant regions for the shortcut
            indicator).
        units: a dissected `xcam_viz.concepts.Units` (its labels make the concept dictionary).
        history: a fine-tuning history Dataset. previous: the report this one refines.
        model_version: the name of the model's version (e.g. "v1"), which names the report.
        faithfulness: score each map by deletion / insertion AUC (2 × 33 model passes per image and map;
            most of the time a report of a large model takes).

    Returns:
        A `Report` (`.images`, `.overview` xarray Datasets; `.save("x.html" | "x.nc")`).

    Example:
        >>> import xcam_viz as xv
        >>> from xcam_viz.demo import demo_data, demo_model
        >>> rep = xv.report(demo_model(progress=False), demo_data("test", n=8), samples=2, evidence=None)
        >>> rep.version, sorted(rep.images.sizes)
        (1, ['channel', 'layer', 'method', 'sample', 'x', 'y'])
    """
    ids = data.ids[:samples] if isinstance(samples, int) else [str(s) for s in samples]
    chosen = data.subset([data.index_of(s) for s in ids])
    splits = splits or {"data": data}
    layers = layers or [default_layer(model, tuple(data.images.shape[1:]))]
    images = _image_section(model, chosen, list(methods), list(layers), evidence, feedback, units, faithfulness)
    overview = _overview(model, splits, methods[0], layers[0], feedback, units, history)
    overview.attrs.update(model_fingerprint=fingerprint(model), created=time.time())
    if model_version is not None:
        overview.attrs["model_version"] = str(model_version)
    version, changes = _changes(previous, overview, feedback)
    return Report(images, overview, version, changes)


def _image_section(model, chosen: ImageSet, methods, layers, evidence, feedback, units,
                   faithfulness: bool) -> xr.Dataset:
    pred = predict(model, chosen)
    cams = xr.concat([xr.concat([explain(model, chosen, method=m, layer=layer).drop_vars(
        ["target_class", "target_name"], errors="ignore") for layer in layers], dim=xr.Variable("layer", layers))
        for m in methods], dim=xr.Variable("method", methods))
    grid = tuple(chosen.images.shape[2:])
    space = axis_names(len(grid))                       # ("y", "x"), or ("z", "y", "x") for volumes
    ds = xr.Dataset({
        "image": (("sample", "channel", *space), chosen.images.numpy()),
        "label": ("sample", chosen.labels.numpy()),
        "predicted": ("sample", pred.predicted.values),
        "confidence": ("sample", pred.confidence.values),
        "cam": cams.transpose("sample", "method", "layer", *space).variable,
    }, coords={"sample": chosen.ids, "method": methods, "layer": layers,
               **{axis: np.arange(n) for axis, n in zip(space, grid)}},
        attrs={"class_names": list(chosen.class_names), "labelled": int(chosen.attrs.get("labelled", True))})
    per_map = lambda score: (("method", "layer", "sample"), np.stack(  # noqa: E731
        [[score(cams.sel({"method": m, "layer": layer})).values for layer in layers] for m in methods]))
    if chosen.masks is not None:
        ds["mask"] = (("sample", *space), chosen.masks.numpy())
        ds["pointing_game"] = per_map(lambda c: metrics.pointing_game(c, chosen))
        ds["energy_pointing_game"] = per_map(lambda c: metrics.energy_pointing_game(c, chosen))
    if faithfulness:
        ds["deletion_auc"] = per_map(lambda c: metrics.deletion_auc(model, chosen, c))
        ds["insertion_auc"] = per_map(lambda c: metrics.insertion_auc(model, chosen, c))
    if evidence:
        ev = evidence_map(model, chosen, method=evidence, progress=False)
        ds["evidence"] = (("sample", *space), ev.values)
        ds.attrs["evidence_method"] = evidence
    if feedback is not None:
        notes = [feedback.annotations(s) for s in chosen.ids]
        ds["feedback_count"] = ("sample", [len(a) for a in notes])
        ds["feedback_kinds"] = ("sample", [", ".join(sorted({k for a in n for k in ("relevant", "irrelevant", "label")
                                                             if getattr(a, k, None) is not None})) for n in notes])
    if units is not None:
        tables = [units.concept_table(s) for s in chosen.ids]
        concepts = sorted({c for t in tables for c in t.concept.values.tolist()})
        for var in ("units", "mean_activation", "mean_iou"):
            ds[f"concept_{var}"] = (("sample", "concept"), np.array(
                [[float(t[var].sel(concept=c)) if c in t.concept.values else np.nan for c in concepts]
                 for t in tables]).reshape(len(tables), len(concepts)))
        ds = ds.assign_coords(concept=concepts)
        ds.attrs["concept_layer"] = units.layer
    return ds


def _overview(model, splits: dict[str, ImageSet], method: str, layer: str, feedback, units, history) -> xr.Dataset:
    names = list(splits)
    first = next(iter(splits.values()))
    k = len(first.class_names)
    acc, confusion, class_cams, outside = [], [], [], []
    for ds in splits.values():
        pred = predict(model, ds)
        acc.append(float(pred.correct.mean()))
        confusion.append(np.bincount(ds.labels.numpy() * k + pred.predicted.values, minlength=k * k).reshape(k, k))
        mean_cam, indicator = _cam_summary(model, ds, method, layer, feedback, k)
        class_cams.append(mean_cam)
        outside.append(indicator)
    out = xr.Dataset({
        "accuracy": ("split", acc),
        "confusion": (("split", "true", "predicted_class"), np.stack(confusion)),
        "class_mean_cam": (("split", "class", *axis_names(first.images.ndim - 2)), np.stack(class_cams)),
        "cam_mass_outside_relevant": (("split", "class"), np.stack(outside)),
    }, coords={"split": names, "class": first.class_names, "true": first.class_names,
               "predicted_class": first.class_names},
        attrs={"cam_method": method, "cam_layer": layer})
    if units is not None:
        current = units.labels.current(units.layer)
        concepts = sorted({n for n, _ in current.values()})
        out = out.assign_coords(concept=concepts)
        out["concept_units"] = ("concept", [", ".join(str(u) for u, (n, _) in sorted(current.items()) if n == c)
                                            for c in concepts])
        out["concept_unit_count"] = ("concept", [sum(n == c for n, _ in current.values()) for c in concepts])
        out.attrs["label_events"] = len(units.labels.history().event)
    if history is not None:
        for var in history.data_vars:
            out[f"history_{var}"] = history[var].rename({d: f"history_{d}" for d in history[var].dims})
    return out


def _cam_summary(model, ds: ImageSet, method: str, layer: str, feedback, k: int, batch_size: int = 256):
    """Per class, the mean CAM of a split and the shortcut indicator, explained `batch_size` images at a time
    (a lazy split is never held whole)."""
    sums, shares, has = None, [], []
    labels = ds.labels.numpy()
    for start in range(0, len(ds), batch_size):
        sub = ds.subset(range(start, min(start + batch_size, len(ds))))
        cams = explain(model, sub, method=method, layer=layer).values
        part = np.stack([cams[sub.labels.numpy() == c].sum(0) for c in range(k)])
        sums = part if sums is None else sums + part
        share, marked = _outside_share(cams, sub, feedback)
        shares.append(share)
        has.append(marked)
    counts = np.bincount(labels, minlength=k)
    mean_cam = np.stack([sums[c] / counts[c] if counts[c] else np.full(sums.shape[1:], np.nan) for c in range(k)])
    share, has = np.concatenate(shares), np.concatenate(has)
    indicator = np.array([np.nanmean(share[(labels == c) & has]) if ((labels == c) & has).any() else np.nan
                          for c in range(k)])
    return mean_cam, indicator


def _outside_share(cams: np.ndarray, ds: ImageSet, feedback) -> tuple[np.ndarray, np.ndarray]:
    """Per image, the share of CAM mass outside the relevant region (user-marked where given, else the
    ground-truth mask), and whether it has a relevant region at all."""
    relevant = ds.masks.numpy().copy() if ds.masks is not None else np.zeros(cams.shape, bool)
    has = relevant.reshape(len(relevant), -1).any(1)
    if feedback is not None:
        for i, sid in enumerate(ds.ids):
            marked = union_masks(feedback.annotations(sid), relevant.shape[1:])[0]
            if marked.any():
                relevant[i], has[i] = marked, True
    mass = cams.reshape(len(cams), -1).sum(1)
    share = np.where(mass > 0, (cams * ~relevant).reshape(len(cams), -1).sum(1) / np.maximum(mass, 1e-12), np.nan)
    return share, has


def _changes(previous: Report | None, overview: xr.Dataset, feedback) -> tuple[int, list[str]]:
    feedback_count = len(feedback) if feedback is not None else 0
    overview.attrs["feedback_count"] = feedback_count
    if previous is None:
        return 1, ["first report"]
    old, changes = previous.overview, []
    new_concepts = sorted(set(overview.coords.get("concept", xr.DataArray([])).values.tolist())
                          - set(old.coords.get("concept", xr.DataArray([])).values.tolist()))
    if new_concepts:
        changes.append("new concepts: " + ", ".join(new_concepts))
    if overview.attrs.get("label_events", 0) > old.attrs.get("label_events", 0):
        changes.append(f"{overview.attrs['label_events'] - old.attrs.get('label_events', 0)} new unit labels")
    if overview.attrs["model_fingerprint"] != old.attrs["model_fingerprint"]:
        changes.append("model weights changed (fine-tuned or another version)")
    if feedback_count > old.attrs.get("feedback_count", 0):
        changes.append(f"{feedback_count - old.attrs.get('feedback_count', 0)} new annotations")
    return previous.version + 1, changes or ["no change since the previous version"]

