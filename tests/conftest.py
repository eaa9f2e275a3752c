"""Shared fixtures: the committed demo model and small demo data sets (cheap, session-scoped)."""
import pytest
import torch

import xcam_viz as xv
from xcam_viz.demo import demo_data, demo_model as load_demo_model


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
