"""Page setup: importing xcam_viz sets up no page; displaying a dashboard does, inline (offline)."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# A call that points a notebook page at a CDN (the dashboard sets up its page itself, inline)
PAGE_SETUP = re.compile(r"\b(pn|panel)\.extension\(|\b(hv|holoviews)\.extension\(|\boutput_notebook\(")


def test_import_sets_up_no_page_and_display_sets_it_up_inline():
    script = """
import json, panel as pn
import xcam_viz as xv
from xcam_viz.dashboard import Dashboard
from xcam_viz.demo import demo_data, demo_model
before = {"notifications": pn.config.notifications, "inline": pn.config.inline,
          "extensions": list(pn.extension._loaded_extensions)}
Dashboard(model=demo_model(progress=False), data={"test": demo_data("test", n=4)}).__panel__()
after = {"notifications": pn.config.notifications, "inline": pn.config.inline}
print(json.dumps([before, after]))
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    before, after = json.loads(out.stdout.strip().splitlines()[-1])
    assert before == {"notifications": False, "inline": False, "extensions": []}
    assert after == {"notifications": True, "inline": True}


@pytest.mark.parametrize("notebook", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.stem)
def test_notebooks_leave_the_page_setup_to_the_dashboard(notebook):
    cells = json.loads(notebook.read_text())["cells"]
    calls = [line for cell in cells if cell["cell_type"] == "code"
             for line in "".join(cell["source"]).splitlines() if PAGE_SETUP.search(line)]
    assert calls == [], f"{notebook.name} sets up the page (a CDN unless inline=True): {calls}"
