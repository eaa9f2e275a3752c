"""`xv.finetune`: fine-tune a classifier on explanation feedback, from one model version to the next.

The loss is cross-entropy on every image plus `lam` × an explanation loss on the images with
feedback: the differentiable Grad-CAM (of `layer`, for the labelled class) should put its mass
inside the relevant mask and none inside the irrelevant one, or (loss "rrr") the input
gradients should vanish inside the irrelevant mask. Each batch holds a fixed share of images
with feedback (they are few, so they are drawn again and again); an epoch is one pass over the
images without feedback. Adam with a cosine-decaying learning rate. Batch-norm statistics stay
frozen during fine-tuning, so the small, oversampled feedback batches do not shift them and the
model behaves the same in train and eval mode.

Why the centred logit: softmax ignores a shift of all logits, so the CAM of a plain logit can
hide a shortcut (the marker made to count against every class, more against one) while the
decision still rests on it; the trained CAM explains the target logit minus the mean logit.
A final linear layer is centred first (a softmax-invariant reparametrisation), so the plain
CAMs of the new version equal the trained ones.
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
from .job import Cancelled, Control, FinetuneJob
from .losses import centred_logit, irrelevant_loss, relevant_loss, rrr_loss
from .versions import ModelVersions

TERMS = ("relevant", "irrelevant", "rrr")
_MASK_OF = {"relevant": "relevant", "irrelevant": "irrelevant", "rrr": "irrelevant"}


@dataclass
class FinetuneResult:
    """What a fine-tuning run produced.

    model: the fine-tuned model (eval mode); version: its name in `versions` (None if the run was
    cancelled: a cancelled run saves nothing); base_version: the version it started from;
    metrics: accuracy / pointing_game / iou by (stage: before, after) × split (NaN where not
    measured); history: per-step loss, ce, explanation and epoch.
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

    def __repr__(self) -> str:
        state = "cancelled" if self.cancelled else f"-> {self.version}"
        return f"FinetuneResult({self.base_version} {state}, {self.history.sizes.get('step', 0)} steps)\n{self.summary()}"

    def summary(self) -> str:
        """The before/after metrics as a markdown table."""
        rows = ["| split | metric | before | after |", "|---|---|---|---|"]
        for split in self.metrics.split.values:
            for name in self.metrics.data_vars:
                b, a = (float(self.metrics[name].sel(stage=s, split=split)) for s in ("before", "after"))
                rows.append(f"| {split} | {name} | {b:.3f} | {a:.3f} |")
        return "\n".join(rows)


