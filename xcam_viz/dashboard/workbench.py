"""The shared side of the dashboard: data splits, model versions, predictions, maps and feedback.

One `Workbench` serves every browser session of a workspace (a server's only one, or each participant's:
`for_participant`, sharing the data, caches and base model with the others): it holds the heavy read-only
things and caches what the core computes (captures per image, layer and target; finished maps; predictions),
so a method change reuses a capture and costs no model pass. Model passes are serialised by a lock
(capture hooks live on the shared model). It imports no Panel: the dashboard's logic is testable
without a browser.
"""
from __future__ import annotations

import contextlib
import copy
import threading
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import nn

from .. import models
from ..concepts.labels import LabelStore
from ..data import ImageSet, check_images
from ..data.loading import check_channels
from ..data.views import decode
from ..evidence import METHODS as EVIDENCE_METHODS
from ..finetune.runqueue import RunQueue
from ..models.kind import is_segmenter
from . import splits as split_rules
from .cache import LRUCache
from .maps import MapRequest, MapResult, NotFinite, region_value
from .stores import default_feedback_path, default_labels_path, default_versions_dir, versions_registry

NO_LABEL = "no label"
SHARED = "shared"           # the name of the workspace everyone shares



@contextlib.contextmanager
def one_thread():
    """Run torch on one intra-op thread in this block (restored afterwards).

    One image at a time gains little from intra-op threads, and on a busy CPU (other sessions, a
    fine-tuning run) their synchronisation costs several times the work: measured 12 vs 51 ms (p50)
    for a 64 px smallcnn capture and 0.2 vs 1.2 s for resnet18 at 224 px with the CPU oversubscribed.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Workbench:
    """Data splits, model versions and the feedback store shared by all sessions, with caches."""

    def __init__(self, model: nn.Module, splits: dict[str, ImageSet] | ImageSet, feedback=None,
                 versions_dir=None, capture_bytes: int = 512 * 2**20):
        self.splits = dict(splits) if isinstance(splits, dict) else {"data": splits}
        if not self.splits:
            raise ValueError("give at least one data split")
        for name, data in self.splits.items():
            if not data.lazy:                               # lazy readers check each image as they decode it
                check_images(data.images, f"images of split {name!r}")
        check_channels(model, self.splits)
        self.shared_splits = frozenset(self.splits)         # every workspace's (uploads are each one's own)
        self.lock = threading.RLock()                       # one model pass at a time
        self.captures = LRUCache(capture_bytes)
        self.maps = LRUCache(64 * 2**20)
        self.thumbnails = LRUCache(64 * 2**20)              # decoded images of the pages shown (lazy splits)
        self.pictures = LRUCache(64 * 2**20)                # full-resolution pictures of the images selected
        self.queue = RunQueue()                             # fine-tuning runs, shared by every workspace
        self.workspace = SHARED                             # whose workspace: SHARED, or a participant's name
        self._own(model.eval(), feedback, versions_dir)

    def _own(self, model: nn.Module, feedback, versions_dir=None) -> None:
        """What a workspace keeps for itself: feedback, model versions from `model`, concept labels, and what
        is computed per version."""
        if feedback is None or isinstance(feedback, (str, Path)):
            from ..feedback import FeedbackStore

            feedback = FeedbackStore(feedback or default_feedback_path())
        self.feedback = feedback
        self.registry = versions_registry(model, versions_dir or default_versions_dir(feedback))
        self.base_version = self.registry.register(model) if self.registry is not None else "v0"
        self._models: dict[str, nn.Module] = {self.base_version: model}
        self._predictions: dict[tuple[str, str], xr.Dataset] = {}
        self._layers: dict[str, list] = {}
        self._meta: dict[str, dict] = {}
        self._kinds: dict[str, bool] = {}
        self.measured: dict[str, dict] = {}     # versions saved without metrics: {"metrics", "layer", "method"}
        self.labels = LabelStore(default_labels_path(feedback))   # concept labels, shared by every layer
        self.held_out = {train: split_rules.held_out_positions(self.splits, train, self.feedback_ids(train))
                         for train in self.training_splits()}       # None where another split scores runs
        self._units: dict[tuple, object] = {}
        self._embeddings: dict[tuple, xr.Dataset] = {}

    def for_participant(self, name: str, feedback) -> Workbench:
        """A Workbench of one participant's own: feedback in the SQLite file `feedback`, model versions beside
        it that start from this one's base model, concept labels and uploads. The data, the base model, the
        caches, the model lock and the run queue stay shared, so the base model's maps are computed once."""
        own = copy.copy(self)
        own.splits, own.workspace = dict(self.splits), name
        own._own(self.model(self.base_version), feedback)
        base, mine = self.base_version, own.base_version
        own._predictions = {(mine, split): p for (version, split), p in self._predictions.items()
                            if version == base and split in self.shared_splits}
        own._layers = {mine: self._layers[base]} if base in self._layers else {}
        own._kinds = {mine: self._kinds[base]} if base in self._kinds else {}
        return own

    def version_key(self, version: str):
        """A version in the keys of the shared caches: the base model is every workspace's, others their own."""
        return "base" if version == self.base_version else (self.workspace, version)

    @classmethod
    def demo(cls, feedback=None) -> Workbench:
        """The embedded demo: the demo smallcnn, the train, test and flipped splits, a cached feedback store."""
        from ..demo import demo_model

        return cls(demo_model(progress=False), split_rules.demo_splits(), feedback)

    def warm(self) -> Workbench:
        """Compute what every new session needs first (the layers, and the predictions of the splits that are
        cheap to predict whole, for the version sessions open on), so sessions open quickly. Other versions are
        computed when first shown: a demo cache holding many fine-tuned versions would otherwise cost a pass over
        every image per version."""
        self.layers(self.base_version)
        for split, data in self.splits.items():
            if split_rules.predicted_upfront(data):         # others are predicted page by page
                self.predictions(self.base_version, split)
        return self

    # --- splits (the rules: splits.py) ---------------------------------------------------------------
    @property
    def opening_split(self) -> str:
        return split_rules.opening_split(self.splits)

    def outcomes(self, version: str, split: str, ids: list[str]) -> list[bool | None]:
        """Per image, whether the prediction is right (None in a split without true labels: uploads)."""
        if split not in split_rules.labelled_splits(self.splits):
            return [None] * len(ids)
        return [bool(v) for v in self.sample_predictions(version, split, ids).correct.values]

    def true_label(self, split: str, label: int) -> str:
        """A true label in words ("no label" in a split without true labels)."""
        return self.class_names(split)[int(label)] if split in split_rules.labelled_splits(self.splits) else NO_LABEL

    def training_splits(self) -> list[str]:
        return split_rules.training_splits(self.splits)

    def evaluation_splits(self, train: str | None) -> list[str]:
        return split_rules.evaluation_splits(self.splits, train)

    def drop_caches(self) -> None:
        """Forget the cached captures, maps, thumbnails and pictures (every workspace's: they are shared), e.g.
        once no session is open; they are computed again when next shown."""
        for cache in (self.captures, self.maps, self.thumbnails, self.pictures):
            cache.clear()

    # --- model versions -------------------------------------------------------------------------
    @property
    def versions(self) -> list[str]:
        """Model version names, oldest first (the registry's, when the model can be saved)."""
        return self.registry.list() if self.registry is not None else list(self._models)

    def model(self, version: str) -> nn.Module:
        """The model of a version (loaded from the registry on first use)."""
        if version not in self._models:
            if version not in self.versions:
                raise KeyError(f"unknown model version {version!r}; versions: {self.versions}")
            with self.lock:
                self._models.setdefault(version, self.registry.load(version).eval())
        return self._models[version]

    def add_version(self, name: str, model: nn.Module) -> str:
        """Keep a (fine-tuned) model of the registry in memory under its version name."""
        self._models[name] = model.eval()
        return name

    def version_meta(self, version: str) -> dict:
        """The metadata saved with a version (parent, settings, metrics); versions never change, so it is cached."""
        if version not in self._meta:
            self._meta[version] = self.registry.meta(version) if self.registry is not None else {}
        return self._meta[version]

    def parent(self, version: str) -> str | None:
        """The version `version` was fine-tuned from (None for a starting model)."""
        return self.version_meta(version).get("parent")

    def scores(self, version: str) -> dict:
        """What a version was scored on: {"metrics": {"test/accuracy": ...}, "layer", "method"} (the CAM the
        pointing games and IoUs were computed with), saved with it or measured by a later run from it."""
        meta = self.version_meta(version)
        if meta.get("metrics"):
            return {"metrics": meta["metrics"], "layer": meta.get("layer"), "method": meta.get("method")}
        return self.measured.get(version, {"metrics": {}, "layer": None, "method": None})

    def finetune(self, version: str, split: str, owner: str | None = None, **settings):
        """Queue xv.finetune from `version` on the feedback saved now for the training split `split`; returns
        the run's `Ticket` in the shared `queue`: it runs in a process of its own when a slot is free (`owner`,
        default the workspace, may have one run at a time). Settings left out (or None) are the core's defaults.

        Before/after metrics are measured on the other labelled splits, or on the held-out share of `split`
        when there is none (`evaluation_data`); the core holds its validation images out of the rest. The new
        model becomes the registry's next version.
        """
        if self.registry is None:
            raise ValueError("this model was not made by xv.models.build, so its versions cannot be saved: "
                             "fine-tuning from the dashboard needs a model xv.models.build / xv.models.load made")
        if split not in self.training_splits():
            raise ValueError(f"fine-tuning trains on {' or '.join(self.training_splits()) or 'a training split'}, "
                             f"not on {split!r}" + ("" if self.training_splits() else
                                                   ": give the dashboard a labelled split named 'train'"))
        data = self.training_data(split)
        feedback = self.feedback.feedback(data)            # what is saved now: later strokes count next time
        if not len(feedback):
            raise ValueError(f"no feedback saved on {split} yet: paint a region on a few of its images in the "
                             "Feedback tab and save each one, then launch")
        job = self.queue.process_job(dict(model=None, ds=data, feedback=feedback, base_version=version,
                                          versions_dir=self.registry.directory,
                                          eval_data=self.evaluation_data(split), **settings))
        return self.queue.submit(job, owner or self.workspace, self.workspace)

    def evaluation_data(self, train: str | None) -> dict[str, ImageSet]:
        """What a run on `train` is scored on: the other labelled splits, else its held-out share (HELD_OUT)."""
        held = self.held_out.get(train)
        if held is None:
            return {name: self.splits[name] for name in self.evaluation_splits(train)}
        return {split_rules.HELD_OUT: self.splits[train].subset(held)} if len(held) else {}

    def training_data(self, train: str) -> ImageSet:
        """The images of `train` a run may train on (all but its held-out share)."""
        held = self.held_out.get(train)
        if held is None or not len(held):
            return self.splits[train]
        keep = torch.ones(len(self.splits[train]), dtype=torch.bool)
        keep[held] = False
        return self.splits[train].subset(keep)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """C×H×W, or C×D×H×W for volumes."""
        return tuple(next(iter(self.splits.values())).image_shape)

    @property
    def spatial_dims(self) -> int:
        """2 for images, 3 for volumes (every split holds one kind)."""
        return len(self.input_shape) - 1

    @property
    def spacing(self) -> tuple[float, ...]:
        """The voxel size in mm (z, y, x) of the first split that says, else 1 per axis."""
        return next((data.spacing for data in self.splits.values() if data.spacing), (1.0,) * self.spatial_dims)

    @property
    def window(self) -> str:
        """The display window the data was loaded with (its `attrs["window"]`: a preset, 'level/width' or min-max)."""
        return next(iter(self.splits.values())).attrs.get("window") or "min-max"

    def layers(self, version: str) -> list[tuple[str, tuple[int, ...]]]:
        """The model's spatial layers with their output shapes (C, h, w; volumes C, d, h, w)."""
        if version not in self._layers:
            with self.lock:
                self._layers[version] = models.spatial_layers(self.model(version), self.input_shape)
        return self._layers[version]

    def default_layer(self, version: str) -> str:
        """The layer a view shows first: `xv.models.default_layer` of the version's model."""
        with self.lock:
            return models.default_layer(self.model(version), self.input_shape)

    def is_segmenter(self, version: str | None = None) -> bool:
        """Whether the version's model is a segmenter (xv.models.kind decides; cached per version)."""
        version = version or self.base_version
        if version not in self._kinds:
            with self.lock:
                self._kinds[version] = is_segmenter(self.model(version), self.input_shape)
        return self._kinds[version]

    def methods(self, version: str | None = None) -> list[str]:
        """CAM methods that fit the model, then (for classifiers) the evidence methods, by their core names."""
        from ..explain import methods_for

        if self.is_segmenter(version):
            return methods_for(segmenter=True)
        return methods_for(segmenter=False) + list(EVIDENCE_METHODS)

    def concept_names(self) -> list[str]:
        """Concept names to offer: the data sets' presets (attrs["concepts"]), then every label used so far."""
        presets = [name for data in self.splits.values() for name in data.attrs.get("concepts", ())]
        return self.labels.names(list(dict.fromkeys(presets)))

    def class_names(self, split: str | None = None) -> list[str]:
        return list(self.splits[split or next(iter(self.splits))].class_names)

    # --- data and predictions -------------------------------------------------------------------
    def predictions(self, version: str, split: str) -> xr.Dataset:
        """xv.models.predict of a split (probability, predicted, confidence, label, correct), cached."""
        key = (version, split)
        if key not in self._predictions:
            data = self.splits[split]
            with self.lock:
                self._predictions[key] = models.predict(self.model(version), data)
        return self._predictions[key]

    def sample_predictions(self, version: str, split: str, ids: list[str], compute: bool = True) -> xr.Dataset | None:
        """`predictions` of some samples only: taken from the split's when computed, else computed for just
        these samples (a page of a large lazy split) and cached; compute=False gives None instead of computing."""
        if (version, split) in self._predictions:
            return self._predictions[(version, split)].sel(sample=list(ids))
        key = ("predictions", self.version_key(version), split, tuple(ids))
        if not compute:
            return self.thumbnails.get(key)
        data = self.splits[split]

        def predict():
            images = torch.from_numpy(np.stack([self.image(split, s) for s in ids])).movedim(-1, 1)
            page = ImageSet(images, data.labels[[data.index_of(s) for s in ids]], ids=ids, class_names=data.class_names)
            with self.lock:
                return models.predict(self.model(version), page)   # the thumbnails' pixels: decoded once
        return self.thumbnails.get_or_compute(key, predict)

    def add_images(self, split: str, images: torch.Tensor, ids: list[str]) -> list[str]:
        """Append images (N×C×H×W in [0, 1] at the input size) to a split, created if new; ids it holds
        already are kept as they are. The images have no true label (class 0). Returns `ids`."""
        if tuple(images.shape[1:]) != self.input_shape:
            raise ValueError(f"images are {tuple(images.shape[1:])}, the model takes {self.input_shape}: "
                             "fit them first (xv.data.fit)")
        check_images(images, f"images for split {split!r}")
        with self.lock:
            old = self.splits.get(split)
            new = [i for i, sid in enumerate(ids) if old is None or sid not in old._index]
            if new:
                pos = torch.tensor(new)
                images, labels, names = images[pos], torch.zeros(len(new), dtype=torch.long), [ids[i] for i in new]
                if old is not None:
                    images, labels, names = (torch.cat([old.images, images]), torch.cat([old.labels, labels]),
                                             old.ids + names)
                self.splits[split] = ImageSet(images, labels, ids=names, class_names=self.class_names(),
                                              attrs={"split": split, "labelled": False})
                for key in [k for k in self._predictions if k[1] == split]:
                    del self._predictions[key]
        return ids

    def image(self, split: str, sample: str) -> np.ndarray:
        """The sample's image as the model takes it, channels last (H×W×C, volumes D×H×W×C), float32 in [0, 1]."""
        data = self.splits[split]
        if not data.lazy:
            return data.images[data.index_of(sample)].movedim(0, -1).numpy()
        return self.thumbnails.get_or_compute(("image", split, sample), lambda: self._decode(split, sample)[0])

    def model_input(self, split: str, sample: str) -> torch.Tensor:
        """The sample's image as a 1×C×*S batch for the model."""
        return torch.from_numpy(self.image(split, sample)).movedim(-1, 0)[None]

    def thumbnail(self, split: str, sample: str) -> np.ndarray:
        """A small uint8 picture of the sample (at most `views.THUMBNAIL` px), decoded once."""
        return self.thumbnails.get_or_compute(("thumbnail", split, sample), lambda: self._decode(split, sample)[1])

    def picture(self, split: str, sample: str) -> tuple[np.ndarray, tuple[int, int]]:
        """The sample at up to full resolution (uint8 H×W grey or H×W×3; a volume D×H×W) and the stored file's
        (height, width) (a volume's grid)."""
        return self.pictures.get_or_compute(("picture", split, sample), lambda: self._decode(split, sample)[2:])

    def _decode(self, split: str, sample: str) -> tuple:
        """One decode of the sample's file gives its model input, thumbnail and picture; the first two are cached."""
        data = self.splits[split]
        view = decode(data, data.index_of(sample))
        image = view.image.movedim(0, -1).numpy()
        if data.lazy:
            self.thumbnails.put(("image", split, sample), image)
        self.thumbnails.put(("thumbnail", split, sample), view.thumbnail)
        return image, view.thumbnail, view.picture, view.stored

    def ground_truth(self, split: str, sample: str) -> np.ndarray | None:
        data = self.splits[split]
        return None if not data.has_masks else data[data.index_of(sample)].mask.numpy()

    def feedback_ids(self, split: str) -> set[str]:
        """Ids of the split's samples that have saved feedback."""
        return set(self.feedback.sample_ids()) & set(self.splits[split].ids)

    # --- maps -----------------------------------------------------------------------------------
    def resolve_target(self, request: MapRequest) -> int | str:
        """The class a request explains: "predicted" becomes the predicted class of a classifier when its
        predictions are known already; otherwise the capture's own forward finds it (no extra model pass)."""
        if request.target != "predicted":
            return int(request.target)
        if self.is_segmenter(request.version):
            return "predicted"
        known = self.sample_predictions(request.version, request.split, [request.sample], compute=False)
        return "predicted" if known is None else int(known.predicted[0])

    def capture(self, request: MapRequest, target: int | str):
        """The cached capture of (version, image, layer, target, region): one forward + gradient pass."""
        from ..explain import capture

        key = ("capture", self.version_key(request.version), request.split, request.sample, request.layer, target,
               request.region)

        def compute():
            data = self.splits[request.split]
            i = data.index_of(request.sample)
            x = self.model_input(request.split, request.sample)
            with self.lock, one_thread():
                cap = capture(self.model(request.version), x, [request.layer], target, region_value(request.region))
            if target == "predicted" and cap.logits.ndim == 2:   # the forward's logits are the prediction too:
                prob = models.probabilities(cap.logits).cpu().numpy()  # keep it, and the capture under its class
                predictions_key = ("predictions", self.version_key(request.version), request.split, (request.sample,))
                self.thumbnails.put(predictions_key, models.prediction_dataset(prob, data.subset([i])))
                self.captures.put((*key[:5], int(cap.target[0]), key[6]), cap)
            return cap
        return self.captures.get_or_compute(key, compute)

    def saliency(self, request: MapRequest, compute: bool = True) -> MapResult | None:
        """The map a request asks for, from the caches when possible; compute=False gives None if not known."""
        key = (self.version_key(request.version), request)
        return self.maps.get_or_compute(key, lambda: self._compute(request)) if compute else self.maps.get(key)

    def _compute(self, request: MapRequest) -> MapResult:
        from ..explain import finish, weigh

        start = time.perf_counter()
        target = self.resolve_target(request)
        data = self.splits[request.split]
        if request.method in EVIDENCE_METHODS:
            from ..evidence import evidence

            x = self.model_input(request.split, request.sample)
            with self.lock, one_thread():
                ev = evidence(self.model(request.version), x, method=request.method,
                              target=target, data=data, progress=False)
            return MapResult(request, ev.values[0].astype(np.float32), True, int(ev.target.values[0]),
                             time.perf_counter() - start)
        cap = self.capture(request, target)
        with self.lock, one_thread():                     # Score-CAM runs the model
            cam = weigh(cap, request.method, request.layer)
        values = finish(cam, tuple(data.image_shape[1:])).float()[0].numpy()
        if not (torch.isfinite(cap.logits).all() and np.isfinite(values).all()):     # finish would hide NaN
            raise NotFinite(f"the model's outputs for {request.sample} are NaN or infinite, so its map is meaningless")
        return MapResult(request, values, False, int(cap.target[0]), time.perf_counter() - start)

    def explain_split(self, version: str, split: str, method: str, layer: str,
                      compute: bool = True) -> xr.DataArray | None:
        """CAMs of a whole split (for sorting by a metric), cached; compute=False gives None if not known."""
        from ..explain import explain

        def run():
            with self.lock:
                return explain(self.model(version), self.splits[split], method=method, layer=layer)
        own = split if split in self.shared_splits else (self.workspace, split)       # uploads are not shared
        key = ("split", self.version_key(version), own, method, layer)
        return self.maps.get_or_compute(key, run) if compute else self.maps.get(key)

    # --- concepts -------------------------------------------------------------------------------
    def units(self, version: str, split: str, layer: str):
        """xv.concepts.dissect of a layer over a split, labelled in the shared LabelStore; cached per
        (version, split and its size, layer)."""
        from ..concepts import dissect

        key = (version, split, len(self.splits[split]), layer)
        with self.lock:
            if key not in self._units:
                self._units[key] = dissect(self.model(version), self.splits[split], layer, labels=self.labels,
                                           progress=False)
            return self._units[key]

    def unit_embedding(self, version: str, split: str, layer: str) -> xr.Dataset:
        """xv.concepts.embed_units of those units (PCA coordinates and clusters; labels change, read them
        from `labels`), cached."""
        from ..concepts import embed_units

        key = (version, split, len(self.splits[split]), layer)
        if key not in self._embeddings:
            self._embeddings[key] = embed_units(self.units(version, split, layer))
        return self._embeddings[key]
