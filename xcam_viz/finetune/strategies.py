"""The fine-tuning strategies: one registry that `xv.finetune`, the CLI and the dashboard all read.

A strategy learns from one kind of feedback (irrelevant or relevant regions) or from either. It makes
counterexamples (changes the images of each batch), adds an explanation loss (a term added to
cross-entropy on the images whose masks are known, painted or made by a counterexample), or weighs
which training images the batches are drawn from (sampling).
Adding a strategy means adding one entry here.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import counterexamples as cx
from . import rebalance as rb
from .losses import irrelevant_loss, relevant_loss, rrr_loss

MOVE_SHARE = 0.5       # share of every batch that gets a painted irrelevant region pasted on
ERASE_SHARE = 0.5      # share of the annotated images shown with their irrelevant region erased
SWAP_SHARE = 1.0       # share of the annotated images shown on another image's background


@dataclass(frozen=True)
class Strategy:
    """name; learns_from: "irrelevant", "relevant" or "any" masks; kind: "counterexample", "loss" or
    "sampling"; apply: counterexample (batch, donors, generator) -> None, changing the batch in place,
    loss (context) -> per-sample values on the batch rows with the mask, or sampling (model, run) ->
    (a group per training image, one per validation image), or None to leave sampling as it is, batches then
    drawn so that each (label, group) cell weighs the same; needs_cam: the loss is
    on the differentiable CAM of the run's layer and method; validate: for a counterexample that
    works on images without feedback, the same change made to every row of a batch (the
    validation images), so the best epoch is the one least fooled by the painted shortcut."""

    name: str
    learns_from: str
    kind: str
    summary: str
    apply: Callable
    needs_cam: bool = False
    validate: Callable | None = None


def _rows(mask: torch.Tensor, share: float, gen: torch.Generator) -> torch.Tensor:
    return (mask & (torch.rand(len(mask), generator=gen) < share)).nonzero().flatten()


def _move(batch, donors, gen, share=MOVE_SHARE):
    if donors.can_move:
        cx.move_irrelevant(batch, donors, _rows(torch.ones_like(batch.annotated), share, gen), gen)


def _erase(batch, donors, gen):
    rows = _rows(batch.annotated & batch.has_irrelevant, ERASE_SHARE, gen)
    cx.erase_irrelevant(batch, donors, rows, batch.positions[rows])


def _swap(batch, donors, gen):
    if donors.can_swap:
        cx.swap_background(batch, donors, _rows(batch.annotated & batch.has_relevant, SWAP_SHARE, gen), gen)


def _swap_beyond(batch, donors, gen, share=MOVE_SHARE):
    if donors.can_swap_beyond:
        cx.swap_beyond_objects(batch, donors, _rows(torch.ones_like(batch.annotated), share, gen), gen)


def _rrr(ctx):
    """RRR on the rows with an irrelevant mask only: its double backward costs ~4x a training step
    on a batch of volumes (measured), and rows without a mask add nothing to it. Batch-norm
    statistics are frozen while fine-tuning, so a row's input gradient does not depend on the others."""
    rows = ctx.batch.has_irrelevant
    values = torch.zeros(len(rows), dtype=ctx.images.dtype, device=ctx.images.device)
    if rows.any():
        values[rows] = rrr_loss(ctx.model, ctx.images[rows], ctx.mask("irrelevant")[rows])[0]
    return values


def _rebalance(model, run):
    fb = run.feedback
    images, seed = run.ds.read(run.positions)[0], run.settings["seed"]
    views, evidence = rb.shortcut_views(images, fb.painted("relevant"), fb.painted("irrelevant"), fb.has_relevant,
                                        fb.has_irrelevant, seed)
    examples, labels = rb.probe_examples(images, views, evidence, run.labels[run.positions], rb.COMPOSITES, seed)
    probe = rb.shortcut_probe(model, examples, labels)
    return None if probe is None else (probe(run.ds), probe(run.validation))