def finetune(model: nn.Module | None, ds: ImageSet, feedback: FeedbackStore | FeedbackSet, layer: str | None = None,
             lam: float = 1.0, epochs: int = 3, lr: float = 2e-3, loss: str = "auto", method: str = "gradcam",
             batch_size: int = 64, feedback_share: float = 0.25, base_version: str | None = None,
             versions_dir=None, eval_data: dict[str, ImageSet] | None = None, seed: int = 0,
             background: bool = False, on_progress=None):
    """Fine-tune `model` on `ds` with explanation `feedback`; returns a `FinetuneResult`
    (background=True: a `FinetuneJob` at once; its `.result()` gives the FinetuneResult).

    feedback: a FeedbackStore or a FeedbackSet (what `xv.feedback.simulate` returns).
    layer: the layer whose Grad-CAM is corrected (default: the model's last spatial layer, e.g.
        smallcnn's block4, which repairs the demo shortcut best; see benchmarks/feedback_repair.py).
    loss: "auto" (the relevant term for relevant masks, the irrelevant term for irrelevant ones),
        or terms joined by "+" from "relevant", "irrelevant" (Grad-CAM RRR), "rrr" (input gradients).
    lam: weight of the explanation loss (0 = plain cross-entropy fine-tuning, the control).
    feedback_share: share of each batch drawn from the images with feedback.
    Versions: the run starts from `base_version` of the registry in `versions_dir` (model may then
    be None) or, without one, from `model`, which is saved as a version first unless the registry
    already holds its weights. The result is saved as the next version; no version is ever
    overwritten. versions_dir defaults to a new temporary folder.
    eval_data: {"test": ImageSet, ...} scored before and after (accuracy; pointing game and IoU of
    `method` CAMs of `layer` for the predicted class against the ground-truth masks).
    on_progress: called with the progress dict after every step (from the job's thread).
    The model passed in is never changed: the run trains a copy.
    """
    settings = dict(layer=str(layer), lam=float(lam), epochs=int(epochs), lr=float(lr), method=method,
                    batch_size=int(batch_size), feedback_share=float(feedback_share), seed=int(seed))
    _check_settings(settings)
    if not isinstance(ds, ImageSet):
        raise TypeError(f"ds must be an ImageSet (the images the feedback was given on), got {type(ds).__name__}")
    fb = _feedback_set(feedback, ds)
    positions, fb = fb.align(ds)
    terms = _terms(loss, fb)
    settings.update(loss="+".join(terms), feedback_samples=len(fb))
    versions = ModelVersions(versions_dir or tempfile.mkdtemp(prefix="xcam-viz-versions-"))
    start, base = _base(model, base_version, versions)
    if layer is None:
        settings["layer"] = models.spatial_layers(start, tuple(ds.images.shape[1:]))[-1][0]
    models.get_layer(start, settings["layer"])
    eval_data = dict(eval_data or {})
    for name, data in eval_data.items():
        if not isinstance(data, ImageSet):
            raise TypeError(f"eval_data[{name!r}] must be an ImageSet, got {type(data).__name__}")

    def run(control: Control) -> FinetuneResult:
        return _run(start, base, versions, ds, positions, fb, terms, settings, eval_data, control)

    if background:
        return FinetuneJob(run, on_progress)
    return run(Control(on_progress))


def _check_settings(s: dict) -> None:
    if s["lam"] < 0 or not np.isfinite(s["lam"]):
        raise ValueError(f"lam must be a finite number >= 0, got {s['lam']}")
    if s["epochs"] < 1:
        raise ValueError(f"epochs must be at least 1, got {s['epochs']}")
    if not s["lr"] > 0:
        raise ValueError(f"lr must be > 0, got {s['lr']}")
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


def _terms(loss: str, fb: FeedbackSet) -> tuple[str, ...]:
    """The explanation-loss terms `loss` asks for, checked against the feedback there is."""
    have = {"relevant": bool(fb.has_relevant.any()), "irrelevant": bool(fb.has_irrelevant.any())}
    if loss == "auto":
        terms = tuple(t for t in ("relevant", "irrelevant") if have[t])
    else:
        terms = tuple(dict.fromkeys(str(loss).split("+")))
        bad = [t for t in terms if t not in TERMS]
        if bad:
            raise ValueError(f"unknown loss term {bad[0]!r}: use 'auto' or terms joined by '+' from {TERMS}")
    missing = [t for t in terms if not have[_MASK_OF[t]]]
    if missing:
        raise ValueError(f"loss term {missing[0]!r} needs {_MASK_OF[missing[0]]} masks, but the feedback has none; "
                         "use loss='auto' or give such feedback")
    if not terms:
        raise ValueError("the feedback holds only class corrections; explanation losses need relevant or "
                         "irrelevant masks (fine-tune with lam=0 to learn from the labels alone)")
    return terms


def _base(model: nn.Module | None, base_version: str | None, versions: ModelVersions) -> tuple[nn.Module, str]:
    """The model to start from and its version name (saving `model` as a version if it is new)."""
    if base_version is not None:
        return versions.load(base_version), base_version
    if model is None:
        raise ValueError("give a model, or base_version= naming a version in versions_dir")
    return copy.deepcopy(model), versions.register(model)


