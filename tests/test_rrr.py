"""rrr's input-gradient term runs its double backward on the rows with an irrelevant mask only."""
import dataclasses

import torch

from xcam_viz.finetune import STRATEGIES, loop, rrr_loss
from xcam_viz.finetune import counterexamples as cx
from xcam_viz.finetune import strategies as strategies_module

SETTINGS = {"lam": 1.0, "layer": "block4", "method": "gradcam"}


def _batch(ds, n: int, painted: list[int]) -> cx.Batch:
    """The first `n` images of `ds`, those at `painted` with the marker and the skin painted irrelevant."""
    irrelevant = torch.zeros(n, *ds.image_shape[1:], dtype=torch.bool)
    irrelevant[painted] = ds.regions["confounder"][painted] | ~ds.masks[painted]
    positions = torch.full((n,), -1, dtype=torch.long)
    positions[painted] = torch.arange(len(painted))
    return cx.Batch(ds.images[:n].clone(), ds.labels[:n].clone(), torch.zeros_like(irrelevant), irrelevant, positions)


def _step(model, batch, strategy) -> tuple[dict, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loop.train_mode(model)
    parts = loop.step_losses(model, batch, (strategy,), {}, SETTINGS, torch.device("cpu"))
    parts["loss"].backward()
    return parts, [p.grad.clone() for p in model.parameters()]


def test_rrr_on_the_annotated_rows_equals_the_whole_batch_computation(fresh_demo_model, demo_test):
    batch = _batch(demo_test, 12, painted=[1, 4, 9])
    whole = dataclasses.replace(STRATEGIES["rrr"],
                                apply=lambda ctx: rrr_loss(ctx.model, ctx.images, ctx.mask("irrelevant"))[0])
    rows, rows_grads = _step(fresh_demo_model, batch, STRATEGIES["rrr"])
    every, every_grads = _step(fresh_demo_model, batch, whole)
    assert rows["rrr"] > 0 and rows["explanation"] > 0
    for name in ("loss", "ce", "rrr", "explanation"):
        torch.testing.assert_close(rows[name], every[name], rtol=1e-5, atol=1e-7)
    for a, b in zip(rows_grads, every_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_a_batch_without_masks_skips_the_double_backward(fresh_demo_model, demo_test, monkeypatch):
    calls = []
    monkeypatch.setattr(strategies_module, "rrr_loss", lambda model, x, mask: calls.append(len(x)))
    batch = _batch(demo_test, 6, painted=[])
    parts = loop.step_losses(fresh_demo_model, batch, (STRATEGIES["rrr"],), {}, SETTINGS, torch.device("cpu"))
    assert calls == [] and parts["rrr"] == 0 and torch.equal(parts["loss"], parts["ce"])
    with torch.no_grad():
        assert torch.allclose(parts["ce"], torch.nn.functional.cross_entropy(fresh_demo_model(batch.images),
                                                                             batch.labels))