STRATEGIES: dict[str, Strategy] = {s.name: s for s in [
    Strategy("move-irrelevant", "irrelevant", "counterexample",
             "paste the painted irrelevant regions onto other images of every class (they keep their labels)",
             _move, validate=lambda batch, donors, gen: _move(batch, donors, gen, share=1.0)),
    Strategy("erase-irrelevant", "irrelevant", "counterexample",
             "show annotated images with their painted irrelevant region inpainted (same label)", _erase),
    Strategy("swap-background", "relevant", "counterexample",
             "keep the painted relevant region, replace what lies outside it by another annotated image's "
             "background (its own object inpainted)", _swap),
    Strategy("swap-beyond-objects", "relevant", "counterexample",
             "on every image, replace the pixels no painted relevant region ever reaches by another annotated "
             "image's background there", _swap_beyond,
             validate=lambda batch, donors, gen: _swap_beyond(batch, donors, gen, share=1.0)),
    Strategy("cam-relevant", "relevant", "loss",
             "Grad-CAM mass outside the relevant region (1 - share inside)",
             lambda ctx: relevant_loss(ctx.cam(), ctx.mask("relevant")), needs_cam=True),
    Strategy("cam-irrelevant", "irrelevant", "loss",
             "Grad-CAM mass inside the irrelevant region (Grad-CAM form of Right for the Right Reasons)",
             lambda ctx: irrelevant_loss(ctx.cam(), ctx.mask("irrelevant")), needs_cam=True),
    Strategy("rebalance", "any", "sampling",
             "learn what the painted shortcut regions say of the class (a probe on the model's features), vote "
             "every training image by it, and draw batches so each (class, vote) cell weighs the same", _rebalance),
    Strategy("rrr", "irrelevant", "loss",
             "input gradients inside the irrelevant region (Right for the Right Reasons, Ross et al. 2017)", _rrr),
]}

# What strategy="auto" uses for each kind of feedback; chosen by benchmarks/feedback_repair.py.
AUTO = {"irrelevant": ("move-irrelevant", "erase-irrelevant", "cam-irrelevant", "rebalance"),
        "relevant": ("swap-background", "swap-beyond-objects", "cam-relevant", "rebalance")}

# The settings a run uses when the caller gives none; chosen by benchmarks/feedback_repair.py.
DEFAULTS = dict(epochs=16, lr=1e-3, lam=1.0, batch_size=64, feedback_share=0.5, patience=6, warmup=0,
                validation_share=0.1)
# The same for volumes; chosen by benchmarks/volume_repair.py. A 48³ volume costs ~30x the CPU of a 64²
# image (an epoch of the 3-D demo ~35 CPU s on one thread), so a run is held to a few epochs.
VOLUME_DEFAULTS = {**DEFAULTS, "epochs": 5, "patience": 3, "warmup": 1}


def defaults_for(spatial_dims: int) -> dict:
    """The settings a run on images (2) or volumes (3) uses when the caller gives none."""
    return {2: DEFAULTS, 3: VOLUME_DEFAULTS}[spatial_dims]


def resolve(strategy: str, has: dict[str, bool]) -> tuple[Strategy, ...]:
    """The strategies `strategy` names ("auto", a name, or names joined by "+"), checked against
    the kinds of feedback there are (`has`: {"relevant": bool, "irrelevant": bool})."""
    if strategy == "auto":
        names = list(dict.fromkeys(n for kind, picks in AUTO.items() if has[kind] for n in picks))
    else:
        names = list(dict.fromkeys(str(strategy).split("+")))
        unknown = [n for n in names if n not in STRATEGIES]
        if unknown:
            raise ValueError(f"unknown strategy {unknown[0]!r}: use 'auto' or names joined by '+' from "
                             f"{', '.join(STRATEGIES)}")
    chosen = tuple(STRATEGIES[n] for n in names)
    missing = [s for s in chosen if not has.get(s.learns_from, any(has.values()))]
    if missing:
        raise ValueError(f"strategy {missing[0].name!r} learns from {missing[0].learns_from} masks, but the "
                         "feedback has none; use strategy='auto' or give such feedback")
    return chosen
