"""Fine-tuning strategies: counterexample mechanics, λ normalisation, the registry, the validation guard."""
import numpy as np
import pytest
import torch

import xcam_viz as xv
from xcam_viz.demo import demo_data
from xcam_viz.feedback import FeedbackStore, simulate
from xcam_viz.finetune import STRATEGIES, ModelVersions, Strategy, loop
from xcam_viz.finetune import counterexamples as cx
from xcam_viz.finetune.strategies import resolve


def _batch(images, labels, positions=None):
    n = len(images)
    blank = torch.zeros(n, *images.shape[2:], dtype=torch.bool)
    positions = torch.full((n,), -1) if positions is None else positions
    return cx.Batch(images.clone(), labels.clone(), blank.clone(), blank.clone(), positions)


def test_inpaint_fills_from_the_surroundings_and_keeps_the_rest():
    images = torch.full((2, 3, 32, 32), 0.6)
    images[1] = torch.linspace(0, 1, 32)[None, None, :].expand(3, 32, 32)        # a horizontal ramp
    hole = torch.zeros(2, 32, 32, dtype=torch.bool)
    hole[:, 10:20, 12:22] = True
    painted = images.clone()
    painted[:, 0][hole] = 1.0                                                       # a red blob to erase
    out = cx.inpaint(painted, hole, torch.Generator().manual_seed(0))
    assert torch.equal(out[:, :, ~hole[0]], painted[:, :, ~hole[0]])              # known pixels untouched
    assert (out[0][:, hole[0]] - 0.6).abs().max() < 1e-4                           # flat image: flat fill
    ramp_error = (out[1][:, hole[1]] - images[1][:, hole[1]]).abs().mean()
    assert ramp_error < 0.08 and (out[:, 0][hole] - 1.0).abs().min() > 0.2         # the blob is gone


def test_dihedral_gives_eight_distinct_invertible_placements():
    t = torch.arange(16.).view(4, 4)
    seen = {tuple(cx.dihedral(t, k).flatten().tolist()) for k in range(8)}
    assert len(seen) == 8 and torch.equal(cx.dihedral(t, 0), t)
    wide = torch.arange(8.).view(2, 4)
    assert all(cx.dihedral(wide, k).shape == (2, 4) for k in range(8))


def _donors(images, irrelevant=None, relevant=None):
    n = len(images)
    blank = torch.zeros(n, *images.shape[2:], dtype=torch.bool)
    irrelevant = blank if irrelevant is None else irrelevant
    relevant = blank if relevant is None else relevant
    return cx.Donors(images, relevant, irrelevant, relevant.flatten(1).any(1), irrelevant.flatten(1).any(1))


def test_a_moved_region_lands_where_it_should_and_the_image_keeps_its_label():
    donor = torch.zeros(1, 3, 16, 16)
    region = torch.zeros(1, 16, 16, dtype=torch.bool)
    region[0, 1:3, 2:7] = True                                                      # an asymmetric stroke
    donor[0, 2][region[0]] = 1.0                                                    # blue ink
    donors = _donors(donor, irrelevant=region)
    targets = torch.full((6, 3, 16, 16), 0.5)
    batch = _batch(targets, torch.tensor([0, 1, 0, 1, 0, 1]))
    gen = torch.Generator().manual_seed(1)
    cx.move_irrelevant(batch, donors, torch.tensor([1, 3, 4]), gen)
    assert torch.equal(batch.labels, torch.tensor([0, 1, 0, 1, 0, 1]))
    for row in range(6):
        moved = batch.irrelevant[row]
        if row in (1, 3, 4):
            assert any(torch.equal(moved, cx.dihedral(region[0], k)) for k in range(8))  # a placement of it
            assert torch.equal(batch.images[row][:, moved], torch.tensor([[0.], [0.], [1.]]).expand(3, 10))
            assert torch.equal(batch.images[row][:, ~moved], targets[row][:, ~moved])
        else:
            assert not moved.any() and torch.equal(batch.images[row], targets[row])


def test_large_irrelevant_regions_are_not_moved_and_erasing_keeps_the_label():
    data = demo_data("train", n=40)
    marked = data.regions["confounder"].flatten(1).any(1)
    images, marks = data.images[marked][:4], data.regions["confounder"][marked][:4]
    big = torch.ones_like(marks[:1])                                                # "everything" is no object
    donors = _donors(torch.cat([images, images[:1]]), irrelevant=torch.cat([marks, big]))
    assert len(donors.regions) == 4 and not donors.erasable[4]
    batch = _batch(images, data.labels[marked][:4], positions=torch.arange(4))
    cx.erase_irrelevant(batch, donors, torch.arange(4), torch.arange(4))
    ink = torch.tensor([0.38, 0.22, 0.55])[:, None]
    for i in range(4):
        before = (images[i][:, marks[i]] - ink).abs().mean()
        after = (batch.images[i][:, marks[i]] - ink).abs().mean()
        assert before < 0.05 < after                                                # the ink is gone
        assert torch.equal(batch.images[i][:, ~marks[i]], images[i][:, ~marks[i]])
    assert torch.equal(batch.labels, data.labels[marked][:4])


def test_swap_background_keeps_the_region_and_changes_the_rest():
    data = demo_data("train", n=8)
    donors = _donors(data.images, relevant=data.masks)
    batch = _batch(data.images, data.labels, positions=torch.arange(8))
    batch.relevant[:] = data.masks
    cx.swap_background(batch, donors, torch.arange(8), torch.Generator().manual_seed(0))
    for i in range(8):
        inside, outside = data.masks[i], ~torch.nn.functional.max_pool2d(
            data.masks[i][None, None].float(), 3, 1, 1)[0, 0].bool()
        assert torch.equal(batch.images[i][:, inside], data.images[i][:, inside])
        assert any(torch.allclose(batch.images[i][:, outside], bg[:, outside]) for bg in donors.backgrounds)
    assert torch.equal(batch.labels, data.labels)


