"""Unit dissection, ROI matching, progressive labelling and the unit embedding."""
import numpy as np
import pytest
import torch
from torch import nn

import xcam_viz as xv
from xcam_viz.concepts import LabelStore, StreamingQuantile, dissect, embed_units

SIZE = 16


class Engineered(nn.Module):
    """Units 0-2 fire on the top-left quadrant, units 3-5 on the bottom-right, 6-7 on one pixel row."""

    def __init__(self):
        super().__init__()
        region = torch.zeros(8, SIZE, SIZE)
        region[0:3, :8, :8] = 1
        region[3:6, 8:, 8:] = 1
        region[6:8, 3, :] = 1
        self.register_buffer("region", region * torch.linspace(1, 1.5, 8).view(8, 1, 1))
        self.features = nn.Identity()
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        a = self.features((x.mean(1, keepdim=True) + 0.5) * self.region)
        return self.head(a.mean((2, 3)))


@pytest.fixture()
def engineered_units():
    torch.manual_seed(0)
    data = xv.data.from_arrays(np.random.default_rng(0).random((20, 3, SIZE, SIZE)).astype(np.float32),
                               [0, 1] * 10)
    return dissect(Engineered(), data, "features", quantile=0.5, batch_size=6, progress=False)


def test_streaming_quantile_equals_in_memory():
    g = torch.Generator().manual_seed(1)
    values = torch.randn(5, 3001, generator=g)
    for q in (0.5, 0.9, 0.99, 0.995):
        stream = StreamingQuantile(5, values.shape[1], q)
        for chunk in values.split(137, dim=1):
            stream.update(chunk)
        assert torch.allclose(stream.result(), torch.quantile(values, q, dim=1), atol=1e-6)
        assert stream.top.shape[1] <= values.shape[1] * (1 - q) + 2


def test_dissect_thresholds_equal_in_memory_quantile(demo_model, demo_test):
    units = dissect(demo_model, demo_test, "block3", quantile=0.99, batch_size=16, progress=False)
    from xcam_viz.explain import capture
    full = capture(demo_model, demo_test.images, "block3", gradients=False).activations["block3"]
    expected = torch.quantile(full.transpose(0, 1).flatten(1), 0.99, dim=1)
    assert torch.allclose(units.thresholds, expected, atol=1e-5)
    assert units.peak.shape == (len(demo_test), 64) and len(units) == 64


def test_match_ranks_engineered_units_first(engineered_units):
    roi = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    roi[:8, :8] = True
    ranked = engineered_units.match(engineered_units.data.ids[0], roi)
    assert set(ranked.unit.values[:3].tolist()) == {0, 1, 2}
    assert (ranked.values[:3] > 0.9).all() and (ranked.values[3:] < 0.2).all()


def test_label_gives_the_name_to_exactly_the_units_above_threshold(engineered_units):
    units = engineered_units
    sid = units.data.ids[1]
    roi = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    roi[8:, 8:] = True
    ious = units.match(sid, roi)
    expected = sorted(int(u) for u, v in zip(ious.unit.values, ious.values) if v > 0.2)
    assert sorted(units.label(sid, roi, "bottom right")) == expected == [3, 4, 5]
    row = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    row[3, :] = True
    assert sorted(units.label(sid, row, "row")) == [6, 7]
    # a worse match does not take a unit's label away; a better one does
    loose = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    loose[6:, 6:] = True
    assert units.label(sid, loose, "worse") == []
    current = units.labels.current("features")
    assert {u: n for u, (n, _) in current.items()} == {3: "bottom right", 4: "bottom right", 5: "bottom right",
                                                      6: "row", 7: "row"}
    table = units.concept_table(sid)
    assert list(table.concept.values) == ["bottom right", "row"] and table.units.values.tolist() == [3, 2]


