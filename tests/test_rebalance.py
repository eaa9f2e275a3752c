"""Rebalancing (`finetune/rebalance.py`): shortcut views, votes from a probe, balanced sampling and score."""
import pytest
import torch
from torch import nn

import xcam_viz as xv
from xcam_viz.data import ImageSet
from xcam_viz.finetune import STRATEGIES, loop
from xcam_viz.finetune import rebalance as rb
from xcam_viz.finetune.strategies import resolve


def backgrounds_set(n=120, confounder=0.9, seed=0, size=16, squares=(0.4, 0.6), noise=0.1):
    """A brighter grey square (class 1) or a darker one (class 0), in noise, on a red or a blue background
    that goes with the class in (1 + confounder) / 2 of the images: with the default squares and noise the
    background is the easier cue, so a trained model learns it. Returns the ImageSet and each image's
    background (0 red, 1 blue)."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    background = torch.where(torch.rand(n, generator=gen) < (1 + confounder) / 2, labels, 1 - labels)
    images = torch.zeros(n, 3, size, size)
    images[:, 0] = (background == 0).float()[:, None, None] * 0.8
    images[:, 2] = (background == 1).float()[:, None, None] * 0.8
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    masks[:, 5:11, 5:11] = True
    images[:, :, 5:11, 5:11] = torch.tensor(squares)[labels][:, None, None, None]
    images = (images + noise * torch.randn(images.shape, generator=gen)).clamp(0, 1)
    return ImageSet(images, labels, masks, [f"bg-{i}" for i in range(n)], ["dark", "bright"]), background


def colour_model():
    """Features: each channel's mean (a model that can only see colour; its 1×1 convolution starts as the
    identity), then a linear head."""
    conv = nn.Conv2d(3, 3, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(3)[:, :, None, None])
        conv.bias.zero_()
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))


def test_balanced_weights_make_every_cell_weigh_the_same():
    labels = torch.tensor([0] * 45 + [0] * 5 + [1] * 40 + [1] * 10)
    votes = torch.tensor([0] * 45 + [1] * 5 + [1] * 40 + [0] * 10)
    weights = rb.balanced_weights(labels, votes)
    assert weights.mean() == pytest.approx(1.0)
    totals = [float(weights[(labels == y) & (votes == v)].sum()) for y in (0, 1) for v in (0, 1)]
    assert totals == pytest.approx([totals[0]] * 4)
    values = torch.tensor([1.0] * 45 + [0.0] * 5 + [1.0] * 40 + [0.5] * 10)
    assert rb.balanced_mean(values, labels, votes) == pytest.approx((1 + 0 + 1 + 0.5) / 4)


@pytest.mark.parametrize("grid", [(12, 12), (6, 12, 12)])
def test_shortcut_views_inpaint_the_evidence_and_keep_the_shortcut(grid):
    """The relevant region is inpainted; with an irrelevant mask, everything but it is; images and volumes alike."""
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, 1, *grid, generator=gen)
    region = torch.zeros(2, *grid, dtype=torch.bool)
    region[..., 4:8, 4:8] = True
    none = torch.zeros_like(region)
    relevant, irrelevant = torch.stack([region[0], none[1]]), torch.stack([none[0], region[1]])
    views, _ = rb.shortcut_views(images, relevant, irrelevant, torch.tensor([True, False]), torch.tensor([False, True]))
    assert views.shape == images.shape
    changed = (views != images)[:, 0]
    assert changed[0][region[0]].float().mean() > 0.9 and not changed[0][~xv.spatial.dilate(region, 2)[0]].any()
    assert not changed[1][region[1]].any() and changed[1][~region[1]].float().mean() > 0.9


def test_penultimate_reads_the_last_linear_layers_input_and_leaves_no_hook():
    model = colour_model()
    ds, _ = backgrounds_set(n=10)
    features = rb.penultimate(model, ds)
    assert torch.allclose(features, ds.images.mean((2, 3)), atol=1e-6)
    assert not model[-1]._forward_hooks
    headless = nn.Sequential(nn.Conv2d(3, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    assert rb.penultimate(headless, ds.images).shape == (10, 2)                 # no linear layer: the logits


def test_votes_from_painted_backgrounds_find_the_images_against_the_shortcut():
    """A probe on the shortcut views of 12 annotated images (their squares inpainted) votes every image by
    its background: the images whose background disagrees with their class are found, whatever the class says."""
    ds, background = backgrounds_set()
    fb = xv.feedback.simulate(ds, fraction=0.1, kind="relevant", seed=0)
    positions = torch.tensor([ds.ids.index(i) for i in fb.sample_ids])
    views, _ = rb.shortcut_views(ds.images[positions], fb.painted("relevant"), fb.painted("irrelevant"),
                              fb.has_relevant, fb.has_irrelevant)
    votes = rb.shortcut_probe(colour_model(), views, ds.labels[positions])(ds)
    assert (votes == background).float().mean() >= 0.95
    against = background != ds.labels
    assert against.sum() >= 4 and (votes[against] == background[against]).all()
    assert rb.shortcut_probe(colour_model(), views[:1], ds.labels[positions][:1]) is None     # one class only


def test_rebalance_is_auto_for_either_kind_and_needs_some_mask():
    for has in ({"relevant": True, "irrelevant": False}, {"relevant": False, "irrelevant": True}):
        assert "rebalance" in [s.name for s in resolve("auto", has)]
    assert STRATEGIES["rebalance"].kind == "sampling"
    with pytest.raises(ValueError, match="'rebalance' learns from"):
        resolve("rebalance", {"relevant": False, "irrelevant": False})


def test_a_rebalancing_run_draws_the_images_against_the_shortcut_more_often(tmp_path):
    """xv.finetune with strategy="rebalance": the batches draw each (class, vote) cell equally, so the
    images against the background shortcut (5 % of them) fill about half of each epoch's draws."""
    ds, background = backgrounds_set(n=200, size=32)
    fb = xv.feedback.simulate(ds, fraction=0.1, kind="relevant", seed=0)
    torch.manual_seed(0)
    model = xv.models.train(xv.models.build("smallcnn", num_classes=2), ds, epochs=3, progress=False)[0]
    seen = {}
    original = loop.sampling_groups

    def spy(model, run):
        groups = original(model, run)
        seen["others"], seen["weights"], seen["groups"] = run.others, run.batches.weights, groups
        return groups

    loop.sampling_groups = spy
    try:
        result = xv.finetune(model, ds, feedback=fb, strategy="rebalance", epochs=2, versions_dir=tmp_path)
    finally:
        loop.sampling_groups = original
    against = (background != ds.labels)[seen["others"]]
    assert seen["weights"] is not None and seen["groups"] is not None
    assert float(seen["weights"][against].sum() / seen["weights"].sum()) == pytest.approx(0.5, abs=0.1)
    assert "balanced_accuracy" in result.validation[0]


def test_composites_let_the_probe_read_the_background_whatever_the_object():
    """With a bold square (a model trained on it reads the square), a probe on the views alone (squares
    inpainted) votes full images by their square; composites (each square on other views) fix it."""
    ds, background = backgrounds_set(n=200, size=32, squares=(0.2, 0.8), noise=0.0)
    fb = xv.feedback.simulate(ds, fraction=0.1, kind="relevant", seed=0)
    positions = torch.tensor([ds.ids.index(i) for i in fb.sample_ids])
    torch.manual_seed(0)
    model = xv.models.train(xv.models.build("smallcnn", num_classes=2), ds, epochs=3, progress=False)[0]
    images = ds.images[positions]
    views, evidence = rb.shortcut_views(images, fb.painted("relevant"), fb.painted("irrelevant"), fb.has_relevant,
                                        fb.has_irrelevant)
    match = {}
    for per_image in (0, 4):
        examples, labels = rb.probe_examples(images, views, evidence, ds.labels[positions], per_image)
        assert len(examples) == len(labels) == len(views) * (1 + per_image)
        match[per_image] = float((rb.shortcut_probe(model, examples, labels)(ds) == background).float().mean())
    assert match[4] >= 0.95 and match[0] < match[4]
