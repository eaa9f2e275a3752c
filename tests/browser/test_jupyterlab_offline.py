"""The dashboard notebook in JupyterLab with no network: every request not to the local server is blocked.

JupyterLab runs from the project's environment on a temporary root holding a copy of
notebooks/dashboard.ipynb with one cell added at the end, the 3-D demo (`xv.Dashboard(demo="volumes")`). The
page runs every cell above it (the `notebook:run-all-above` command), and the test checks that thumbnails
and maps are drawn, that a click on a thumbnail changes the map and that a notification shows with its
icon font; then it runs the volume cell and checks that its three planes are drawn. No request may leave
the machine and the console must show no error.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

from .harness import ROOT, Console, free_port, shot, tile_point, wait_state, wait_until_up

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TOKEN = "xcam-viz-offline-test"
VOLUME_CELL = 'volumes = xv.Dashboard(demo="volumes")\nvolumes'


class JupyterLab:
    """`jupyter lab` of the project's environment on a free port, with its settings in `root`."""

    def __init__(self, root: Path, timeout: float = 120):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = root / "jupyterlab.log"
        self._log = open(self.log, "w")          # noqa: SIM115 - open while the server runs
        home = root / ".jupyter-home"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "JUPYTER_CONFIG_DIR": str(home / "config"),
               "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "JUPYTER_DATA_DIR": str(home / "data"),
               "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
               "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"), "XCAM_VIZ_FEEDBACK": str(root / "feedback.db")}
        news = home / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
        news.parent.mkdir(parents=True)
        news.write_text('{"fetchNews": "false"}')                  # no "get notified about news?" pop-up
        jupyter = Path(sys.executable).with_name("jupyter")
        self.proc = subprocess.Popen(
            [str(jupyter), "lab", "--no-browser", f"--port={self.port}", "--ServerApp.ip=127.0.0.1",
             f"--IdentityProvider.token={TOKEN}", "--allow-root", f"--ServerApp.root_dir={root}",
             "--LabApp.expose_app_in_browser=True",
             "--LabApp.news_url=", "--LabApp.extension_manager=readonly",
             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
            cwd=root, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        wait_until_up(self, f"{self.url}api/status?token={TOKEN}", timeout, "JupyterLab")

    def is_local(self, url: str) -> bool:
        parsed = urlparse(url)
        return parsed.scheme in ("data", "blob", "about") or parsed.netloc == f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Stop the server and its kernels (one process group)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        self._log.close()


def drawn(locator) -> float:
    """The spread of grey levels in a screenshot of an element: 0 for a blank (one-colour) canvas."""
    return float(np.asarray(Image.open(io.BytesIO(locator.screenshot())).convert("L"), dtype=float).std())


@pytest.fixture()
def lab(tmp_path):
    notebook = json.loads((ROOT / "notebooks" / "dashboard.ipynb").read_text())
    notebook["cells"].append({"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
                              "source": VOLUME_CELL})
    (tmp_path / "dashboard.ipynb").write_text(json.dumps(notebook))
    server = JupyterLab(tmp_path)
    yield server
    server.stop()


def test_dashboard_notebook_runs_offline_in_jupyterlab(lab, browser):
    page = browser.new_context(viewport={"width": 1600, "height": 1000}).new_page()
    blocked: list[str] = []

    def only_local(route):
        if lab.is_local(route.request.url):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()
    page.route("**/*", only_local)
    console = Console(page)
    page.goto(f"{lab.url}lab/tree/dashboard.ipynb?token={TOKEN}", timeout=120_000)
    page.locator(".jp-Notebook").wait_for(timeout=120_000)
    page.wait_for_function("window.jupyterapp && window.jupyterapp.shell.currentWidget?.sessionContext")
    page.evaluate("window.jupyterapp.shell.currentWidget.sessionContext.ready")           # the kernel is up
    run_cells(page, "notebook:run-all-above")                      # all but the volume cell
    page.locator(".xv-state-json").wait_for(state="attached", timeout=300_000)     # the dashboard's output
    first = wait_state(page, lambda s: s["left"] != "" and s["page_ids"], timeout=120)
    page.wait_for_timeout(1000)
    montage, maps = page.locator(".xv-montage .bk-Canvas"), page.locator(".xv-overlays .bk-Canvas")
    montage.scroll_into_view_if_needed()
    assert drawn(montage) > 10, "the thumbnails are not drawn"
    assert maps.count() >= 2 and all(drawn(maps.nth(i)) > 10 for i in range(2)), "the maps are not drawn"
    shot(page, "jupyterlab-offline-loaded")
    page.mouse.click(*tile_point(page, first, 5))
    wait_state(page, lambda s: s["sample"] == first["page_ids"][5] and s["left"] != first["left"], timeout=60)
    page.locator(".bk-tab", has_text="Feedback").click()
    page.locator(".xv-save button").click()                        # nothing painted: a warning notification
    toast = page.locator(".notyf__toast", has_text="before saving")
    toast.wait_for(timeout=10_000)
    page.wait_for_timeout(500)                                     # its fade-in
    assert page.evaluate("[...document.fonts].some(f => f.family.includes('Font Awesome') && f.status === 'loaded')"), \
        "the notification's icon font did not load"
    shot(page, "jupyterlab-offline-notification")
    run_cells(page, "notebook:run-cell")                           # the volume cell: a second dashboard
    volume = wait_volumes(page)
    planes = {name: page.locator(f".xv-plane-{name} .bk-Canvas").first for name in ("axial", "coronal", "sagittal")}
    planes["axial"].scroll_into_view_if_needed()
    page.wait_for_timeout(1000)
    assert all(drawn(plane) > 10 for plane in planes.values()), "the volume's planes are not drawn"
    assert volume["slices"] == {"axial": volume["grid"][1:], "coronal": volume["grid"][::2],
                                "sagittal": volume["grid"][:2]}
    shot(page, "jupyterlab-offline-volumes")
    assert blocked == [], f"the page asked other hosts for: {blocked}"
    assert console.errors == []


def run_cells(page, command: str) -> None:
    """Run a JupyterLab notebook command with the last cell (the volume cell) active; no waiting for it."""
    page.evaluate("""(command) => {
      const notebook = window.jupyterapp.shell.currentWidget.content;
      notebook.activeCellIndex = notebook.widgets.length - 1;
      window.jupyterapp.commands.execute(command);
    }""", command)


def wait_volumes(page, timeout: float = 300) -> dict:
    """The volume dashboard's state ("volume" in the second dashboard's state) once its first map is drawn."""
    deadline = time.monotonic() + timeout
    while True:
        probes = page.locator(".xv-state-json")
        if probes.count() == 2:
            now = json.loads(probes.nth(1).text_content() or "{}")
            if now.get("volume") and now.get("left"):
                return now["volume"]
        assert time.monotonic() < deadline, "the volume dashboard was not drawn"
        page.wait_for_timeout(200)
