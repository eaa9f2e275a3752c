"""The screenshots of docs/your-data.md: each recipe's command served on generated data, one 1366×768 shot each.

Run from the repository root (needs Debian's chromium, as the browser tests do):

    .venv/bin/python docs/your_data_screenshots.py

Writes docs/img/your-data/<recipe>.png. The data are made up on the spot (textures, grey scans, a file in
MedMNIST's layout) and the models have random weights: the screenshots show the dashboard, not a result.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from playwright.sync_api import sync_playwright

import xcam_viz as xv

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from browser.harness import CHROMIUM, CHROMIUM_ARGS, Server, open_dashboard, select_option, wait_state  # noqa: E402

OUT = ROOT / "docs" / "img" / "your-data"
VIEWPORT = {"width": 1366, "height": 768}


def textures(root: Path, n: int = 6, size: int = 256) -> Path:
    """root/{train,test}/{brick,grass}/<i>.png: colour photographs of two textures."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    for split in ("train", "test"):
        for cls in ("brick", "grass"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                if cls == "brick":
                    mortar = ((yy % 32) < 4) | (((xx + 32 * ((yy // 32) % 2)) % 64) < 4)
                    rgb = np.where(mortar[..., None], [200, 200, 190], [150, 60, 40]) \
                        + rng.normal(0, 12, (size, size, 3))
                else:
                    rgb = np.stack([40 + 0 * xx, 120 + 40 * np.sin(xx / 3 + rng.random() * 6), 40 + 0 * xx], -1) \
                        + rng.normal(0, 20, (size, size, 3))
                Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(root / split / cls / f"{cls}-{i}.png")
    return root


def scans(root: Path, classes: list[str], n: int = 4, size: int = 1024) -> Path:
    """root/<class>/scan-<i>.png: grey 1024×1024 scans, a bright disc placed by class."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:size, 0:size]
    body = 90 + 50 * np.exp(-(((xx - size / 2) / 300) ** 2 + ((yy - size / 2) / 380) ** 2))
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(n):
            scan = Image.fromarray((body + rng.normal(0, 6, body.shape)).clip(0, 255).astype(np.uint8), "L")
            cx, cy = 250 + 250 * k, 300 + int(rng.integers(0, 400))
            ImageDraw.Draw(scan).ellipse([cx - 60, cy - 60, cx + 60, cy + 60], fill=200)
            scan.save(root / name / f"scan-{i}.png")
    return root


def manifest(root: Path) -> Path:
    """root/{images,masks}/<i>.png and root/{train,test}.csv (image,label,mask): lesions with masks."""
    data = xv.data.synthetic_lesions(n=24, size=128, split="test", confounder=0.0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = {"train": [], "test": []}
    for i, (image, label, mask, _) in enumerate(data):
        picture = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(picture).save(root / "images" / f"{i}.png")
        Image.fromarray(mask.numpy().astype(np.uint8) * 255).save(root / "masks" / f"{i}.png")
        rows["train" if i < 16 else "test"].append(f"images/{i}.png,{data.class_names[label]},masks/{i}.png")
    for split, lines in rows.items():
        (root / f"{split}.csv").write_text("image,label,mask\n" + "\n".join(lines) + "\n")
    return root


def medmnist(path: Path) -> Path:
    """A file in MedMNIST's layout: {train,val,test}_images (N×28×28 uint8) and _labels (N×1)."""
    rng = np.random.default_rng(2)
    arrays = {}
    for split, n in (("train", 40), ("val", 10), ("test", 20)):
        labels = rng.integers(0, 2, (n, 1))
        images = rng.normal(100, 20, (n, 28, 28)) + 80 * labels[:, :, None]
        arrays.update({f"{split}_images": images.clip(0, 255).astype(np.uint8), f"{split}_labels": labels})
    np.savez(path, **arrays)
    return path


def checkpoint(path: Path, name: str, classes: int, channels: int = 3) -> str:
    torch.manual_seed(0)
    return str(xv.models.save(xv.models.build(name, num_classes=classes, in_channels=channels), path))


def shoot(browser, folder: Path, name: str, args: list[str], then=None) -> None:
    """Serve `xcam-viz serve <args>`, open it at 1366×768, do `then(page)`, write OUT/<name>.png."""
    feedback = folder / f"{name}.db"
    server = Server(["-m", "xcam_viz.cli", "serve", "--port", "{port}", "--feedback", str(feedback), *args], feedback,
                    timeout=300)
    try:
        page = browser.new_context(viewport=VIEWPORT).new_page()
        open_dashboard(page, server.url)
        if then is not None:
            then(page)
        page.wait_for_timeout(1500)
        OUT.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=OUT / f"{name}.png")
        page.context.close()
    finally:
        server.stop()
    print(f"wrote {OUT / f'{name}.png'}", flush=True)


def test_split(page) -> None:
    select_option(page, "xv-split", "test")
    wait_state(page, lambda s: s["split"] == "test" and s["left_sample"] == s["sample"], timeout=120)


def fine_tune_tab(page) -> None:
    page.locator(".bk-tab", has_text="Fine-tune").click()
    wait_state(page, lambda s: s["tabs"]["Fine-tune"])


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="xcam-viz-your-data-"))
    photos = textures(folder / "photos")
    xrays = scans(folder / "xrays", ["no finding", "nodule", "effusion"])
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        shoot(browser, folder, "1-image-folder",
              ["--model", checkpoint(folder / "photos.pt", "resnet18", 2),
               "--data", f"train={photos / 'train'}", "--data", f"test={photos / 'test'}"])
        shoot(browser, folder, "2-csv-manifest",
              ["--model", checkpoint(folder / "lesions.pt", "resnet18", 2),
               "--data", f"train={manifest(folder / 'isic') / 'train.csv'}",
               "--data", f"test={folder / 'isic' / 'test.csv'}"], test_split)
        shoot(browser, folder, "3-grey-xrays-rgb-model",
              ["--model", checkpoint(folder / "resnet18.pt", "resnet18", 3), "--data", str(xrays)])
        shoot(browser, folder, "4-medmnist",
              ["--model", checkpoint(folder / "pneumonia.pt", "smallcnn", 2, channels=1),
               "--data", str(medmnist(folder / "pneumoniamnist.npz"))], test_split)
        shoot(browser, folder, "5-one-split",
              ["--model", str(folder / "resnet18.pt"), "--data", str(xrays)], fine_tune_tab)
        browser.close()


if __name__ == "__main__":
    main()
