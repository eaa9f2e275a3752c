"""The named example data sets (`demo`, `volumes`, `decoy-digits`, `cameras`): one registry that `load_data`, the
CLI, the dashboard and `xcam_viz.demo` read. Each entry says how to build each split, how many samples
a split has, and what users are told about it."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .cameras import camera_lesions
from .decoy import N_TRAIN as DIGITS_TRAIN
from .decoy import decoy_digits
from .imageset import ImageSet
from .nodules import synthetic_nodules
from .synthetic import synthetic_lesions

DIGITS_HELD_OUT = 1797 - DIGITS_TRAIN                 # scikit-learn's 1,797 digits less the training ones


@dataclass(frozen=True)
class Example:
    """A named example set: `make(n=, split=, **options)` builds a split of `sizes[split]` samples."""

    name: str
    description: str
    make: Callable[..., ImageSet]
    sizes: dict[str, int]
    options: dict = field(default_factory=dict)

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.sizes)

    def load(self, split: str = "test", n: int | None = None, **overrides) -> ImageSet:
        """The split's first `n` samples (all `sizes[split]` by default); `overrides` replace options
        or add arguments of `make` (e.g. confounder=0.0)."""
        if split not in self.sizes:
            raise ValueError(f"the example set {self.name!r} has splits {', '.join(self.splits)}; got {split!r}")
        return self.make(n=n or self.sizes[split], split=split, **{**self.options, **overrides})


EXAMPLES = {example.name: example for example in (
    Example("demo", "synthetic dermoscopy-like lesions (64 px, benign/malignant) with a purple surgical-marker "
            "shortcut; 'flipped' puts the marker on the benign lesions",
            synthetic_lesions, {"train": 2000, "test": 400, "flipped": 400}, {"size": 64, "seed": 0}),
    Example("volumes", "synthetic chest CT volumes (48³ voxels, lung window) with one nodule each (benign: round; "
            "malignant: spiculated) and a metal skin-marker shortcut; 'flipped' puts the marker on the benign ones",
            synthetic_nodules, {"train": 400, "test": 200, "flipped": 200}, {"size": 48, "seed": 0}),
    Example("decoy-digits", "handwritten digits (32 px, 10 classes) with grey corner patches that encode the class; "
            "'flipped' encodes 9 - label",
            decoy_digits, {"train": DIGITS_TRAIN, "test": DIGITS_HELD_OUT, "flipped": DIGITS_HELD_OUT},
            {"size": 32, "seed": 0}),
    Example("cameras", "synthetic lesions (64 px, benign/malignant) photographed by two cameras (colour calibration, "
            "vignetting, sensor noise), each going with one class in 95 % of the images: a shortcut over the whole "
            "image; 'flipped' swaps the cameras, 'oracle' draws them independently of the class",
            camera_lesions, {"train": 2000, "test": 400, "flipped": 400, "oracle": 2000}, {"size": 64, "seed": 0}),
)}


def example(name: str, split: str = "test", n: int | None = None, **overrides) -> ImageSet:
    """A split of a named example set (see `EXAMPLES`); a KeyError lists the names."""
    if name not in EXAMPLES:
        raise KeyError(f"no example set {name!r}; choose one of {', '.join(EXAMPLES)}")
    return EXAMPLES[name].load(split, n, **overrides)


def listing() -> str:
    """One line per example set: name, splits with their sizes, description (for the CLI and docs)."""
    return "\n".join(f"{e.name:13s} {', '.join(f'{s} {k}' for s, k in e.sizes.items())}\n"
                     f"{'':13s} {e.description}" for e in EXAMPLES.values())
