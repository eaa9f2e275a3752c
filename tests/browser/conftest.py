"""Browser-test harness: the demo served in a subprocess (chromium launch settings: tests/conftest.py).

Screenshots go to test-artifacts/browser/. Each server gets a free localhost port and a temporary
feedback database.
"""
import pytest

from .harness import Server, demo_servers


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """`xcam-viz serve` of the demo with a temporary feedback database."""
    yield from demo_servers(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="session")
def volume_server(tmp_path_factory):
    """`xcam-viz demo --volumes` with a temporary feedback database (its start takes a minute or two: the demo
    makes 800 volumes and predicts them), shared by the volume tests and the layout test."""
    feedback = tmp_path_factory.mktemp("volumes") / "feedback.db"
    srv = Server(["-m", "xcam_viz.cli", "demo", "--volumes", "--quiet", "--port", "{port}"], feedback,
                 env={"XCAM_VIZ_FEEDBACK": str(feedback)}, timeout=300)
    yield srv
    srv.stop()
