"""Fine-tuning on feedback: losses, versions, background jobs, cancellation, crashes, the CLI."""
import importlib
import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import torch

import xcam_viz as xv
from xcam_viz.demo import demo_data
from xcam_viz.feedback import FeedbackStore, simulate
from xcam_viz.finetune import AUTO, ModelVersions, irrelevant_loss, relevant_loss, rrr_loss


@pytest.fixture(scope="module")
def tiny():
    return demo_data("train", n=48)


@pytest.fixture(scope="module")
def tiny_feedback(tiny):
    return simulate(tiny, fraction=0.25, kind="both")


def test_cam_losses():
    cam = torch.zeros(2, 8, 8)
    cam[:, 2:4, 2:4] = 1.0
    inside = torch.zeros(2, 8, 8)
    inside[:, :4, :4] = 1
    assert torch.allclose(relevant_loss(cam, inside), torch.zeros(2), atol=1e-6)
    assert torch.allclose(relevant_loss(cam, 1 - inside), torch.ones(2), atol=1e-6)
    assert torch.allclose(irrelevant_loss(cam, inside), torch.ones(2), atol=1e-6)
    assert torch.allclose(relevant_loss(torch.zeros(2, 8, 8), inside), torch.ones(2))   # dark CAM: no mass inside


def test_rrr_loss_is_input_gradient_energy(demo_model, tiny):
    x, mask = tiny.images[:4], torch.zeros(4, 64, 64)
    loss, logits = rrr_loss(demo_model, x, mask)
    assert torch.equal(loss, torch.zeros(4)) and logits.shape == (4, 2)
    loss, _ = rrr_loss(demo_model, x, mask + 1)
    assert (loss > 0).all()
    loss.sum().backward()
    assert demo_model.head.weight.grad is not None
    demo_model.zero_grad(set_to_none=True)


def test_finetune_makes_a_new_version_and_keeps_the_base(fresh_demo_model, tiny, tiny_feedback, tmp_path):
    before = xv.models.fingerprint(fresh_demo_model)
    result = xv.finetune(fresh_demo_model, tiny, feedback=tiny_feedback, layer="block4", epochs=1,
                         versions_dir=tmp_path, eval_data={"test": demo_data("test", n=16)})
    assert xv.models.fingerprint(fresh_demo_model) == before                 # the caller's model is untouched
    assert (result.base_version, result.version) == ("v0", "v1") and not result.cancelled
    versions = ModelVersions(tmp_path)
    assert versions.list() == ["v0", "v1"] and versions.latest == "v1"
    assert xv.models.fingerprint(versions.load("v0")) == before
    assert xv.models.fingerprint(versions.load("v1")) == xv.models.fingerprint(result.model) != before
    auto = "+".join(dict.fromkeys(n for kind in ("irrelevant", "relevant") for n in AUTO[kind]))
    assert versions.meta("v1")["parent"] == "v0" and versions.meta("v1")["strategy"] == auto
    assert result.history.sizes["step"] == 1 and set(result.history) >= {"loss", "ce", "explanation", "epoch"}
    assert result.metrics.accuracy.dims == ("stage", "split") and np.isfinite(result.metrics.to_array()).all()
    assert "| test | pointing_game |" in result.summary()

    again = xv.finetune(fresh_demo_model, tiny, feedback=tiny_feedback, layer="block4", epochs=1, versions_dir=tmp_path)
    assert (again.base_version, again.version) == ("v0", "v2")                # the base is recognised, not re-saved
    chained = xv.finetune(None, tiny, feedback=tiny_feedback, layer="block4", epochs=1, versions_dir=tmp_path,
                          base_version="v2", strategy="rrr")
    assert (chained.base_version, chained.version) == ("v2", "v3")


def test_store_feedback_with_label_correction_and_control(fresh_demo_model, tiny, tmp_path):
    store = FeedbackStore(tmp_path / "fb.db", dataset=tiny)
    store.add(tiny.ids[0], relevant=tiny.masks[0], label=1 - int(tiny.labels[0]))
    result = xv.finetune(fresh_demo_model, tiny, feedback=store, layer="block4", lam=0, epochs=1,
                         versions_dir=tmp_path / "v", strategy="cam-relevant")
    assert result.settings["strategy"] == "cam-relevant" and (result.history.explanation == 0).all()


@pytest.mark.parametrize("kw, match", [
    (dict(strategy="swap-background+shortcut"), "unknown strategy 'shortcut'"),
    (dict(lr=5.0), "lr must lie in"),
    (dict(epochs=0), "epochs must be at least 1"),
    (dict(patience=0), "patience must be"),
    (dict(lam=-1), "lam must be"),
    (dict(layer="block9"), "no layer 'block9'"),
    (dict(method="scorecam"), "gradient CAM method"),
])
def test_bad_settings_are_refused(fresh_demo_model, tiny, tiny_feedback, tmp_path, kw, match):
    with pytest.raises((ValueError, KeyError), match=match):
        xv.finetune(fresh_demo_model, tiny, feedback=tiny_feedback, versions_dir=tmp_path, **kw)


