"""The Concepts tab's unit scatter: a layer's units in the plane of their embedding (`xv.concepts.embed_units`),
coloured by their concept labels."""
from __future__ import annotations

import numpy as np
import xarray as xr
from bokeh.models import ColumnDataSource, Range1d
from bokeh.plotting import figure

from .tasks import bokeh_update

UNLABELLED = "(unlabelled)"
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
UNLABELLED_COLOUR = "#c8c8c8"
COLUMNS = ("pc1", "pc2", "unit", "concept", "cluster", "colour")


class UnitScatter:
    """The units as a plain Bokeh scatter (`figure`): colours computed here, the legend grouped in the browser
    (a HoloViews categorical colour mapping logged a Bokeh warning per update). `labels`: each unit's concept."""

    def __init__(self):
        self.labels: list[str] = []
        self.source = ColumnDataSource({k: [] for k in COLUMNS})
        # the ranges are set from the data (Bokeh warns on empty data ranges)
        self.figure = figure(width=320, height=320, title="Units: PCA of activation profiles", toolbar_location=None,
                             tools="hover", tooltips=[("unit", "@unit"), ("concept", "@concept"),
                                                      ("cluster", "@cluster")],
                             x_axis_label="pc1", y_axis_label="pc2", x_range=Range1d(-1, 1), y_range=Range1d(-1, 1),
                             css_classes=["xv-concept-scatter"])
        self.figure.scatter("pc1", "pc2", source=self.source, size=7, fill_color="colour", line_color="#555555",
                            legend_field="concept")
        legend = self.figure.legend
        legend.location, legend.label_text_font_size, legend.background_fill_alpha = "bottom_right", "8pt", 0.6

    def show(self, embedding: xr.Dataset, current: dict, names: list[str]) -> None:
        """Show `embedding`'s units coloured by their `current` labels (unit -> (name, score)); colours follow
        the order of the concept `names`."""
        self.labels = [current.get(int(u), (UNLABELLED,))[0] for u in embedding.unit.values]
        colours = [UNLABELLED_COLOUR if n == UNLABELLED else PALETTE[names.index(n) % len(PALETTE)]
                   for n in self.labels]
        self._send({"pc1": embedding.pc1.values, "pc2": embedding.pc2.values, "unit": embedding.unit.values,
                    "concept": self.labels, "cluster": embedding.cluster.values, "colour": colours})

    @bokeh_update
    def _send(self, data: dict) -> None:
        for axis, values in zip((self.figure.x_range, self.figure.y_range), (data["pc1"], data["pc2"])):
            low, high = float(np.min(values)), float(np.max(values))
            pad = 0.08 * (high - low) or 1.0
            axis.update(start=low - pad, end=high + pad)
        self.source.data = data