def _run(model: nn.Module, base: str, versions: ModelVersions, ds: ImageSet, positions: torch.Tensor,
         fb: FeedbackSet, terms: tuple[str, ...], settings: dict, eval_data: dict, control: Control) -> FinetuneResult:
    start = time.perf_counter()
    control.report(phase="evaluating before")
    before = _evaluate(model, eval_data, settings)
    _centre_head(model, ds.images[:8])
    labels = ds.labels.clone()
    corrected = fb.labels >= 0
    labels[positions[corrected]] = fb.labels[corrected]
    sampler = _Batches(len(ds), positions, settings)
    opt = torch.optim.Adam(model.parameters(), lr=settings["lr"])
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=sampler.total_steps)
    history: dict[str, list] = {"epoch": [], "loss": [], "ce": [], "explanation": []}
    cancelled = False
    control.report(phase="training", epochs=settings["epochs"], total_steps=sampler.total_steps)
    _train_mode(model)
    try:
        for step, (epoch, rows_fb, idx_other) in enumerate(sampler):
            control.check()
            parts = _step(model, ds, labels, positions[rows_fb], fb.subset(rows_fb), idx_other, terms, settings)
            if torch.isfinite(parts["loss"]):          # a non-finite loss would poison the weights: skip it
                opt.zero_grad(set_to_none=True)
                parts["loss"].backward()
                opt.step()
            schedule.step()
            values = {k: float(v.detach()) for k, v in parts.items()}
            for k in ("loss", "ce", "explanation"):
                history[k].append(values[k])
            history["epoch"].append(epoch)
            control.report(epoch=epoch, step=step + 1, losses=values)
    except Cancelled:
        cancelled = True
    _centre_head(model, ds.images[:8])           # Adam lets the class-mean drift again
    model.eval()
    version = None
    if cancelled:
        control.report(phase="cancelled")
        after = {name: {k: np.nan for k in vals} for name, vals in before.items()}
    else:
        control.report(phase="evaluating after")
        after = _evaluate(model, eval_data, settings)
        control.report(phase="saving")
        version = versions.save_new(model, parent=base, meta={
            **settings, "metrics": {f"{split}/{k}": float(v) for split, vals in after.items() for k, v in vals.items()}})
        control.report(phase="done")
    return FinetuneResult(model, version, base, versions, _metrics_dataset(before, after),
                          _history_dataset(history), settings, cancelled, time.perf_counter() - start)


@torch.no_grad()
def _centre_head(model: nn.Module, probe: torch.Tensor) -> None:
    """Subtract the class-mean from the final linear layer's weights and bias, if the model ends in one.

    Softmax ignores this shift, so predictions do not change; afterwards every logit equals its
    centred logit, and the plain Grad-CAMs users see (`xv.explain`) are the ones fine-tuning
    corrected. Kept only if the model's logits verifiably become their centred selves.
    """
    head = next((m for m in reversed(list(model.modules())) if isinstance(m, nn.Linear)), None)
    if head is None:
        return
    was_training = model.training
    model.eval()
    probe = probe.to(models.model_device(model))
    logits = model(probe)
    saved = head.weight.clone(), None if head.bias is None else head.bias.clone()
    head.weight -= head.weight.mean(0, keepdim=True)
    if head.bias is not None:
        head.bias -= head.bias.mean()
    if not torch.allclose(model(probe), logits - logits.mean(1, keepdim=True), atol=1e-4):
        head.weight.copy_(saved[0])
        if saved[1] is not None:
            head.bias.copy_(saved[1])
    model.train(was_training)


