"""`xv.finetune`: fine-tune a classifier on explanation feedback, from one model version to the next.

Each batch mixes a share of annotated images (they are few, so they are drawn again and again)
with other training images; the run's strategies (`strategies.py`: counterexamples made from the
painted regions, explanation losses) change the batch or add terms to cross-entropy. An epoch is
one pass over the images without feedback. Adam with a cosine-decaying learning rate. After each
epoch a validation split, carved from the training images when none is given (never from a test
split), is scored; the best epoch's weights are kept and the run stops early when the score stops
improving. A run whose validation accuracy ends more than `FLAG_DROP` below where it started is
still saved as a version, but flagged (a rebalancing run compares its balanced accuracy instead: the
plain one rewards the shortcut it unlearns). Batch-norm statistics stay frozen.

Why the centred logit: softmax ignores a shift of all logits, so the CAM of a plain logit can
hide a shortcut (the marker made to count against every class, more against one) while the
decision still rests on it; CAM losses explain the target logit minus the mean logit. A final
linear layer is centred first (a softmax-invariant reparametrisation), so the plain CAMs of the
new version equal the trained ones.
"""
from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import xarray as xr
from torch import nn

from .. import models
from ..data import ImageSet
from ..feedback import FeedbackSet, FeedbackStore
from . import loop
from .counterexamples import Donors
from .job import Cancelled, Control, FinetuneJob
from .strategies import DEFAULTS, defaults_for, resolve
from .versions import ModelVersions

FLAG_DROP = 0.02           # validation accuracy may fall this much before a run is flagged


@dataclass
class FinetuneResult:
    """What a fine-tuning run produced.

    model: the fine-tuned model (eval mode); version: its name in `versions` (None if the run was
    cancelled: a cancelled run saves nothing); base_version: the version it started from;
    metrics: accuracy / pointing_game / iou by (stage: before, after) × split, the validation split
    included (NaN where not measured); history: per-step loss, ce, explanation and epoch;
    validation: the validation scores after each epoch; best_epoch: the epoch whose weights were
    kept; flagged: validation accuracy fell more than FLAG_DROP (the version is saved, but do not
    switch to it without looking); warning: why, in words.
    """

    model: nn.Module
    version: str | None
    base_version: str
    versions: ModelVersions
    metrics: xr.Dataset
    history: xr.Dataset
    settings: dict = field(default_factory=dict)
    cancelled: bool = False
    seconds: float = 0.0
    validation: list = field(default_factory=list)
    best_epoch: int = 0
    flagged: bool = False
    warning: str = ""

    def __repr__(self) -> str:
        state = "cancelled" if self.cancelled else f"-> {self.version}" + (" (flagged)" if self.flagged else "")
        steps = self.history.sizes.get("step", 0)
        return f"FinetuneResult({self.base_version} {state}, {steps} steps)\n{self.summary()}"

    def scores(self, stage: str = "after") -> dict[str, float]:
        """The metrics of one stage flattened as {"<split>/<metric>": value} (how versions save them)."""
        return flat_scores(self.metrics, stage)

    def summary(self) -> str:
        """The before/after metrics as a markdown table (and the warning of a flagged run)."""
        rows = ["| split | metric | before | after |", "|---|---|---|---|"]
        for split in self.metrics.split.values:
            for name in self.metrics.data_vars:
                b, a = (float(self.metrics[name].sel(stage=s, split=split)) for s in ("before", "after"))
                if np.isfinite(b) or np.isfinite(a):
                    rows.append(f"| {split} | {name} | {b:.3f} | {a:.3f} |")
        return "\n".join(rows) + (f"\n\n**flagged:** {self.warning}" if self.flagged else "")