def test_labels_persist_with_history(tmp_path, engineered_units):
    path = tmp_path / "labels.db"
    units = engineered_units
    units.labels = LabelStore(path)
    roi = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    roi[:8, :8] = True
    units.label(units.data.ids[0], roi, "top left", author="ana")
    reopened = LabelStore(path)
    assert {u for u, (n, _) in reopened.current("features").items() if n == "top left"} == {0, 1, 2}
    hist = reopened.history()
    assert len(hist.event) == 3 and set(hist.author.values) == {"ana"}
    assert reopened.names() == ["top left"] and reopened.names(("lesion",)) == ["lesion", "top left"]


def test_bad_roi_and_names(engineered_units):
    sid = engineered_units.data.ids[0]
    with pytest.raises(ValueError, match="ROI is empty"):
        engineered_units.match(sid, torch.zeros(SIZE, SIZE, dtype=torch.bool))
    with pytest.raises(ValueError, match="image size"):
        engineered_units.match(sid, torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="non-empty name"):
        engineered_units.label(sid, torch.ones(SIZE, SIZE, dtype=torch.bool), " ")
    with pytest.raises(KeyError, match="unknown sample id"):
        engineered_units.match("nope", torch.ones(SIZE, SIZE, dtype=torch.bool))
    with pytest.raises(ValueError, match="strictly between"):
        StreamingQuantile(2, 10, 1.0)


def test_embedding_clusters_units_with_best_silhouette(engineered_units):
    emb = embed_units(engineered_units)
    assert emb.pc1.shape == (8,) and 2 <= emb.attrs["best_k"] <= 7
    assert emb.silhouette.sel(k=emb.attrs["best_k"]) == emb.silhouette.max()
    assert len(set(emb.cluster.values.tolist())) == emb.attrs["best_k"]


def around(mask: torch.Tensor, pixels: int = 6) -> torch.Tensor:
    """The mask grown by `pixels` on every side (a loose region drawn around a whole object)."""
    grown = nn.functional.max_pool2d(mask[None, None].float(), 2 * pixels + 1, stride=1, padding=pixels)
    return grown[0, 0] > 0


@pytest.mark.parametrize("source", ["demo", "decoy_digits"])
def test_a_region_around_a_whole_object_finds_the_units_firing_inside(source, demo_model, demo_test):
    data = demo_test if source == "demo" else xv.data.decoy_digits(n=64, size=64, split="test")
    units = dissect(demo_model, data, "block3", progress=False)
    by_iou = by_auto = 0
    for i, sid in enumerate(data.ids[:12]):
        roi = around(data.masks[i])                     # lesion / digit and a margin: far larger than unit masks
        by_iou += int((units.match(sid, roi, "iou").values > 0.2).sum())
        chosen = units.label(sid, roi, f"object {i}")
        masks = units.masks(sid)
        for u in chosen:                                # most of each chosen unit's mask lies in the region
            assert masks[u].any() and (masks[u] & roi).sum() / masks[u].sum() > 0.5
        by_auto += len(chosen)
    assert by_iou == 0 and by_auto >= 5                 # the IoU rule alone labels nothing here


def test_a_small_region_keeps_the_iou_rule(demo_model, demo_test):
    units = dissect(demo_model, demo_test, "block3", progress=False)
    sid = demo_test.ids[3]
    masks = units.masks(sid)
    unit = int(masks.flatten(1).sum(1).argmax())
    ranked = units.match(sid, masks[unit])              # exactly one unit's mask
    assert ranked.attrs["rule"] == "iou" and ranked.name == "iou"
    assert int(ranked.unit[0]) == unit and float(ranked[0]) == 1.0
    with pytest.raises(ValueError, match="unknown matching rule"):
        units.match(sid, masks[unit], "dice")


def test_concept_table_lists_only_concepts_active_on_the_image(demo_model, demo_test):
    units = dissect(demo_model, demo_test, "block3", progress=False)
    sid = demo_test.ids[3]
    masks = units.masks(sid)
    unit = int(masks.flatten(1).sum(1).argmax())
    chosen = units.label(sid, masks[unit], "spot")
    assert unit in chosen
    quiet = next(s for s in demo_test.ids if not units.active(s)[chosen].any())
    assert list(units.concept_table(sid).concept.values) == ["spot"]
    assert list(units.concept_table(quiet).concept.values) == []
