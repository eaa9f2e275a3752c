"""Shared fixtures: the committed demo model and small demo data sets (cheap, session-scoped)."""
from pathlib import Path

import pytest
import torch
from browser.harness import CHROMIUM, CHROMIUM_ARGS, VIEWPORT

from xcam_viz.demo import demo_data
from xcam_viz.demo import demo_model as load_demo_model


@pytest.fixture(scope="session")
def demo_model():
    """The embedded demo smallcnn (loaded from data/, trained there if missing). Do not mutate it."""
    return load_demo_model(progress=False)


@pytest.fixture()
def fresh_demo_model(demo_model):
    """A private copy of the demo model that a test may change (fine-tune, hook, ...)."""
    import copy
    return copy.deepcopy(demo_model)


@pytest.fixture(scope="session")
def demo_test():
    """64 test images of the demo data (64 px, with lesion masks)."""
    return demo_data("test", n=64)


@pytest.fixture(scope="session")
def demo_flipped():
    return demo_data("flipped", n=64)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def browser_type_launch_args():
    """pytest-playwright launches Debian's chromium (never a downloaded browser); one per test session."""
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (bash run.sh test installs it)")
    return {"executable_path": CHROMIUM, "args": CHROMIUM_ARGS, "headless": True}


@pytest.fixture(scope="session")
def browser_context_args():
    return {"viewport": VIEWPORT}