def finetune(model: nn.Module | None, ds: ImageSet, feedback: FeedbackStore | FeedbackSet, strategy: str = "auto",
             layer: str | None = None, method: str = "gradcam", lam: float | None = None, epochs: int | None = None,
             lr: float | None = None, batch_size: int | None = None, feedback_share: float | None = None,
             patience: int | None = None, warmup: float | None = None, validation: ImageSet | None = None,
             base_version: str | None = None,
             versions_dir=None, eval_data: dict[str, ImageSet] | None = None, seed: int = 0,
             background: bool = False, on_progress=None):
    """Fine-tune `model` on the training images `ds` with explanation `feedback`; returns a
    `FinetuneResult` (background=True: a `FinetuneJob` at once; its `.result()` gives it).

    Args:
        feedback: a FeedbackStore or a FeedbackSet (what `xv.feedback.simulate` returns).
        strategy: "auto" (what benchmarks/feedback_repair.py found best for the kinds of feedback
            given), one name of `xcam_viz.finetune.STRATEGIES`, or names joined by "+".
        layer, method: the CAM that CAM-loss strategies correct and that pointing games score
            (default: `xv.models.default_layer`, Grad-CAM).
        lam: weight of the explanation-loss strategies, normalised against cross-entropy (1: as
            large as cross-entropy at the start); 0 turns them off.
        epochs, lr, batch_size, feedback_share, patience: the most epochs, Adam's learning rate, the
            images per step, the share of each batch drawn from the annotated images, epochs without a
            better validation score before stopping; warmup: epochs over which the learning rate ramps up
            linearly first. None: `DEFAULTS` (images) or `VOLUME_DEFAULTS` (volumes), the settings the
            benchmarks picked.
        validation: the images that pick the best epoch; default: a stratified share of the
            training images without feedback, held out of training.
        base_version, versions_dir: the run starts from `base_version` of the registry in
            `versions_dir` (model may then be None) or from `model`, saved as a version first unless
            the registry holds its weights. The result is the next version; none is overwritten.
        eval_data: {"test": ImageSet, ...} scored before and after (accuracy; pointing game and IoU
            of `method` CAMs of `layer` for the predicted class against the ground-truth masks).
        on_progress: called with the progress dict after every step (from the job's thread).

    The model passed in is never changed: the run trains a copy.

    Example:
        >>> import xcam_viz as xv
        >>> from xcam_viz.demo import demo_data, demo_model
        >>> train = demo_data("train", n=200)
        >>> fb = xv.feedback.simulate(train, fraction=0.05, kind="irrelevant")
        >>> result = xv.finetune(demo_model(progress=False), train, feedback=fb, epochs=1)
        >>> result.version
        'v1'
    """
    if not isinstance(ds, ImageSet):
        raise TypeError(f"ds must be an ImageSet (the images the feedback was given on), got {type(ds).__name__}")
    picked = {k: v for k, v in dict(lam=lam, epochs=epochs, lr=lr, batch_size=batch_size,
                                    feedback_share=feedback_share, patience=patience, warmup=warmup).items()
              if v is not None}
    settings = {**{k: v for k, v in defaults_for(ds.spatial_dims).items() if k != "validation_share"}, **picked,
                "layer": layer, "method": method, "seed": seed}
    settings = {k: (float(v) if k in ("lam", "lr", "feedback_share") else v) for k, v in settings.items()}
    _check_settings(settings)
    fb = _feedback_set(feedback, ds)
    positions, fb = fb.align(ds)
    strategies = resolve(strategy, {"relevant": bool(fb.has_relevant.any()),
                                    "irrelevant": bool(fb.has_irrelevant.any())})
    settings.update(strategy="+".join(s.name for s in strategies) or "labels only", feedback_samples=len(fb))
    versions = ModelVersions(versions_dir or tempfile.mkdtemp(prefix="xcam-viz-versions-"))
    start, base = _base(model, base_version, versions)
    if settings["layer"] is None:
        settings["layer"] = models.default_layer(start, tuple(ds.image_shape))
    models.get_layer(start, settings["layer"])
    eval_data = dict(eval_data or {})
    for name, data in [*eval_data.items(), ("validation", validation)]:
        if data is not None and not isinstance(data, ImageSet):
            raise TypeError(f"{name} must be an ImageSet, got {type(data).__name__}")
    train_others, validation = _split_validation(ds, positions, validation, seed)

    def run(control: Control) -> FinetuneResult:
        return _run(start, base, versions, _Run(ds, positions, fb, strategies, settings, train_others, validation),
                    eval_data, control)

    if background:
        return FinetuneJob(run, on_progress)
    return run(Control(on_progress))


def _check_settings(s: dict) -> None:
    if s["lam"] < 0 or not np.isfinite(s["lam"]):
        raise ValueError(f"lam must be a finite number >= 0, got {s['lam']}")
    if s["epochs"] < 1:
        raise ValueError(f"epochs must be at least 1, got {s['epochs']}")
    if not s["warmup"] >= 0:
        raise ValueError(f"warmup must be >= 0 epochs (of learning-rate ramp), got {s['warmup']}")
    if s["patience"] < 1:
        raise ValueError(f"patience must be at least 1 epoch, got {s['patience']}")
    if not 0 < s["lr"] < 1:
        raise ValueError(f"lr must lie in (0, 1), got {s['lr']}; {DEFAULTS['lr']} is the tested default")
    from ..explain import GRADIENT_METHODS
    if s["method"] not in GRADIENT_METHODS:
        raise ValueError(f"method must be a gradient CAM method (differentiable), one of {sorted(GRADIENT_METHODS)}; "
                         f"got {s['method']!r}")
    if s["batch_size"] < 2 or not 0 < s["feedback_share"] < 1:
        raise ValueError("batch_size must be >= 2 and feedback_share in (0, 1), got "
                         f"{s['batch_size']} and {s['feedback_share']}")


