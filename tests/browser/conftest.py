"""Browser-test harness: the demo served in a subprocess (chromium launch settings: tests/conftest.py).

Screenshots go to test-artifacts/browser/. Each server gets a free localhost port and a temporary
feedback database.
"""
import pytest

from .harness import demo_servers


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """`xcam-viz serve` of the demo with a temporary feedback database."""
    yield from demo_servers(tmp_path_factory.mktemp("serve"))
