"""Training and prediction for classifiers (image labels) and segmenters (pixel targets)."""
from __future__ import annotations

import numpy as np
import torch
import xarray as xr
from torch import nn
from tqdm.auto import tqdm

from ..data import ImageSet
from ..spatial import batch_for
from .modes import eval_mode
from .outputs import is_dense, logits_of


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def train(model: nn.Module, data: ImageSet, epochs: int = 5, lr: float = 3e-3, batch_size: int | None = None,
          weight_decay: float = 1e-4, seed: int = 0, progress: bool = True) -> tuple[nn.Module, xr.Dataset]:
    """Train with Adam (one-cycle learning rate) and cross-entropy; returns the model and a per-epoch
    history (loss, accuracy).

    A model whose output is N×K×H×W is trained on `data.targets` (per-pixel classes).
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    device = model_device(model)
    batch_size = batch_size or batch_for(data.image_shape, 64)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * ((len(data) + batch_size - 1) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.2)
    losses, accs = [], []
    bar = tqdm(total=steps, desc="train", disable=not progress)
    model.train()
    for _ in range(epochs):
        total, correct, count = 0.0, 0, 0
        for idx in torch.randperm(len(data), generator=gen).split(batch_size):
            x = data.read(idx)[0].to(device)          # a lazy ImageSet decodes only the batch
            out = logits_of(model(x))
            y = _targets(data, idx, out).to(device)
            loss = nn.functional.cross_entropy(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            total += loss.item() * len(idx)
            correct += (out.argmax(1) == y).float().mean().item() * len(idx)
            count += len(idx)
            bar.update()
            bar.set_postfix(loss=f"{total / count:.3f}", acc=f"{correct / count:.3f}")
        losses.append(total / count)
        accs.append(correct / count)
    bar.close()
    model.eval()
    history = xr.Dataset({"loss": ("epoch", losses), "accuracy": ("epoch", accs)},
                         coords={"epoch": np.arange(1, epochs + 1)})
    return model, history


def _targets(data: ImageSet, idx: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    if is_dense(out):
        if data.targets is None:
            raise ValueError("the model outputs per-pixel logits but the data set has no pixel targets; "
                             "use a segmentation data set (e.g. synthetic_lesions(task='segmentation'))")
        return data.targets[idx]
    return data.labels[idx]


@torch.no_grad()
def predict(model: nn.Module, data: ImageSet | torch.Tensor, batch_size: int | None = None) -> xr.Dataset:
    """Class probabilities, predictions and confidence per sample as an xr.Dataset.

    For segmenters, the probabilities are the per-class means over pixels.
    """
    batch_size = batch_size or batch_for(data.image_shape if isinstance(data, ImageSet) else data.shape[1:], 128)
    batches = data.batches(batch_size) if isinstance(data, ImageSet) else data.split(batch_size)
    device = model_device(model)
    with eval_mode(model):                                  # a lazy ImageSet is decoded batch by batch
        prob = torch.cat([probabilities(logits_of(model(batch.to(device)))).cpu() for batch in batches])
    return prediction_dataset(prob.numpy(), data)


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities N×K of logits N×K, or of a segmenter's N×K×*S (the per-class means over pixels)."""
    return logits.float().softmax(1).flatten(2).mean(2) if is_dense(logits) else logits.float().softmax(1)


def prediction_dataset(prob: np.ndarray, data: ImageSet | torch.Tensor) -> xr.Dataset:
    """`predict`'s Dataset of class probabilities N×K for the images of `data` (labels from an ImageSet)."""
    ids = data.ids if isinstance(data, ImageSet) else [str(i) for i in range(len(data))]
    k = prob.shape[1]
    named = isinstance(data, ImageSet) and len(data.class_names) == k
    names = data.class_names if named else [str(c) for c in range(k)]
    ds = xr.Dataset({"probability": (("sample", "class"), prob),
                     "predicted": ("sample", prob.argmax(1)),
                     "confidence": ("sample", prob.max(1))},
                    coords={"sample": ids, "class": names})
    if isinstance(data, ImageSet):
        ds["label"] = ("sample", data.labels.numpy())
        ds["correct"] = ds.predicted == ds.label
    return ds


def accuracy(model: nn.Module, data: ImageSet) -> float:
    """Share of images whose predicted class equals the label."""
    return float(predict(model, data).correct.mean())