def _feedback_set(feedback, ds: ImageSet) -> FeedbackSet:
    if isinstance(feedback, FeedbackStore):
        feedback = feedback.feedback(ds)
    if not isinstance(feedback, FeedbackSet):
        raise TypeError(f"feedback must be a FeedbackStore or a FeedbackSet (xv.feedback.simulate), "
                        f"got {type(feedback).__name__}")
    if len(feedback) == 0:
        raise ValueError("there is no feedback for the samples of this data set: annotate some images "
                         "(store.add) or simulate feedback (xv.feedback.simulate) first")
    return feedback


def _split_validation(ds: ImageSet, positions: torch.Tensor, validation: ImageSet | None,
                      seed: int) -> tuple[torch.Tensor, ImageSet]:
    """The training positions without feedback that train, and the validation images.

    Without `validation`, a stratified `validation_share` of the images without feedback is held
    out (`held_out`)."""
    others = torch.ones(len(ds), dtype=torch.bool)
    others[positions] = False
    if validation is not None:
        return others.nonzero().flatten(), validation
    held = held_out(ds.labels, others, seed + 3)
    if len(held) == 0:
        raise ValueError(f"the training data has too few images without feedback ({int(others.sum())}) to hold "
                         "out a validation split; give validation= or more training images")
    others[held] = False
    return others.nonzero().flatten(), ds.subset(held)


def held_out(labels: torch.Tensor, pool: torch.Tensor, seed: int = 0, share: float | None = None) -> torch.Tensor:
    """Sorted positions of a stratified `share` (default DEFAULTS["validation_share"]) of the positions where
    the bool mask `pool` is set: round(share × n) of each class's n, at least one, never the last one (a
    class with one image keeps it). The rule of the validation split, also used to carve a held-out
    evaluation split from data that has no test split."""
    share = DEFAULTS["validation_share"] if share is None else share
    gen = torch.Generator().manual_seed(seed)
    held = []
    for c in labels[pool].unique().tolist():
        members = (pool & (labels == c)).nonzero().flatten()
        k = min(len(members) - 1, max(1, round(share * len(members))))
        held.append(members[torch.randperm(len(members), generator=gen)[:k]])
    return torch.cat(held).sort().values if held else torch.empty(0, dtype=torch.long)


def _base(model: nn.Module | None, base_version: str | None, versions: ModelVersions) -> tuple[nn.Module, str]:
    """The model to start from and its version name (saving `model` as a version if it is new)."""
    if base_version is not None:
        return versions.load(base_version), base_version
    if model is None:
        raise ValueError("give a model, or base_version= naming a version in versions_dir")
    return copy.deepcopy(model), versions.register(model)


@dataclass
class _Run:
    """The prepared inputs of one run (what `loop.train_epochs` reads)."""

    ds: ImageSet
    positions: torch.Tensor
    feedback: FeedbackSet
    strategies: tuple
    settings: dict
    others: torch.Tensor
    validation: ImageSet

    def __post_init__(self):
        self.labels = self.ds.labels.clone()
        corrected = self.feedback.labels >= 0
        self.labels[self.positions[corrected]] = self.feedback.labels[corrected]
        fb = self.feedback
        self.donors = Donors(self.ds.read(self.positions)[0], fb.painted("relevant"), fb.painted("irrelevant"),
                             fb.has_relevant, fb.has_irrelevant, self.settings["seed"])
        self.validation_counter = loop.validation_counterexamples(self.validation, self.donors, self.strategies,
                                                                  self.settings["seed"])
        self.batches = loop.Batches(self.others, len(self.positions), self.settings)