def test_lambda_is_normalised_against_cross_entropy(demo_model):
    data = demo_data("train", n=8)
    settings = dict(lam=1.0, layer="block4", method="gradcam")
    terms = {}
    for size in (1.0, 1000.0):
        term = Strategy("big", "irrelevant", "loss", "", lambda ctx, k=size: k * ctx.images.mean((1, 2, 3)))
        batch = _batch(data.images, data.labels)
        batch.irrelevant[:, :4] = True
        scale = {}
        parts = loop.step_losses(demo_model, batch, (term,), scale, settings, torch.device("cpu"))
        assert torch.allclose(parts["explanation"], parts["ce"], rtol=1e-5)          # as large as CE at start
        terms[size] = float(parts["explanation"])
        again = loop.step_losses(demo_model, batch, (term,), scale, settings, torch.device("cpu"))
        assert torch.allclose(again["explanation"], parts["explanation"])           # the scale stays fixed
    assert terms[1.0] == pytest.approx(terms[1000.0], rel=1e-5)                    # raw size does not matter


def test_registry_resolves_auto_by_kind_and_refuses_bad_names():
    assert set(STRATEGIES) >= {"move-irrelevant", "erase-irrelevant", "swap-background", "cam-relevant",
                               "cam-irrelevant", "rrr"}
    both = [s.name for s in resolve("auto", {"relevant": True, "irrelevant": True})]
    only_irr = [s.name for s in resolve("auto", {"relevant": False, "irrelevant": True})]
    assert set(only_irr) < set(both) and all(STRATEGIES[n].learns_from in ("irrelevant", "any") for n in only_irr)
    assert resolve("auto", {"relevant": False, "irrelevant": False}) == ()           # class corrections only
    with pytest.raises(ValueError, match="unknown strategy 'paint'.*move-irrelevant"):
        resolve("move-irrelevant+paint", {"relevant": True, "irrelevant": True})
    with pytest.raises(ValueError, match="'cam-relevant' learns from relevant masks"):
        resolve("cam-relevant", {"relevant": False, "irrelevant": True})


def test_validation_is_carved_from_training_images_without_feedback(fresh_demo_model, tmp_path):
    data = demo_data("train", n=120)
    fb = simulate(data, fraction=0.1, kind="irrelevant")
    result = xv.finetune(fresh_demo_model, data, feedback=fb, epochs=2, patience=1, versions_dir=tmp_path)
    val_ids = set(result.metrics.attrs["validation_ids"])
    assert val_ids and not val_ids & set(fb.sample_ids) and val_ids <= set(data.ids)
    labels = data.labels[[data.index_of(i) for i in val_ids]]
    assert set(labels.tolist()) == {0, 1}                                           # stratified
    assert len(result.validation) >= 1 and 1 <= result.best_epoch <= 2
    assert np.isfinite(float(result.metrics.accuracy.sel(stage="after", split="validation")))


def test_a_run_that_gets_worse_is_saved_but_flagged(fresh_demo_model, tmp_path):
    data = demo_data("train", n=64)
    store = FeedbackStore(tmp_path / "fb.db", dataset=data)
    for i in range(0, 64, 2):                                                        # wrong class corrections
        store.add(data.ids[i], label=1 - int(data.labels[i]))
    result = xv.finetune(fresh_demo_model, data, feedback=store, lr=0.05, epochs=3, feedback_share=0.9,
                         validation=demo_data("test", n=64), versions_dir=tmp_path / "v")
    drop = result.metrics.accuracy.sel(stage="before", split="validation") - \
        result.metrics.accuracy.sel(stage="after", split="validation")
    assert float(drop) > 0.02 and result.flagged and "validation accuracy fell" in result.warning
    meta = ModelVersions(tmp_path / "v").meta(result.version)
    assert meta["flagged"] is True and meta["parent"] == "v0"


def test_swap_beyond_objects_moves_only_what_no_painted_object_reaches():
    data = demo_data("train", n=12)
    donors = _donors(data.images[:6], relevant=data.masks[:6])
    reach = torch.nn.functional.max_pool2d(data.masks[:6, None].float(), 5, 1, 2)[:, 0].bool().any(0)
    assert torch.equal(donors.beyond_objects, ~reach) and donors.beyond_objects.any()
    batch = _batch(data.images[6:], data.labels[6:])                               # images without feedback
    cx.swap_beyond_objects(batch, donors, torch.arange(6), torch.Generator().manual_seed(0))
    for i in range(6):
        assert torch.equal(batch.images[i][:, reach], data.images[6 + i][:, reach])
        assert any(torch.equal(batch.images[i][:, ~reach], bg[:, ~reach]) for bg in donors.backgrounds)
    assert torch.equal(batch.labels, data.labels[6:])
    everywhere = _donors(data.images[:2], relevant=torch.ones_like(data.masks[:2]))
    assert not everywhere.can_swap_beyond                                          # objects fill the image: no-op


def test_validation_counterexamples_use_the_strategies_that_spread():
    data = demo_data("train", n=40)
    marked = data.regions["confounder"].flatten(1).any(1)
    donors = _donors(data.images[marked][:3], irrelevant=data.regions["confounder"][marked][:3])
    val = data.subset(range(20, 40))
    moved = loop.validation_counterexamples(val, donors, (STRATEGIES["move-irrelevant"],), seed=0)
    changed = (moved != val.images).flatten(1).any(1)
    assert changed.float().mean() > 0.9                                            # (nearly) every image moved
    assert loop.validation_counterexamples(val, donors, (STRATEGIES["erase-irrelevant"],), seed=0) is None
