"""The script `panel serve` runs (absolute imports: Panel executes it as a file, not as a module).

    panel serve xcam_viz/dashboard/app.py    # the demo; XCAM_VIZ_MODEL / _DATA / _FEEDBACK override it
"""
from xcam_viz.dashboard.dashboard import Dashboard, serve, session  # noqa: F401 - the public entry points

if __name__.startswith("bokeh_app"):
    session().servable(title="xcam-viz")