def _run(model: nn.Module, base: str, versions: ModelVersions, run: _Run, eval_data: dict,
         control: Control) -> FinetuneResult:
    start = time.perf_counter()
    settings = run.settings
    control.report(phase="evaluating before")
    evals = {**eval_data, "validation": run.validation}
    before = _evaluate(model, evals, settings)
    _centre_head(model, run.ds.read(range(min(8, len(run.ds))))[0])
    history: dict[str, list] = {"epoch": [], "loss": [], "ce": [], "explanation": [], "validation": []}
    best, cancelled = {}, False
    try:
        best = loop.train_epochs(model, run, control, history)
    except Cancelled:
        cancelled = True
    _centre_head(model, run.ds.read(range(min(8, len(run.ds))))[0])     # Adam lets the class-mean drift again
    model.eval()
    version, flagged, warning = None, False, ""
    if cancelled:
        control.report(phase="cancelled")
        after = {name: {k: np.nan for k in vals} for name, vals in before.items()}
    else:
        control.report(phase="evaluating after")
        after = _evaluate(model, evals, settings)
        what, was, now = "validation accuracy", before["validation"]["accuracy"], after["validation"]["accuracy"]
        if "start_balanced_accuracy" in best:       # rebalanced: the images against the shortcut count as much
            what, was, now = "balanced validation accuracy", best["start_balanced_accuracy"], best["balanced_accuracy"]
        if was - now > FLAG_DROP:
            flagged = True
            warning = f"{what} fell from {was:.1%} to {now:.1%}; the new version may be worse than {base}"
    metrics = _metrics_dataset(before, after)
    if not cancelled:
        control.report(phase="saving")
        version = versions.save_new(model, parent=base, meta={
            **settings, "best_epoch": best.get("epoch", 0), "flagged": flagged, "warning": warning,
            "metrics": flat_scores(metrics, "after")})
        control.report(phase="done")
    metrics.attrs["validation_ids"] = list(run.validation.ids)
    return FinetuneResult(model, version, base, versions, metrics, _history_dataset(history), settings, cancelled,
                          time.perf_counter() - start,
                          history["validation"], best.get("epoch", 0), flagged, warning)


@torch.no_grad()
def _centre_head(model: nn.Module, probe: torch.Tensor) -> None:
    """Subtract the class-mean from the final linear layer's weights and bias, if the model ends in one.

    Softmax ignores this shift, so predictions do not change; afterwards every logit equals its
    centred logit, and the plain Grad-CAMs users see (`xv.explain`) are the ones fine-tuning
    corrected. Kept only if the model's logits verifiably become their centred selves.
    """
    head = models.last_linear(model)
    if head is None:
        return
    with models.eval_mode(model):
        probe = probe.to(models.model_device(model))
        logits = models.logits_of(model(probe))
        saved = head.weight.clone(), None if head.bias is None else head.bias.clone()
        head.weight -= head.weight.mean(0, keepdim=True)
        if head.bias is not None:
            head.bias -= head.bias.mean()
        if not torch.allclose(models.logits_of(model(probe)), logits - logits.mean(1, keepdim=True), atol=1e-4):
            head.weight.copy_(saved[0])
            if saved[1] is not None:
                head.bias.copy_(saved[1])


def _evaluate(model: nn.Module, eval_data: dict[str, ImageSet], s: dict) -> dict[str, dict[str, float]]:
    """Accuracy per split; pointing game and IoU of the layer's CAMs where the split has masks."""
    from .. import metrics
    from ..explain import explain
    out = {}
    for name, data in eval_data.items():
        scores = {"accuracy": models.accuracy(model, data), "pointing_game": np.nan, "iou": np.nan}
        if data.masks is not None:
            has = data.masks.flatten(1).any(1)
            if has.any():
                sub = data if has.all() else data.subset(has)
                cams = explain(model, sub, method=s["method"], layer=s["layer"], target="predicted")
                scores["pointing_game"] = float(metrics.pointing_game(cams, sub.masks).mean())
                scores["iou"] = float(metrics.iou(cams, sub.masks).mean())
        out[name] = scores
    return out


def flat_scores(metrics: xr.Dataset, stage: str) -> dict[str, float]:
    """One stage of a run's metrics (stage × split) as {"<split>/<metric>": value}."""
    return {f"{split}/{name}": float(metrics[name].sel(stage=stage, split=split))
            for split in metrics.split.values for name in metrics.data_vars}


def _metrics_dataset(before: dict, after: dict) -> xr.Dataset:
    splits = list(before)
    names = ("accuracy", "pointing_game", "iou")
    data = {k: (("stage", "split"), np.array([[stage[s][k] for s in splits] for stage in (before, after)],
                                            float).reshape(2, len(splits))) for k in names}
    return xr.Dataset(data, coords={"stage": ["before", "after"], "split": splits})


def _history_dataset(h: dict) -> xr.Dataset:
    steps = {k: v for k, v in h.items() if k != "validation"}
    return xr.Dataset({k: ("step", np.array(v, float if k != "epoch" else int)) for k, v in steps.items()},
                      coords={"step": np.arange(1, len(h["loss"]) + 1)})

