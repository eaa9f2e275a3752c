"""Counterexamples: new training images made from the regions a user painted.

A painted region says something about one image; a counterexample spreads it over the whole
training set (Teso & Kersting 2019; the XIL typology of Friedrich et al. 2023). An irrelevant
region (a shortcut) is moved onto other images of every class, which keep their labels, so it
stops predicting a class, and is erased from its own image, which keeps its label, so its absence
stops predicting one either. A relevant region is kept and what lies outside it is replaced by
another annotated image's background, whose own object was erased first.

Every operation works on images (N×C×H×W, masks N×H×W) and volumes (N×C×D×H×W, masks N×D×H×W)
alike: the spatial axes come from the tensor. A moved region is placed by one of the 8 rotations
and reflections of the in-plane axes (y, x) in both cases, and in a volume shifted to a random
depth where it fits. The depth axis is never turned into the plane: slices are often thicker than
pixels are wide (a region turned into depth would be squashed or stretched), and a scanner's
artefacts (a table line, a skin marker) keep their orientation to the slice plane, while along
the patient's long axis the same artefact could sit on any slice.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import spatial

MAX_MOVED_AREA = 1 / 3    # a larger "irrelevant" region is a background, not an object to move


def inpaint(images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill the masked pixels (N×*S bool) of N×C×*S images or volumes from their surroundings.

    Push-pull: known pixels are averaged down an image pyramid and the holes are filled from the
    coarsest level that has data, smoothly upwards; then noise with the image's own fine-grain
    spread is added, so a filled patch does not stand out as the one smooth place of the image.
    """
    known = (~masks).to(images.dtype)[:, None]
    levels = [(images * known, known)]
    while min(spatial.grid_of(levels[-1][0])) > 1:
        value, weight = levels[-1]
        levels.append((spatial.pool("avg", value, 2, ceil_mode=True), spatial.pool("avg", weight, 2, ceil_mode=True)))
    value, weight = levels[-1]
    filled = value / weight.clamp(min=1e-6)
    for value, weight in reversed(levels[:-1]):
        coarse = spatial.resize(filled, spatial.grid_of(value))
        share = weight.clamp(max=1)
        filled = value / weight.clamp(min=1e-6) * share + coarse * (1 - share)
    local = (spatial.pool("avg", images * known, 3, stride=1, padding=1)
             / spatial.pool("avg", known, 3, stride=1, padding=1).clamp(min=1e-6))
    grain = (images - local) * known
    cells = spatial.axes(images)
    spread = (grain.pow(2).sum(cells, keepdim=True) / known.sum(cells, keepdim=True).clamp(min=1)).sqrt()
    noise = torch.randn(images.shape, generator=generator, dtype=images.dtype) * spread
    return torch.where(masks[:, None], (filled + noise).clamp(0, 1), images)


