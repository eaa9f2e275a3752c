"""FeedbackStore (round trips, undo, validation, concurrency, exchange) and simulated feedback."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import xcam_viz as xv
from xcam_viz.demo import demo_data
from xcam_viz.feedback import FeedbackSet, FeedbackStore, simulate


@pytest.fixture(scope="module")
def small():
    return demo_data("train", n=40)


def _random_mask(rng, shape=(64, 64)):
    m = rng.random(shape) < 0.3
    m[0, 0] = True
    return m


def test_round_trip_is_exact(tmp_path):
    store = FeedbackStore(tmp_path / "fb.db")
    rng = np.random.default_rng(0)
    given = [("a", _random_mask(rng), None, None), ("a", None, _random_mask(rng), 1),
             ("b", _random_mask(rng, (17, 33)), _random_mask(rng, (17, 33)), 0), ("c", None, None, 2)]
    ids = [store.add(s, relevant=r, irrelevant=i, label=lab, author="ana", model_version="v3")
           for s, r, i, lab in given]
    assert len(store) == 4 and len(set(ids)) == 4
    assert store.sample_ids() == ["a", "b", "c"]
    reopened = FeedbackStore(tmp_path / "fb.db")
    got = reopened.annotations()
    for (s, r, i, lab), a in zip(given, got):
        assert a.sample_id == s and a.label == lab and a.author == "ana" and a.model_version == "v3"
        for want, have in ((r, a.relevant), (i, a.irrelevant)):
            assert (want is None and have is None) or (have.dtype == bool and np.array_equal(want, have))
    assert [a.id for a in reopened.annotations("a")] == ids[:2]


def test_masks_accept_tensors_and_soft_values(tmp_path):
    store = FeedbackStore(tmp_path / "fb.db")
    soft = torch.zeros(1, 8, 8)
    soft[0, 2:4, 2:4] = 0.7
    store.add("s", relevant=soft, irrelevant=(soft > 0).to(torch.uint8) * 255)
    a = store.annotations("s")[0]
    assert a.relevant.shape == (8, 8) and a.relevant.sum() == 4 and np.array_equal(a.relevant, a.irrelevant)


def test_undo_appends_a_tombstone(tmp_path):
    store = FeedbackStore(tmp_path / "fb.db")
    m = np.ones((4, 4), bool)
    first = store.add("s", relevant=m)
    second = store.add("s", irrelevant=m)
    store.add("t", relevant=m)
    assert store.undo("s") == second
    assert [a.id for a in store.annotations("s")] == [first] and len(store) == 2
    assert store.undo("s") == first and store.undo("s") is None
    assert store.sample_ids() == ["t"]
    assert [(a.id, a.undone) for a in store.history("s")] == [(first, True), (second, True)]
    third = store.add("s", relevant=m)                     # annotating again after an undo
    assert [a.id for a in store.annotations("s")] == [third]


@pytest.mark.parametrize("bad, match", [
    (dict(sample_id="nope", relevant=np.ones((64, 64), bool)), "unknown sample id 'nope'"),
    (dict(relevant=np.ones((32, 64), bool)), r"is 32×64 but its image is 64×64"),
    (dict(relevant=np.zeros((64, 64), bool)), "empty"),
    (dict(irrelevant=np.full((64, 64), 2.0)), r"outside \[0, 1\]"),
    (dict(relevant=-np.ones((64, 64), int)), "negative"),
    (dict(relevant=np.ones((2, 64, 64), bool)), "2-D"),
    (dict(label=7), "not a class"),
    (dict(), "holds nothing"),
])
def test_bad_annotations_are_refused_clearly(tmp_path, small, bad, match):
    store = FeedbackStore(tmp_path / "fb.db", dataset=small)
    bad = {"sample_id": small.ids[0], **bad}
    with pytest.raises((ValueError, KeyError), match=match):
        store.add(**bad)
    assert len(store) == 0


def test_add_many_is_all_or_nothing(tmp_path, small):
    store = FeedbackStore(tmp_path / "fb.db", dataset=small)
    good = dict(sample_id=small.ids[1], relevant=small.masks[1])
    with pytest.raises(KeyError, match="unknown sample id"):
        store.add_many([good, dict(sample_id="elsewhere", relevant=small.masks[1])])
    assert len(store) == 0
    assert len(store.add_many([good, good])) == 2


def test_concurrent_processes_lose_nothing(tmp_path):
    path = tmp_path / "fb.db"
    FeedbackStore(path)
    worker = textwrap.dedent(f"""
        import sys, numpy as np
        from xcam_viz.feedback import FeedbackStore
        store, who = FeedbackStore({str(path)!r}), sys.argv[1]
        m = np.zeros((16, 16), bool); m[2:5, 3:9] = True
        for i in range(1000):
            store.add(f"{{who}}-{{i % 37}}", relevant=m, label=i % 2, author=who)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", worker, w]) for w in ("ana", "ben")]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    store = FeedbackStore(path)
    assert len(store) == 2000
    assert sorted(a.author for a in store.annotations()).count("ben") == 1000


def test_threads_share_one_store(tmp_path):
    from concurrent.futures import ThreadPoolExecutor
    store = FeedbackStore(tmp_path / "fb.db")
    m = np.ones((4, 4), bool)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: store.add(f"s{i % 5}", relevant=m), range(100)))
    assert len(store) == 100