def test_feedback_must_fit_the_data(fresh_demo_model, tiny, tmp_path):
    only_irrelevant = simulate(tiny, fraction=0.1, kind="irrelevant")
    with pytest.raises(ValueError, match="learns from relevant masks"):
        xv.finetune(fresh_demo_model, tiny, feedback=only_irrelevant, strategy="swap-background",
                    versions_dir=tmp_path)
    elsewhere = simulate(demo_data("test", n=8), fraction=0.5)
    with pytest.raises(ValueError, match="none of the 4 samples with feedback is in the data set"):
        xv.finetune(fresh_demo_model, tiny, feedback=elsewhere, versions_dir=tmp_path)


def test_background_job_reports_cancels_and_stays_consistent(fresh_demo_model, tmp_path):
    data = demo_data("train", n=160)
    started = threading.Event()
    seen = []

    def on_progress(p):
        seen.append(p)
        if p["step"] >= 1:
            started.set()

    job = xv.finetune(fresh_demo_model, data, feedback=simulate(data, 0.1), layer="block4", epochs=50,
                      versions_dir=tmp_path, background=True, on_progress=on_progress)
    assert started.wait(120), job.progress
    job.cancel()
    result = job.result(timeout=120)
    assert job.done and job.cancelled and result.cancelled and result.version is None
    p = job.progress
    assert p["phase"] == "cancelled" and p["step"] < p["total_steps"] and 0 < p["fraction"] < 1
    assert {"loss", "ce", "explanation"} <= set(p["losses"]) and p["epoch"] == 1      # stopped mid-epoch
    assert ModelVersions(tmp_path).list() == ["v0"]                                  # a cancelled run saves nothing
    assert all(torch.isfinite(t).all() for t in result.model.state_dict().values())
    xv.models.save(result.model, tmp_path / "cancelled.pt")
    again = xv.models.load(tmp_path / "cancelled.pt")
    assert np.allclose(xv.models.predict(again, data.images[:8]).probability.values,
                       xv.models.predict(result.model, data.images[:8]).probability.values, atol=1e-5)
    steps = [q["step"] for q in seen if q["phase"] == "training"]
    assert steps == sorted(steps)


def test_background_errors_are_raised_from_result(fresh_demo_model, tiny, tiny_feedback, tmp_path, monkeypatch):
    def fail(*args):
        raise RuntimeError("evaluation broke")
    monkeypatch.setattr(importlib.import_module("xcam_viz.finetune.core"), "_evaluate", fail)
    job = xv.finetune(fresh_demo_model, tiny, feedback=tiny_feedback, layer="block4", epochs=1,
                      versions_dir=tmp_path, background=True)
    with pytest.raises(RuntimeError, match="evaluation broke"):
        job.result(timeout=120)
    assert job.done and job.progress["phase"] == "failed"


def _bytes(mask):
    return None if mask is None else mask.tobytes()


def test_sigkill_mid_finetune_loses_nothing(tmp_path, demo_model):
    data = demo_data("train", n=160)
    store = simulate(data, fraction=0.2, kind="both", store=FeedbackStore(tmp_path / "fb.db"))
    saved = [(a.sample_id, _bytes(a.relevant), _bytes(a.irrelevant)) for a in store.annotations()]
    versions = ModelVersions(tmp_path / "versions")
    versions.save_new(demo_model)
    script = textwrap.dedent(f"""
        import sys, xcam_viz as xv
        from xcam_viz.demo import demo_data
        from xcam_viz.finetune import ModelVersions
        def tell(p):
            if p["step"] == 2:
                print("training", flush=True)
        xv.finetune(None, demo_data("train", n=160), feedback=xv.FeedbackStore({str(tmp_path / "fb.db")!r}),
                    layer="block4", epochs=50, base_version="v0", versions_dir={str(tmp_path / "versions")!r},
                    on_progress=tell)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "training"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
    assert proc.returncode == -signal.SIGKILL
    assert versions.list() == ["v0"]
    assert xv.models.fingerprint(versions.load("v0")) == xv.models.fingerprint(demo_model)
    store = FeedbackStore(tmp_path / "fb.db")
    assert [(a.sample_id, _bytes(a.relevant), _bytes(a.irrelevant)) for a in store.annotations()] == saved


def test_versions_never_overwrite(tmp_path, demo_model):
    versions = ModelVersions(tmp_path)
    names = []
    threads = [threading.Thread(target=lambda: names.append(versions.save_new(demo_model))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(names) == ["v0", "v1", "v2", "v3"] == versions.list()
    with pytest.raises(KeyError, match="no version 'v9'"):
        versions.load("v9")


def test_cli_finetune(tmp_path, demo_model):
    from PIL import Image

    from xcam_viz.cli import main
    data = demo_data("train", n=12)
    for i, (img, label) in enumerate(zip(data.images, data.labels)):
        folder = tmp_path / "images" / data.class_names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(folder / f"{i:02d}.png")
    images = xv.data.load_folder(tmp_path / "images")
    store = FeedbackStore(tmp_path / "fb.db", dataset=images)
    for i in range(3):
        store.add(images.ids[i], relevant=data.masks[int(images.ids[i].split("/")[1])])
    xv.models.save(demo_model, tmp_path / "model.pt")
    assert main(["finetune", "--model", str(tmp_path / "model.pt"), "--feedback", str(tmp_path / "fb.db"),
                 "--data", str(tmp_path / "images"), "--layer", "block4", "--epochs", "1"]) == 0
    assert ModelVersions(tmp_path / "fb-versions").list() == ["v0", "v1"]
    with pytest.raises(SystemExit, match="does not exist"):
        main(["finetune", "--feedback", str(tmp_path / "missing.db")])
