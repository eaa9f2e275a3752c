"""The fine-tuning loop: batches with the annotated images mixed in, counterexamples, losses,
and the validation score that picks the best epoch and stops early."""
from __future__ import annotations

import copy

import torch
from torch import nn

from .. import models
from ..data import ImageSet
from ..feedback import FeedbackSet
from . import counterexamples as cx
from . import rebalance as rb
from .job import Cancelled, Control
from .losses import centred_logit
from .strategies import Strategy

MAX_GRAD_NORM = 5.0    # second-order CAM-loss gradients can spike; unclipped, they collapsed runs to one class


class Batches:
    """Yields (epoch, feedback rows, other dataset positions) for every step of one epoch.

    Each batch: `feedback_share` of it from the annotated samples (reshuffled whenever all have
    been used), the rest from the other training samples; an epoch is one pass over those others,
    or as many draws from them by `weights` (with replacement) once a sampling strategy set them.
    """

    def __init__(self, others: torch.Tensor, n_feedback: int, s: dict):
        self.gen = torch.Generator().manual_seed(s["seed"])
        self.others, self.n_feedback = others, n_feedback
        self.n_fb = max(1, min(n_feedback, round(s["batch_size"] * s["feedback_share"])))
        self.n_other = s["batch_size"] - self.n_fb
        self.per_epoch = -(-len(others) // self.n_other) if len(others) else -(-n_feedback // self.n_fb)
        self._queue = torch.empty(0, dtype=torch.long)
        self.weights: torch.Tensor | None = None

    def epoch(self):
        order = (torch.randperm(len(self.others), generator=self.gen) if self.weights is None else
                 torch.multinomial(self.weights, len(self.others), replacement=True, generator=self.gen))
        others = self.others[order]
        for b in range(self.per_epoch):
            if len(self._queue) < self.n_fb:
                self._queue = torch.cat([self._queue, torch.randperm(self.n_feedback, generator=self.gen)])
            rows, self._queue = self._queue[:self.n_fb], self._queue[self.n_fb:]
            yield rows, others[b * self.n_other:(b + 1) * self.n_other]


class LossContext:
    """What an explanation-loss strategy sees of one batch: the model, the images, the masks,
    and the differentiable CAM computed once for all CAM terms (its logits reused for cross-entropy)."""

    def __init__(self, model: nn.Module, batch: cx.Batch, s: dict):
        self.model, self.batch, self.settings = model, batch, s
        self.images = batch.images
        self.logits = None
        self._cam = None

    def mask(self, kind: str) -> torch.Tensor:
        return getattr(self.batch, kind).to(self.images.dtype)

    def cam(self) -> torch.Tensor:
        if self._cam is None:
            from ..explain import differentiable_cam
            self.logits, self._cam = differentiable_cam(self.model, self.images, layer=self.settings["layer"],
                                                        target=centred_logit(self.batch.labels),
                                                        method=self.settings["method"])
        return self._cam


def make_batch(ds: ImageSet, labels: torch.Tensor, positions: torch.Tensor, fb: FeedbackSet,
               rows_fb: torch.Tensor, idx_other: torch.Tensor) -> cx.Batch:
    """The batch of annotated rows `rows_fb` (with their masks) and other images `idx_other`."""
    idx = torch.cat([positions[rows_fb], idx_other])
    none = torch.zeros(len(idx_other), *fb.relevant.shape[1:], dtype=torch.bool)
    relevant = torch.cat([fb.painted("relevant")[rows_fb], none])
    irrelevant = torch.cat([fb.painted("irrelevant")[rows_fb], none])
    return cx.Batch(ds.read(idx)[0].clone(), labels[idx].clone(), relevant, irrelevant,
                    torch.cat([rows_fb, torch.full((len(idx_other),), -1, dtype=torch.long)]))


def step_losses(model: nn.Module, batch: cx.Batch, strategies: tuple[Strategy, ...], scale: dict,
                s: dict, device) -> dict[str, torch.Tensor]:
    """Cross-entropy on the whole batch plus lam × each loss strategy's (normalised) term.

    λ normalisation: each term is divided by its size relative to cross-entropy at the run's first
    step (`scale`, filled then), so lam = 1 makes it as large as cross-entropy was at the start,
    whatever the model, the layer or the number of annotated images (the XIL literature's rule).
    """
    for name in ("images", "labels", "relevant", "irrelevant"):
        setattr(batch, name, getattr(batch, name).to(device))
    ctx = LossContext(model, batch, s)
    parts = {}
    for strategy in strategies:
        if strategy.kind != "loss" or s["lam"] == 0:
            continue
        has = getattr(batch, f"has_{strategy.learns_from}")
        values = strategy.apply(ctx)
        parts[strategy.name] = values[has].mean() if has.any() else values.sum() * 0
    logits = ctx.logits if ctx.logits is not None else models.logits_of(model(batch.images))
    ce = nn.functional.cross_entropy(logits, batch.labels)
    for name, value in parts.items():
        if name not in scale and value.detach() > 0:
            scale[name] = float(ce.detach().clamp(min=1e-3) / value.detach())
    explanation = sum((value * scale.get(name, 1.0) for name, value in parts.items()),
                      torch.zeros((), device=device))
    return {"loss": ce + s["lam"] * explanation, "ce": ce, "explanation": explanation, **parts}


@torch.no_grad()
def validation_score(model: nn.Module, plain: ImageSet, counter: torch.Tensor | None,
                     groups: torch.Tensor | None = None) -> dict[str, float]:
    """Accuracy on the validation images, and on the same images changed by the run's
    counterexamples (when any applies): a model that still uses a painted shortcut loses there.
    With `groups` (a sampling strategy's, one per image) the plain part of the score is the true class's
    probability averaged per (label, group) cell, then over the cells: the few images against the
    shortcut count as much as the many with it, and a probability is steadier on few images than
    a count of right answers. The score picking the best epoch is the mean of the two."""
    predicted = models.predict(model, plain)
    correct = torch.from_numpy(predicted.predicted.values) == plain.labels
    accuracy = float(correct.float().mean())
    out = {"accuracy": accuracy, "score": accuracy}
    if groups is not None:
        truth = torch.from_numpy(predicted.probability.values).gather(1, plain.labels[:, None])[:, 0]
        out["balanced_accuracy"] = rb.balanced_mean(correct.float(), plain.labels, groups)
        out["score"] = rb.balanced_mean(truth, plain.labels, groups)
    if counter is not None:
        moved = models.predict(model, counter).predicted.values
        out["counterexample_accuracy"] = float((torch.from_numpy(moved) == plain.labels).float().mean())
        out["score"] = (out["score"] + out["counterexample_accuracy"]) / 2
    return out


def validation_counterexamples(val: ImageSet, donors: cx.Donors, strategies: tuple[Strategy, ...],
                               seed: int) -> torch.Tensor | None:
    """The validation images changed by every strategy that can change images without feedback
    (each image gets a moved painted region, ...); None when no strategy can."""
    checks = [s.validate for s in strategies if s.validate is not None]
    if not checks:
        return None
    gen = torch.Generator().manual_seed(seed + 1)
    n = len(val)
    blank = torch.zeros(n, *val.image_shape[1:], dtype=torch.bool)
    batch = cx.Batch(val.images.clone(), val.labels.clone(), blank.clone(), blank.clone(),
                     torch.full((n,), -1, dtype=torch.long))
    for check in checks:
        check(batch, donors, gen)
    return None if torch.equal(batch.images, val.images) else batch.images


def sampling_groups(model: nn.Module, run) -> torch.Tensor | None:
    """Let the run's sampling strategy (if any) weigh the batches; returns the validation images' groups."""
    for strategy in run.strategies:
        found = strategy.apply(model, run) if strategy.kind == "sampling" else None
        if found is not None:
            groups, validation_groups = found
            run.batches.weights = rb.balanced_weights(run.labels[run.others], groups[run.others]).float()
            return validation_groups
    return None


def train_epochs(model: nn.Module, run, control: Control, history: dict) -> dict:
    """Train epoch after epoch; after each, score the validation split, keep the best weights and
    stop after `patience` epochs without a better score. Returns the chosen epoch's validation
    scores (the model ends with its weights; with a sampling strategy's groups, also the starting model's
    balanced accuracy, which flagging compares). Raises Cancelled through."""
    s = run.settings
    opt = torch.optim.Adam(model.parameters(), lr=s["lr"])
    total = run.batches.per_epoch * s["epochs"]
    schedule = learning_rate_schedule(opt, total, min(total - 1, round(s["warmup"] * run.batches.per_epoch)))
    gen = torch.Generator().manual_seed(s["seed"] + 2)
    device = models.model_device(model)
    best, best_state, stale, step, scale = None, None, 0, 0, {}
    control.report(phase="grouping")
    groups = sampling_groups(model, run)
    start = None if groups is None else validation_score(model, run.validation, run.validation_counter, groups)
    control.report(phase="training", epochs=s["epochs"], total_steps=total)
    for epoch in range(1, s["epochs"] + 1):
        train_mode(model)
        for rows_fb, idx_other in run.batches.epoch():
            control.check()
            batch = make_batch(run.ds, run.labels, run.positions, run.feedback, rows_fb, idx_other)
            for strategy in run.strategies:
                if strategy.kind == "counterexample":
                    strategy.apply(batch, run.donors, gen)
            parts = step_losses(model, batch, run.strategies, scale, s, device)
            if torch.isfinite(parts["loss"]):          # a non-finite loss would poison the weights: skip it
                opt.zero_grad(set_to_none=True)
                parts["loss"].backward()
                nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
                opt.step()
            schedule.step()
            step += 1
            values = {k: float(v.detach()) for k, v in parts.items()}
            for k in ("loss", "ce", "explanation"):
                history[k].append(values[k])
            history["epoch"].append(epoch)
            control.report(epoch=epoch, step=step, losses=values)
        model.eval()
        score = validation_score(model, run.validation, run.validation_counter, groups)
        history["validation"].append({"epoch": epoch, **score})
        control.report(validation=dict(score, epoch=epoch))
        if best is None or score["score"] >= best["score"]:
            best, best_state, stale = dict(score, epoch=epoch), copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
            if stale >= s["patience"]:
                break
    model.load_state_dict(best_state)
    model.eval()
    return best if start is None else {**best, "start_balanced_accuracy": start["balanced_accuracy"]}


def learning_rate_schedule(opt: torch.optim.Optimizer, total: int, warmup: int):
    """Cosine decay over `total` steps, after a linear ramp over the first `warmup` steps.

    Adam's first steps move every weight by about the learning rate, whatever its gradient's size: on
    the 3-D demo's smallcnn3d (an epoch of 7 steps) the second step sent cross-entropy from 0.13 to
    21 and runs ended predicting one class (measured). A ramp lets the moment estimates settle first."""
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - warmup)
    if warmup == 0:
        return cosine
    ramp = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / (warmup + 1), total_iters=warmup)
    return torch.optim.lr_scheduler.SequentialLR(opt, [ramp, cosine], milestones=[warmup])


def train_mode(model: nn.Module) -> None:
    """Train mode with batch-norm statistics frozen (the small, oversampled feedback batches would shift them)."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


__all__ = ["Batches", "Cancelled", "LossContext", "make_batch", "step_losses", "train_epochs", "train_mode",
           "validation_counterexamples", "validation_score"]