def test_feedback_is_the_union_per_sample(tmp_path, small):
    store = FeedbackStore(tmp_path / "fb.db", dataset=small)
    a, b = np.zeros((64, 64), bool), np.zeros((64, 64), bool)
    a[:10], b[-10:] = True, True
    store.add(small.ids[3], relevant=a, label=0)
    store.add(small.ids[3], relevant=b, label=1)
    store.add(small.ids[1], irrelevant=a)
    fb = store.feedback()
    assert fb.sample_ids == [small.ids[1], small.ids[3]]          # data-set order
    assert torch.equal(fb.relevant[1], torch.from_numpy(a | b)) and fb.labels.tolist() == [-1, 1]
    assert fb.has_relevant.tolist() == [False, True] and fb.has_irrelevant.tolist() == [True, False]
    dense, has = store.masks(small, "irrelevant")
    assert dense.shape == (40, 64, 64) and has.nonzero().flatten().tolist() == [1]
    store.undo(small.ids[3])
    assert torch.equal(store.feedback().relevant[1], torch.from_numpy(a))


def test_netcdf_round_trip_keeps_history(tmp_path, small):
    store = FeedbackStore(tmp_path / "fb.db")
    rng = np.random.default_rng(1)
    store.add("x", relevant=_random_mask(rng), author="ana", model_version="v0")
    store.add("y", irrelevant=_random_mask(rng, (8, 12)), label=1, author="ben")
    store.add("x", label=0)
    store.undo("x")
    nc = store.to_netcdf(tmp_path / "fb.nc")
    copy = FeedbackStore.from_netcdf(nc, tmp_path / "copy.db")

    def state(s):
        return [(a.sample_id, a.label, a.author, a.model_version, a.undone, a.time.timestamp(),
                 None if a.relevant is None else a.relevant.tobytes(),
                 None if a.irrelevant is None else a.irrelevant.tobytes()) for a in s.history()]
    assert [x[:5] + x[6:] for x in state(copy)] == [x[:5] + x[6:] for x in state(store)]
    assert np.allclose([x[5] for x in state(copy)], [x[5] for x in state(store)], atol=1e-5)
    assert len(copy) == len(store) == 2
    assert copy.import_netcdf(nc) == 0 and len(copy.history()) == 3      # merging twice adds nothing
    assert FeedbackStore(tmp_path / "empty.db").to_netcdf(tmp_path / "empty.nc").exists()
    with pytest.raises(ValueError, match="not an xcam-viz feedback export"):
        store.import_xarray(small.to_xarray())


def test_simulate_fraction_kinds_and_strokes(small):
    fb = simulate(small, fraction=0.25, kind="relevant", seed=3)
    assert isinstance(fb, FeedbackSet) and len(fb) == 10
    pos = torch.tensor([small.index_of(s) for s in fb.sample_ids])
    assert torch.equal(fb.relevant, small.masks[pos]) and not fb.has_irrelevant.any()
    assert simulate(small, fraction=0.25, seed=3).sample_ids == fb.sample_ids          # deterministic

    irr = simulate(small, fraction=0.5, kind="irrelevant", seed=3)     # the marker, painted where it is
    conf = small.regions["confounder"][[small.index_of(s) for s in irr.sample_ids]]
    assert conf.flatten(1).any(1).all() and torch.equal(irr.irrelevant, conf) and irr.has_irrelevant.all()
    assert len(irr) == min(20, int(small.regions["confounder"].flatten(1).any(1).sum()))
    no_marker = xv.data.from_arrays(small.images.numpy(), small.labels.numpy(), masks=small.masks.numpy())
    background = simulate(no_marker, fraction=0.25, kind="irrelevant", seed=3)     # no confounder known
    assert torch.equal(background.irrelevant, ~no_marker.masks[[no_marker.index_of(s) for s in background.sample_ids]])

    both = simulate(small, fraction=0.5, kind="both")
    marked = small.regions["confounder"][[small.index_of(s) for s in both.sample_ids]].flatten(1).any(1)
    assert both.has_relevant.all() and torch.equal(both.has_irrelevant, marked) and (~marked).any()
    assert not both.irrelevant[~marked].any()

    exact = fb.relevant.sum((1, 2))
    assert (simulate(small, 0.25, seed=3, stroke={"dilate": 2}).relevant.sum((1, 2)) > exact).all()
    assert (simulate(small, 0.25, seed=3, stroke={"erode": 2}).relevant.sum((1, 2)) < exact).all()
    half = simulate(small, 0.25, seed=3, stroke={"incomplete": 0.5}).relevant
    assert (half <= fb.relevant).all() and torch.allclose(half.sum((1, 2)) / exact, torch.tensor(0.5), atol=0.1)
    assert simulate(small, 0.25, seed=3, stroke={"erode": 50}).relevant.flatten(1).any(1).all()
    with pytest.raises(ValueError, match="unknown stroke kind .blur.; the kinds are wrong, dilate"):
        simulate(small, stroke={"blur": 1})


def test_simulate_writes_into_a_store(tmp_path, small):
    store = simulate(small, fraction=0.1, kind="both", store=FeedbackStore(tmp_path / "fb.db", dataset=small))
    assert len(store) == 4 and {a.author for a in store.annotations()} == {"simulated"}
    assert store.feedback().sample_ids == simulate(small, fraction=0.1).sample_ids
    assert isinstance(xv.FeedbackStore, type) and xv.feedback.simulate is simulate
