"""Browser-test harness: Debian's chromium through pytest-playwright, the demo served in a subprocess.

Screenshots go to test-artifacts/browser/. Each server gets a free localhost port and a temporary
feedback database.
"""
from pathlib import Path

import pytest

from .harness import CHROMIUM, CHROMIUM_ARGS, VIEWPORT, Server


@pytest.fixture(scope="session")
def browser_type_launch_args():
    """pytest-playwright launches Debian's chromium (never a downloaded browser)."""
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (bash run.sh test installs it)")
    return {"executable_path": CHROMIUM, "args": CHROMIUM_ARGS, "headless": True}


@pytest.fixture(scope="session")
def browser_context_args():
    return {"viewport": VIEWPORT}


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """`xcam-viz serve` of the demo with a temporary feedback database."""
    feedback = tmp_path_factory.mktemp("serve") / "feedback.db"
    srv = Server(["-m", "xcam_viz.cli", "serve", "--port", "{port}", "--feedback", str(feedback)], feedback)
    yield srv
    srv.stop()