def _train_mode(model: nn.Module) -> None:
    """Train mode with batch-norm statistics frozen."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


class _Batches:
    """Yields (epoch, feedback rows, other dataset positions) for every step of the run.

    Each batch: `feedback_share` of it from the samples with feedback (reshuffled whenever all
    have been used), the rest from the other samples; an epoch is one pass over those others.
    """

    def __init__(self, n: int, positions: torch.Tensor, s: dict):
        self.gen = torch.Generator().manual_seed(s["seed"])
        with_fb = torch.zeros(n, dtype=torch.bool)
        with_fb[positions] = True
        self.others = (~with_fb).nonzero().flatten()
        self.n_fb = max(1, min(len(positions), round(s["batch_size"] * s["feedback_share"])))
        self.n_other = s["batch_size"] - self.n_fb
        self.n_feedback = len(positions)
        per_epoch = -(-len(self.others) // self.n_other) if len(self.others) else -(-self.n_feedback // self.n_fb)
        self.epochs = s["epochs"]
        self.total_steps = per_epoch * self.epochs

    def __iter__(self):
        queue = torch.empty(0, dtype=torch.long)
        per_epoch = self.total_steps // self.epochs
        for epoch in range(1, self.epochs + 1):
            others = self.others[torch.randperm(len(self.others), generator=self.gen)]
            for b in range(per_epoch):
                if len(queue) < self.n_fb:
                    queue = torch.cat([queue, torch.randperm(self.n_feedback, generator=self.gen)])
                rows, queue = queue[:self.n_fb], queue[self.n_fb:]
                yield epoch, rows, others[b * self.n_other:(b + 1) * self.n_other]


def _step(model: nn.Module, ds: ImageSet, labels: torch.Tensor, pos_fb: torch.Tensor, fb: FeedbackSet,
          idx_other: torch.Tensor, terms: tuple[str, ...], s: dict) -> dict[str, torch.Tensor]:
    """The losses of one batch: cross-entropy on all of it, explanation terms on the feedback rows."""
    device = models.model_device(model)
    x_fb, y_fb = ds.images[pos_fb].to(device), labels[pos_fb].to(device)
    parts, logits_fb = {}, None
    if s["lam"] > 0 and any(t in terms for t in ("relevant", "irrelevant")):
        from ..explain import differentiable_cam
        logits_fb, cam = differentiable_cam(model, x_fb, layer=s["layer"], target=centred_logit(y_fb),
                                            method=s["method"])
        for t in ("relevant", "irrelevant"):
            if t in terms:
                parts[t] = _masked_mean(_LOSSES[t](cam, _mask(fb, t, device)), getattr(fb, f"has_{_MASK_OF[t]}"))
    if s["lam"] > 0 and "rrr" in terms:
        value, logits_rrr = rrr_loss(model, x_fb, _mask(fb, "rrr", device))
        parts["rrr"] = _masked_mean(value, fb.has_irrelevant)
        logits_fb = logits_rrr if logits_fb is None else logits_fb
    if logits_fb is None:
        logits_fb = model(x_fb)
    logits = torch.cat([logits_fb, model(ds.images[idx_other].to(device))]) if len(idx_other) else logits_fb
    ce = nn.functional.cross_entropy(logits, torch.cat([y_fb, labels[idx_other].to(device)]))
    explanation = sum(parts.values()) if parts else torch.zeros((), device=device)
    return {"loss": ce + s["lam"] * explanation, "ce": ce, "explanation": explanation, **parts}


_LOSSES = {"relevant": relevant_loss, "irrelevant": irrelevant_loss}


def _mask(fb: FeedbackSet, term: str, device) -> torch.Tensor:
    return getattr(fb, _MASK_OF[term]).to(device=device, dtype=torch.float32)


def _masked_mean(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    keep = keep.to(values.device)
    return values[keep].mean() if keep.any() else values.sum() * 0


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


def _metrics_dataset(before: dict, after: dict) -> xr.Dataset:
    splits = list(before)
    names = ("accuracy", "pointing_game", "iou")
    data = {k: (("stage", "split"), np.array([[stage[s][k] for s in splits] for stage in (before, after)],
                                            float).reshape(2, len(splits))) for k in names}
    return xr.Dataset(data, coords={"stage": ["before", "after"], "split": splits})


def _history_dataset(h: dict) -> xr.Dataset:
    return xr.Dataset({k: ("step", np.array(v, float if k != "epoch" else int)) for k, v in h.items()},
                      coords={"step": np.arange(1, len(h["loss"]) + 1)})