def dihedral(t: torch.Tensor, k: int) -> torch.Tensor:
    """One of the 8 rotations / reflections of the last two axes (k in 0..7; 0 is the identity):
    the in-plane axes (y, x) of an image or of every slice of a volume.

    Non-square planes only take the four that keep their shape (k even -> 0 or 180 degrees)."""
    if t.shape[-1] != t.shape[-2]:
        k = (k // 2) * 2 % 4 + (k // 4) * 4
    if k >= 4:
        t = t.flip(-1)
    return torch.rot90(t, k % 4, dims=(-2, -1))


@dataclass
class Batch:
    """One training batch: images, labels and the feedback masks that go with each image
    (all False where an image has none); counterexamples change it in place."""

    images: torch.Tensor
    labels: torch.Tensor
    relevant: torch.Tensor
    irrelevant: torch.Tensor
    positions: torch.Tensor          # each row's position among the annotated images (-1: another image)

    @property
    def annotated(self) -> torch.Tensor:
        return self.positions >= 0

    @property
    def has_relevant(self) -> torch.Tensor:
        return self.relevant.flatten(1).any(1)

    @property
    def has_irrelevant(self) -> torch.Tensor:
        return self.irrelevant.flatten(1).any(1)


class Donors:
    """What counterexamples are made of, prepared once per run from the annotated images:
    the small irrelevant regions with their pixels, each annotated image with its irrelevant
    region erased, and the backgrounds of the images with relevant regions (the region erased)."""

    def __init__(self, images: torch.Tensor, relevant: torch.Tensor, irrelevant: torch.Tensor,
                 has_relevant: torch.Tensor, has_irrelevant: torch.Tensor, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        area = irrelevant.flatten(1).float().mean(1)
        movable = has_irrelevant & (area <= MAX_MOVED_AREA)
        self.regions, self.region_pixels = irrelevant[movable], images[movable]
        self.erasable = movable
        self.erased = inpaint(images, irrelevant & movable.view(-1, *(1,) * (irrelevant.ndim - 1)), gen)
        halo = spatial.dilate(relevant, 2)
        self.backgrounds = inpaint(images[has_relevant], halo[has_relevant], gen)
        self.beyond_objects = ~halo[has_relevant].any(0)       # where no painted object ever reaches

    @property
    def can_move(self) -> bool:
        return len(self.regions) > 0

    @property
    def can_swap(self) -> bool:
        return len(self.backgrounds) > 1

    @property
    def can_swap_beyond(self) -> bool:
        return self.can_swap and bool(self.beyond_objects.any())


def move_irrelevant(batch: Batch, donors: Donors, rows: torch.Tensor, gen: torch.Generator) -> None:
    """Paste a random painted irrelevant region (randomly rotated / reflected, with its pixels)
    onto each of `rows`; the image keeps its label and the region becomes its irrelevant mask."""
    for row in rows.tolist():
        pick = int(torch.randint(len(donors.regions), (1,), generator=gen))
        k = int(torch.randint(8, (1,), generator=gen))
        region, pixels = dihedral(donors.regions[pick], k), dihedral(donors.region_pixels[pick], k)
        for axis in range(region.ndim - 2):          # a volume's depth: any slice the region fits in
            shift = _shift_within(region, axis, gen)
            region, pixels = region.roll(shift, axis), pixels.roll(shift, axis + 1)
        batch.images[row] = torch.where(region, pixels, batch.images[row])
        batch.irrelevant[row] |= region
        batch.relevant[row] &= ~region


def _shift_within(region: torch.Tensor, axis: int, gen: torch.Generator) -> int:
    """A random shift along `axis` that keeps the set voxels of `region` inside it (no wrapping)."""
    where = region.movedim(axis, 0).flatten(1).any(1).nonzero().flatten()
    lo, hi = int(where[0]), int(where[-1])
    return int(torch.randint(-lo, region.shape[axis] - hi, (1,), generator=gen))


def erase_irrelevant(batch: Batch, donors: Donors, rows: torch.Tensor, positions: torch.Tensor) -> None:
    """Replace annotated `rows` (feedback positions `positions`) by their images with the painted
    irrelevant region erased; they keep their labels."""
    keep = donors.erasable[positions]
    rows, positions = rows[keep], positions[keep]
    batch.images[rows] = donors.erased[positions]


def swap_background(batch: Batch, donors: Donors, rows: torch.Tensor, gen: torch.Generator) -> None:
    """Keep the relevant region of each of `rows` and put it on another annotated image's background."""
    for row in rows.tolist():
        pick = int(torch.randint(len(donors.backgrounds), (1,), generator=gen))
        keep = spatial.dilate(batch.relevant[row][None], 1)[0]
        batch.images[row] = torch.where(keep, batch.images[row], donors.backgrounds[pick])


def swap_beyond_objects(batch: Batch, donors: Donors, rows: torch.Tensor, gen: torch.Generator) -> None:
    """Replace, in each of `rows`, the pixels where no painted relevant region of any annotated image
    reaches by those of an annotated image's background: whatever sits there (a marker near the
    border, a decoy in a corner) is irrelevant by the user's own account, so it moves between images
    of every class, annotated or not, which keep their labels."""
    for row in rows.tolist():
        pick = int(torch.randint(len(donors.backgrounds), (1,), generator=gen))
        batch.images[row] = torch.where(donors.beyond_objects, donors.backgrounds[pick], batch.images[row])
