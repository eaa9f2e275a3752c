"""A report as one self-contained HTML page: interactive Bokeh plots with inline resources (opens offline).

Only this module of the core touches Bokeh, and only when a report is saved as HTML.
"""
from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from ..spatial import hottest_point

SECTIONS = ("summary", "images", "accuracy", "confusion", "class-mean-cams", "shortcut", "concepts",
            "history", "feedback")


def write_html(rep, path: Path) -> Path:
    from bokeh.embed import components
    from bokeh.resources import INLINE

    plots, parts = {}, {}
    parts["summary"] = _summary(rep)
    per_image = _images(rep.images)
    plots.update({f"image-{i}": fig for i, (_, fig) in enumerate(per_image)})
    plots["accuracy"], parts["accuracy"] = _accuracy(rep.overview)
    plots["confusion"], parts["confusion"] = _confusion(rep.overview)
    plots["class-mean-cams"], parts["class-mean-cams"] = _class_cams(rep.overview)
    plots["shortcut"], parts["shortcut"] = _shortcut(rep.overview)
    parts["concepts"] = _concepts(rep)
    plots["history"], parts["history"] = _history(rep.overview)
    parts["feedback"] = _feedback(rep.images)
    # Bokeh's own code, inlined; not INLINE.render(), which (once Panel is imported anywhere in the
    # process, e.g. in the dashboard) adds Panel's extension scripts as relative links
    script, divs = components({k: v for k, v in plots.items() if v is not None})
    body = []
    parts["images"] = "".join(text + divs[f"image-{i}"] for i, (text, _) in enumerate(per_image))
    for key in SECTIONS:
        title = key.replace("-", " ").capitalize()
        body.append(f'<section id="{key}"><h2>{title}</h2>{parts.get(key, "")}{divs.get(key, "")}</section>')
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>xcam-viz {html.escape(rep.title)}</title>
<link rel="icon" href="data:,">
{"".join(f"<style>{css}</style>" for css in INLINE.css_raw)}
{"".join(f"<script>{js}</script>" for js in INLINE.js_raw)}
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}}
table{{border-collapse:collapse;margin:.5em 0}}td,th{{border:1px solid #ccc;padding:.2em .6em;text-align:right}}
th{{background:#f3f3f3}}section{{margin-bottom:2em}}h2{{border-bottom:2px solid #6a4c93}}</style>
{script}</head><body><h1>xcam-viz explanation {html.escape(rep.title)}</h1>
{''.join(body)}</body></html>"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def _table(header: list[str], rows: list[list]) -> str:
    fmt = lambda v: f"{v:.3f}" if isinstance(v, (float, np.floating)) else html.escape(str(v))  # noqa: E731
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{fmt(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _summary(rep) -> str:
    ov = rep.overview
    items = "".join(f"<li>{html.escape(c)}</li>" for c in rep.changes)
    return (f"<p>Model fingerprint <code>{ov.attrs.get('model_fingerprint', '?')}</code>; CAMs by "
            f"{ov.attrs.get('cam_method')} at {ov.attrs.get('cam_layer')}.</p>"
            f"<p>New in this version:</p><ul>{items}</ul>")


def _rgba(image: np.ndarray) -> np.ndarray:
    """C×H×W float [0, 1] -> H×W uint32 RGBA, rows flipped for Bokeh's bottom-left origin."""
    rgb = np.repeat(image, 3, 0) if image.shape[0] == 1 else image[:3]
    a = np.concatenate([(rgb.transpose(1, 2, 0) * 255).astype(np.uint8),
                        np.full(rgb.shape[1:] + (1,), 255, np.uint8)], 2)
    return a[::-1].copy().view(np.uint32)[..., 0]


def _map_figure(title: str, image: np.ndarray | None, values: np.ndarray, signed: bool = False):
    """A map (H×W; a volume's D×H×W is shown by its axial slice through the map's largest value) over its
    image (C×*S, or None)."""
    from bokeh.models import ColorBar, HoverTool, LinearColorMapper
    from bokeh.palettes import RdBu11, Turbo256
    from bokeh.plotting import figure

    if values.ndim == 3:
        z = hottest_point(np.abs(values) if signed else values)[0]
        values, image, title = values[z], None if image is None else image[:, z], f"{title} (slice z {z})"
    h, w = values.shape
    fig = figure(title=title, frame_width=160, frame_height=round(160 * h / w), x_range=(0, w), y_range=(0, h),
                 tools="pan,wheel_zoom,reset")
    fig.axis.visible = False
    fig.grid.visible = False
    if image is not None:
        fig.image_rgba(image=[_rgba(image)], x=0, y=0, dw=w, dh=h)
    bound = float(np.nanmax(np.abs(values))) or 1.0
    mapper = LinearColorMapper(palette=RdBu11 if signed else Turbo256,
                               low=-bound if signed else 0.0, high=bound if signed else max(bound, 1e-9))
    glyph = fig.image(image=[values[::-1]], x=0, y=0, dw=w, dh=h, color_mapper=mapper,
                      alpha=0.5 if image is not None else 1.0)
    fig.add_tools(HoverTool(renderers=[glyph], tooltips=[("value", "@image{0.000}")]))
    fig.add_layout(ColorBar(color_mapper=mapper, width=8), "right")
    return fig


def _images(ds) -> list:
    """Per image: its heading, prediction and score tables (HTML) and a row of overlays (Bokeh)."""
    from bokeh.layouts import row

    names = ds.attrs.get("class_names", [])
    scores_vars = [v for v in ("pointing_game", "energy_pointing_game", "deletion_auc", "insertion_auc") if v in ds]
    out = []
    for s in ds.sample.values:
        one = ds.sel(sample=s)
        figs = [_map_figure(f"{m} @ {layer}", one.image.values, one.cam.sel({"method": m, "layer": layer}).values)
                for m in ds.method.values for layer in ds.layer.values]
        if "evidence" in ds:
            figs.append(_map_figure(f"evidence ({ds.attrs.get('evidence_method')}): red for, blue against",
                                    one.image.values, one.evidence.values, signed=True))
        scores = [[f"{m} @ {layer}"] + [float(one[v].sel({"method": m, "layer": layer})) for v in scores_vars]
                  for m in ds.method.values for layer in ds.layer.values]
        concepts = ""
        if "concept_units" in ds:
            active = [[c, int(one.concept_units.sel(concept=c)), float(one.concept_mean_activation.sel(concept=c)),
                       float(one.concept_mean_iou.sel(concept=c))] for c in ds.concept.values
                      if np.isfinite(float(one.concept_units.sel(concept=c)))]      # NaN: none of its units fires here
            concepts = ("<p>Concepts active (units firing above their threshold on this image):</p>"
                        + _table(["concept", "active units", "mean activation", "mean score at labelling"], active)
                        if active else "<p>No labelled concept is active on this image.</p>")
        label = _name(names, int(one.label)) if ds.attrs.get("labelled", True) else "no label"
        text = (f"<h3>{html.escape(str(s))}</h3><p>label <b>{label}</b>, predicted "
                f"<b>{_name(names, int(one.predicted))}</b> with confidence {float(one.confidence):.1%}</p>"
                + _table(["map"] + [v.replace("_", " ") for v in scores_vars], scores) + concepts)
        out.append((text, row(figs)))
    return out


def _name(names: list, i: int) -> str:
    return html.escape(str(names[i])) if i < len(names) else str(i)


def _accuracy(ov):
    from bokeh.plotting import figure

    splits = [str(s) for s in ov.split.values]
    fig = figure(x_range=splits, y_range=(0, 1), height=250, width=400, title="accuracy by split",
                 tools="hover", tooltips=[("accuracy", "@top{0.0%}")])
    fig.vbar(x=splits, top=ov.accuracy.values, width=0.6, color="#6a4c93")
    return fig, _table(["split", "accuracy"], [[s, float(a)] for s, a in zip(splits, ov.accuracy.values)])


def _confusion(ov):
    from bokeh.layouts import row

    figs = [_map_figure(f"confusion: {s}", None, ov.confusion.sel(split=s).values.astype(float)[::-1])
            for s in ov.split.values]
    rows = [[str(s), str(t)] + ov.confusion.sel(split=s, true=t).values.tolist()
            for s in ov.split.values for t in ov.true.values]
    return row(figs), _table(["split", "true \\ predicted", *map(str, ov.predicted_class.values)], rows)


def _class_cams(ov):
    from bokeh.layouts import gridplot

    rows = [[_map_figure(f"{s}: {c}", None, np.nan_to_num(ov.class_mean_cam.sel(split=s, **{"class": c}).values))
             for c in ov["class"].values] for s in ov.split.values]
    caption = f"<p>Mean CAM ({ov.attrs.get('cam_method')} at {ov.attrs.get('cam_layer')}) per true class.</p>"
    return gridplot(rows), caption


def _shortcut(ov):
    from bokeh.plotting import figure
    from bokeh.transform import dodge

    classes = [str(c) for c in ov["class"].values]
    fig = figure(x_range=classes, y_range=(0, 1), height=250, width=400, title="CAM mass outside the relevant region")
    for i, s in enumerate(ov.split.values):
        fig.vbar(x=dodge("x", -0.25 + 0.5 * i / max(1, len(ov.split) - 1), range=fig.x_range),
                 top="top", width=0.2, source={"x": classes, "top": np.nan_to_num(
                     ov.cam_mass_outside_relevant.sel(split=s).values).tolist()}, legend_label=str(s),
                 color=["#6a4c93", "#e07a5f", "#3d405b", "#81b29a"][i % 4])
    rows = [[str(s)] + ov.cam_mass_outside_relevant.sel(split=s).values.tolist() for s in ov.split.values]
    return fig, ("<p>Share of CAM mass outside the lesion (or the user-marked relevant region): high values "
                 "mean the model looks elsewhere, e.g. at a shortcut.</p>" + _table(["split", *classes], rows))


def _concepts(rep) -> str:
    ov = rep.overview
    if "concept_units" not in ov:
        return "<p>No concepts labelled yet: draw a region on an image and name it.</p>"
    return _table(["concept", "units", "unit ids"], [[c, int(n), u] for c, n, u in zip(
        ov.concept.values, ov.concept_unit_count.values, ov.concept_units.values)])


def _history(ov):
    from bokeh.plotting import figure

    keys = [v for v in ov.data_vars if v.startswith("history_")]
    if not keys:
        return None, "<p>No fine-tuning yet.</p>"
    fig = figure(height=250, width=500, title="fine-tuning history", tools="hover,pan,wheel_zoom,reset")
    for i, key in enumerate(keys):
        series = ov[key]
        if series.ndim == 1:
            fig.line(np.arange(len(series)), np.asarray(series.values, float), legend_label=key[8:],
                     color=["#6a4c93", "#e07a5f", "#3d405b", "#81b29a", "#f2cc8f"][i % 5], line_width=2)
    return fig, ""


def _feedback(ds) -> str:
    if "feedback_count" not in ds:
        return "<p>No feedback store attached.</p>"
    return _table(["sample", "annotations", "kinds"], [[s, int(c), k] for s, c, k in zip(
        ds.sample.values, ds.feedback_count.values, ds.feedback_kinds.values)])
