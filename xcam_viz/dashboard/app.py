"""The script `panel serve` runs (absolute imports: Panel executes it as a file, not as a module).

    panel serve xcam_viz/dashboard/app.py    # the demo; XCAM_VIZ_MODEL / _DATA / _FEEDBACK override it
"""
from xcam_viz.dashboard.dashboard import Dashboard, session  # noqa: F401 - the public entry points
from xcam_viz.dashboard.server import serve  # noqa: F401

if __name__.startswith("bokeh_app"):
    session().servable(title="xcam-viz")
